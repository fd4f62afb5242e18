"""The admin part of the REST API on both databases: operators, API keys, webhook endpoints
with their delivery log, the audit log; every change audited."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from consentry.auth import service as auth
from consentry.consent import service as consent
from consentry.domain.ledger import Origin
from consentry.profiles import service as profiles
from consentry.store.schema import api_keys, audit_log, webhook_endpoints
from consentry.web.app import create_app
from consentry.webhooks import dispatch
from consentry.webhooks.dispatch import verify_signature
from http_sink import Reply, http_sink

PROBLEM = "application/problem+json"


@pytest.fixture
def admin(engine, settings):
    """A client with an admin API key, and the key."""
    with engine.begin() as conn:
        _, key = auth.create_api_key(conn, "root", "admin", "os:tester")
    client = TestClient(create_app(settings, engine))
    client.headers["Authorization"] = f"Bearer {key}"
    return client


def _audit(engine: sa.Engine) -> list[tuple[str, str, str | None]]:
    with engine.connect() as conn:
        return [(r.actor, r.action, r.target) for r in conn.execute(
            sa.select(audit_log).order_by(audit_log.c.id))]


def test_operators(admin, engine):
    assert admin.get("/api/v1/operators").json() == {"items": [], "next_cursor": None}
    created = admin.post("/api/v1/operators", json={
        "login": "erika", "password": "correct horse battery", "role": "operator"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["login"] == "erika" and body["role"] == "operator" and body["id"] >= 1
    assert "password" not in body and "password_hash" not in body
    listed = admin.get("/api/v1/operators").json()["items"]
    assert [(o["login"], o["role"]) for o in listed] == [("erika", "operator")]
    assert "password_hash" not in listed[0]
    # The new operator can log in with that password.
    with engine.begin() as conn:
        _, principal = auth.login(conn, "erika", "correct horse battery")
    assert principal.role == "operator"

    again = admin.post("/api/v1/operators", json={
        "login": "erika", "password": "another long one", "role": "viewer"})
    assert again.status_code == 409 and again.headers["content-type"] == PROBLEM
    short = admin.post("/api/v1/operators", json={
        "login": "kurt", "password": "short", "role": "viewer"})
    assert short.status_code == 422 and short.json()["errors"][0]["field"] == "password"
    bad_role = admin.post("/api/v1/operators", json={
        "login": "kurt", "password": "long enough password", "role": "root"})
    assert bad_role.status_code == 422
    spaces = admin.post("/api/v1/operators", json={
        "login": "kurt meier", "password": "long enough password", "role": "viewer"})
    assert spaces.status_code == 400 and "spaces" in spaces.json()["detail"]
    assert ("apikey:root", "operator.create", "operator:erika") in _audit(engine)


def test_api_keys_are_shown_once_hashed_and_revocable(admin, engine, settings):
    created = admin.post("/api/v1/api-keys", json={"name": "crm", "role": "viewer"})
    assert created.status_code == 201, created.text
    body = created.json()
    key = body["key"]
    assert key.startswith(f"csk_{body['prefix']}_") and body["role"] == "viewer"
    assert body["created_by"] == "apikey:root" and body["revoked_at"] is None
    with engine.connect() as conn:
        stored = conn.execute(sa.select(api_keys).where(api_keys.c.id == body["id"])).one()
    assert key not in stored._mapping.values()  # only its hash is kept
    listed = admin.get("/api/v1/api-keys").json()["items"]
    assert [k["name"] for k in listed] == ["root", "crm"]
    assert all("key" not in k and "key_hash" not in k for k in listed)
    assert admin.get(f"/api/v1/api-keys/{body['id']}").json()["name"] == "crm"
    assert admin.get("/api/v1/api-keys/999").status_code == 404

    crm = TestClient(create_app(settings, engine))
    crm.headers["Authorization"] = f"Bearer {key}"
    assert crm.get("/api/v1/operators").status_code == 403  # a viewer is no admin

    revoked = admin.delete(f"/api/v1/api-keys/{body['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused = crm.get("/api/v1/operators")
    assert refused.status_code == 401 and refused.headers["content-type"] == PROBLEM
    # Revoking twice changes nothing; POST .../revoke is the same.
    again = admin.post(f"/api/v1/api-keys/{body['id']}/revoke")
    assert again.status_code == 200
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    other = admin.post("/api/v1/api-keys", json={"name": "shop", "role": "operator"}).json()
    assert admin.post(f"/api/v1/api-keys/{other['id']}/revoke").json()["revoked_at"]
    assert admin.delete("/api/v1/api-keys/999").status_code == 404
    # The key making the request cannot revoke itself (no locking oneself out by mistake).
    root = listed[0]["id"]
    assert admin.delete(f"/api/v1/api-keys/{root}").status_code == 409
    assert admin.post(f"/api/v1/api-keys/{root}/revoke").status_code == 409
    assert admin.post("/api/v1/api-keys", json={"name": "x", "role": "god"}).status_code == 422
    assert admin.post("/api/v1/api-keys", json={"name": "", "role": "viewer"}
                      ).status_code == 422
    actions = [(a, t) for _, a, t in _audit(engine) if a.startswith("apikey.")]
    assert actions == [("apikey.create", "apikey:root"), ("apikey.create", "apikey:crm"),
                       ("apikey.revoke", f"apikey:{body['id']}"),
                       ("apikey.create", "apikey:shop"),
                       ("apikey.revoke", f"apikey:{other['id']}")]


def test_webhook_endpoints_and_their_delivery_log(admin, engine, settings):
    with http_sink() as sink:
        created = admin.post("/api/v1/webhooks", json={
            "url": sink.url + "/crm", "events": ["opt_out", "opt_in"]})
        assert created.status_code == 201, created.text
        hook = created.json()
        secret = hook["secret"]
        assert secret.startswith("whsec_") and hook["active"] is True
        assert hook["events"] == ["opt_in", "opt_out"]
        assert hook["deliveries"] == {"pending": 0, "delivered": 0, "failed": 0}
        listed = admin.get("/api/v1/webhooks").json()["items"]
        assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
        assert "secret" not in admin.get(f"/api/v1/webhooks/{hook['id']}").json()

        with engine.begin() as conn:
            pid = profiles.create(conn, settings, profiles.NewProfile(email="a@example.com"),
                                  Origin(source="api"))
            for _ in range(3):
                consent.opt_out(conn, pid, None, Origin(source="api", actor="apikey:root"))
                consent.opt_in(conn, pid, None, Origin(source="api", actor="apikey:root"))
        sink.script(Reply(500, {"error": "busy"}))
        dispatch.deliver_due(engine)  # the first fails, the rest of the batch waits
        log = admin.get(f"/api/v1/webhooks/{hook['id']}/deliveries", params={"limit": 4})
        assert log.status_code == 200, log.text
        page1 = log.json()
        assert len(page1["items"]) == 4 and page1["next_cursor"]
        page2 = admin.get(f"/api/v1/webhooks/{hook['id']}/deliveries",
                          params={"limit": 4, "cursor": page1["next_cursor"]}).json()
        assert len(page2["items"]) == 2 and page2["next_cursor"] is None
        items = page1["items"] + page2["items"]
        assert [i["id"] for i in items] == sorted((i["id"] for i in items), reverse=True)
        first = items[-1]
        assert first["type"] == "consent.opt_out" and first["attempts"] == 1
        assert first["last_status"] == 500 and first["state"] == "pending"
        assert first["payload"]["profile_id"] == pid
        pending = admin.get(f"/api/v1/webhooks/{hook['id']}/deliveries",
                            params={"state": "pending"}).json()["items"]
        assert len(pending) == 6
        assert admin.get(f"/api/v1/webhooks/{hook['id']}/deliveries",
                         params={"state": "lost"}).status_code == 422
        assert admin.get(f"/api/v1/webhooks/{hook['id']}/deliveries",
                         params={"cursor": "!!"}).status_code == 400

        retried = admin.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{first['id']}/retry")
        assert retried.status_code == 200 and retried.json()["attempts"] == 0
        assert admin.post(f"/api/v1/webhooks/{hook['id']}/deliveries/99999/retry"
                          ).status_code == 404
        sent = dispatch.deliver_due(engine)
        assert sent.delivered >= 1
        request = sink.requests[-1]
        assert verify_signature(secret, request.headers["x-consentry-timestamp"],
                                request.body, request.headers["x-consentry-signature"])

        patched = admin.patch(f"/api/v1/webhooks/{hook['id']}",
                              json={"active": False, "events": ["*"]})
        assert patched.status_code == 200, patched.text
        assert patched.json()["active"] is False and patched.json()["events"] == ["*"]
        assert admin.patch(f"/api/v1/webhooks/{hook['id']}",
                           json={"url": "gopher://x"}).status_code == 422

    bad = admin.post("/api/v1/webhooks", json={"url": "ftp://x.example", "events": ["*"]})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "url"
    for url in ("http://[::1/x", "http://x.example:99999/"):
        bad = admin.post("/api/v1/webhooks", json={"url": url, "events": ["*"]})
        assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "url"
    assert admin.post("/api/v1/webhooks", json={"url": "https://x.example",
                                                "events": ["everything"]}).status_code == 422
    assert admin.post("/api/v1/webhooks", json={"url": "https://x.example",
                                                "events": []}).status_code == 422
    assert admin.get("/api/v1/webhooks/999").status_code == 404
    assert admin.get("/api/v1/webhooks/999/deliveries").status_code == 404
    assert admin.delete(f"/api/v1/webhooks/{hook['id']}").status_code == 204
    assert admin.delete(f"/api/v1/webhooks/{hook['id']}").status_code == 404
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(webhook_endpoints)
                            ).scalar() == 0
    actions = [a for _, a, _ in _audit(engine) if a.startswith("webhook.")]
    assert actions == ["webhook.create", "webhook.retry", "webhook.update", "webhook.delete"]


def test_audit_log_is_paged_newest_first(admin, engine):
    for i in range(5):
        assert admin.post("/api/v1/api-keys", json={"name": f"k{i}", "role": "viewer"}
                          ).status_code == 201
    first = admin.get("/api/v1/audit", params={"limit": 4})
    assert first.status_code == 200, first.text
    page1 = first.json()
    assert [e["target"] for e in page1["items"]] == ["apikey:k4", "apikey:k3", "apikey:k2",
                                                      "apikey:k1"]
    assert page1["items"][0]["actor"] == "apikey:root"
    assert page1["items"][0]["action"] == "apikey.create"
    assert page1["items"][0]["detail"]["role"] == "viewer"
    page2 = admin.get("/api/v1/audit", params={"limit": 4, "cursor": page1["next_cursor"]}
                      ).json()
    assert [e["target"] for e in page2["items"]] == ["apikey:k0", "apikey:root"]
    assert page2["next_cursor"] is None
    assert admin.get("/api/v1/audit", params={"limit": 0}).status_code == 422
    assert admin.get("/api/v1/audit", params={"cursor": "bm90IGFuIGludA"}).status_code == 400


def test_admin_routes_are_in_the_openapi_document(admin):
    paths = admin.get("/api/openapi.json").json()["paths"]
    for path in ("/api/v1/operators", "/api/v1/api-keys", "/api/v1/api-keys/{key_id}",
                 "/api/v1/api-keys/{key_id}/revoke", "/api/v1/webhooks",
                 "/api/v1/webhooks/{endpoint_id}", "/api/v1/webhooks/{endpoint_id}/deliveries",
                 "/api/v1/audit"):
        assert path in paths
    created = paths["/api/v1/api-keys"]["post"]["responses"]["201"]
    assert "ApiKeyCreated" in str(created)
