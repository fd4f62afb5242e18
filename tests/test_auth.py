"""Operators, console sessions, API keys and the audit log, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from consentry.auth import service as auth
from consentry.domain.errors import ConsentryError
from consentry.domain.roles import Permission, Role, can
from consentry.store.schema import api_keys, audit_log, operators
from consentry.tokens import Signer
from consentry.web.api_common import Problem, Reader, Writer
from consentry.web.deps import AppState
from helpers import cli

T0 = datetime(2026, 6, 1, 9, tzinfo=UTC)


def test_roles_are_nested():
    assert can(Role.VIEWER, Permission.READ) and not can(Role.VIEWER, Permission.WRITE)
    assert can(Role.OPERATOR, Permission.WRITE) and not can(Role.OPERATOR, Permission.ADMIN)
    assert all(can(Role.ADMIN, p) for p in Permission)


def test_operators_from_the_command_line(db_url):
    created = cli(db_url, "operators", "create", "alice", "--role", "admin", "--json",
                  input="correct horse battery\n")
    assert created.exit_code == 0, created.stderr
    assert created.json()["role"] == "admin"
    again = cli(db_url, "operators", "create", "alice", "--role", "viewer",
                input="another long password\n")
    assert again.exit_code == 1 and "exists already" in again.stderr
    short = cli(db_url, "operators", "create", "bob", "--role", "viewer", input="short\n")
    assert short.exit_code == 1 and "at least 10" in short.stderr
    bad_role = cli(db_url, "operators", "create", "carol", "--role", "king",
                   input="long enough password\n")
    assert bad_role.exit_code == 1 and "unknown role" in bad_role.stderr
    listed = cli(db_url, "operators", "list", "--json").json()
    assert [(o["login"], o["role"]) for o in listed] == [("alice", "admin")]


def test_login_session_lockout_and_audit(engine):
    with engine.begin() as conn:
        auth.create_operator(conn, "alice", "correct horse battery", "operator", "os:test",
                             now=T0)
        stored = conn.execute(sa.select(operators.c.password_hash)).scalar_one()
        assert stored.startswith("$argon2")
        token, principal = auth.login(conn, "alice", "correct horse battery", ip="10.0.0.1",
                                      now=T0)
        assert principal.actor == "operator:alice" and principal.role is Role.OPERATOR
        assert auth.session(conn, token, now=T0 + timedelta(hours=1)) == principal
        assert auth.session(conn, token, now=T0 + timedelta(hours=9)) is None  # expired
        auth.logout(conn, token)
        assert auth.session(conn, token, now=T0) is None
    for attempt in range(5):
        with engine.begin() as conn, pytest.raises(auth.LoginFailed):
            auth.login(conn, "alice", f"wrong {attempt}", now=T0)
    with engine.begin() as conn, pytest.raises(auth.LoginFailed):
        # Locked now: even the right password is refused, with the same message.
        auth.login(conn, "alice", "correct horse battery", now=T0 + timedelta(minutes=1))
    with engine.begin() as conn:
        auth.login(conn, "alice", "correct horse battery", now=T0 + timedelta(minutes=16))
        with pytest.raises(auth.LoginFailed):
            auth.login(conn, "nobody", "whatever it is", now=T0)
        actions = conn.execute(sa.select(audit_log.c.action)).scalars().all()
    assert actions.count("login.failed") == 7 and actions.count("login") == 2
    assert "operator.create" in actions


def test_api_keys_hashed_shown_once_revocable(db_url, engine):
    created = cli(db_url, "apikeys", "create", "crm", "--role", "viewer", "--json").json()
    key = created["key"]
    assert key.startswith("csk_")
    with engine.begin() as conn:
        assert conn.execute(sa.select(api_keys.c.key_hash)).scalar_one() != key
        principal = auth.authenticate_key(conn, key)
        assert principal is not None and principal.role is Role.VIEWER
        assert auth.authenticate_key(conn, key[:-1] + "x") is None
        assert auth.authenticate_key(conn, "csk_nothing_here") is None
        assert auth.authenticate_key(conn, "garbage") is None
    revoked = cli(db_url, "apikeys", "revoke", str(created["id"]), "--json").json()
    assert revoked == {"id": created["id"], "revoked": True}
    with engine.begin() as conn:
        assert auth.authenticate_key(conn, key) is None


def test_api_dependencies_answer_problems(engine, settings):
    with engine.begin() as conn:
        _, viewer = auth.create_api_key(conn, "ro", "viewer", "os:test")
        _, operator = auth.create_api_key(conn, "rw", "operator", "os:test")
        signer = Signer.for_database(conn, settings)
    app = FastAPI()
    app.state.consentry = AppState(settings, engine, signer)
    app.add_exception_handler(Problem, lambda request, exc: exc.response())

    @app.get("/read")
    def read(principal: Reader):
        return {"who": principal.actor}

    @app.post("/write")
    def write(principal: Writer):
        return {"who": principal.actor}

    client = TestClient(app)
    missing = client.get("/read")
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert client.get("/read", headers={"Authorization": f"Bearer {viewer}"}).json() == {
        "who": "apikey:ro"}
    denied = client.post("/write", headers={"Authorization": f"Bearer {viewer}"})
    assert denied.status_code == 403 and denied.json()["title"] == "Not allowed"
    assert client.post("/write", headers={"Authorization": f"Bearer {operator}"}).json() == {
        "who": "apikey:rw"}


def test_names_are_checked(engine):
    with engine.begin() as conn, pytest.raises(ConsentryError):
        auth.create_operator(conn, "has space", "long enough password", "viewer", "os:t")
