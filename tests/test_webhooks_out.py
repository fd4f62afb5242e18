"""Outbound webhooks on both databases: the outbox written with each consent change, signed
delivery to a real HTTP server (which checks the signature as a receiver would), retries with
back-off after a 500, failure after the last attempt, the events filter, the CLI."""

from __future__ import annotations

import random
import re
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from consentry.consent import service as consent
from consentry.domain.addresses import normalize_email
from consentry.domain.channels import Channel
from consentry.domain.ledger import Event, Kind, Origin
from consentry.domain.quarantine import Status
from consentry.ledger import service as ledger
from consentry.profiles import service as profiles
from consentry.quarantine import service as quarantine
from consentry.settings import Settings
from consentry.store.schema import ledger_events, webhook_deliveries
from consentry.webhooks import dispatch
from consentry.webhooks import service as webhooks
from consentry.webhooks.dispatch import MAX_ATTEMPTS, backoff, sign, verify_signature
from helpers import cli, run_in_threads
from http_sink import Recorded, Reply, free_port, http_sink

OPERATOR = Origin(source="api", actor="apikey:crm", note="asked by phone", ip="192.0.2.7",
                  user_agent="secret-browser")


def _profile(engine: sa.Engine, settings: Settings, email: str = "max@example.com") -> int:
    with engine.begin() as conn:
        return profiles.create(conn, settings, profiles.NewProfile(
            email=email, first_name="Max", last_name="Mustermann"), OPERATOR)


def _endpoint(engine: sa.Engine, url: str, events: list[str]) -> tuple[int, str]:
    with engine.begin() as conn:
        return webhooks.create_endpoint(conn, url, events, "os:tester")


def _rows(engine: sa.Engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(webhook_deliveries).order_by(webhook_deliveries.c.id)).mappings()]


class Receiver:
    """The receiving side: verifies every request's signature with the endpoint's secret."""

    def __init__(self) -> None:
        self.secret = ""
        self.secrets: dict[str, str] = {}  # by path, where endpoints differ
        self.verified: list[bool] = []

    def __call__(self, request: Recorded) -> Reply:
        secret = self.secrets.get(request.path, self.secret)
        ok = verify_signature(secret, request.headers.get("x-consentry-timestamp"),
                              request.body, request.headers.get("x-consentry-signature"))
        self.verified.append(ok)
        return Reply(200 if ok else 401, {"ok": ok})


def test_no_endpoint_no_rows_and_one_query_per_append(engine, settings):
    pid = _profile(engine, settings)
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if "webhook" in statement:
            statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        with engine.begin() as conn:
            consent.opt_out(conn, pid, None, OPERATOR)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert _rows(engine) == []
    assert len(statements) == 1 and statements[0].lstrip().upper().startswith("SELECT")
    # An inactive endpoint queues nothing either.
    with engine.begin() as conn:
        webhooks.create_endpoint(conn, "http://127.0.0.1:9/x", ["*"], "os:tester",
                                 active=False)
        consent.opt_in(conn, pid, None, OPERATOR)
    assert _rows(engine) == []


def test_many_events_are_queued_with_one_insert(engine, settings):
    _endpoint(engine, "http://127.0.0.1:9/hook", ["quarantine"])
    _endpoint(engine, "http://127.0.0.1:9/other", ["opt_out"])
    now = datetime.now(UTC)
    events = [Event(at=now, kind=Kind.QUARANTINE, source="import", channel="email",
                    address=f"a{i}@example.com", old_state="valid", new_state="denylisted")
              for i in range(300)]
    statements: list[tuple[str, bool]] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if "webhook" in statement:
            statements.append((statement.lstrip().split()[0].upper(), executemany))

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        with engine.begin() as conn:
            ledger.append(conn, events)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert statements[0] == ("SELECT", False)
    assert [s for s, _ in statements[1:]] and {s for s, _ in statements[1:]} == {"INSERT"}
    assert len(statements) <= 3  # executemany: one call, or a few batches of it
    rows = _rows(engine)
    assert len(rows) == 300 and {r["endpoint_id"] for r in rows} == {1}
    assert len({r["payload"]["id"] for r in rows}) == 300
    with engine.connect() as conn:
        hashes = set(conn.execute(sa.select(ledger_events.c.hash)).scalars())
    assert {r["payload"]["id"] for r in rows} == hashes  # the id is the ledger event's hash


def test_signed_delivery_retried_after_500_then_delivered(engine, settings):
    receiver = Receiver()
    with http_sink(receiver) as sink:
        sink.script(Reply(500, {"error": "database is down"}))
        endpoint_id, secret = _endpoint(engine, sink.url + "/consent", ["opt_out", "opt_in"])
        receiver.secret = secret
        assert secret.startswith("whsec_")
        pid = _profile(engine, settings)
        with engine.begin() as conn:
            assert consent.opt_out(conn, pid, Channel.EMAIL, OPERATOR)
        [row] = _rows(engine)
        assert row["state"] == "pending" and row["attempts"] == 0
        assert row["endpoint_id"] == endpoint_id

        before = datetime.now(UTC)
        stats = dispatch.deliver_due(engine)
        assert stats.as_json() == {"claimed": 1, "delivered": 0, "retrying": 1, "failed": 0,
                                   "postponed": 0}
        [row] = _rows(engine)
        assert row["state"] == "pending" and row["attempts"] == 1
        assert row["last_status"] == 500 and "database is down" in row["last_error"]
        wait = row["next_attempt_at"] - before
        assert dispatch.BASE_DELAY * 0.79 <= wait <= dispatch.BASE_DELAY * 1.21 + timedelta(
            seconds=5)
        # Not due yet: nothing is sent.
        assert dispatch.deliver_due(engine).claimed == 0
        assert len(sink.requests) == 1

        later = datetime.now(UTC) + timedelta(minutes=2)
        assert dispatch.deliver_due(engine, now=later).delivered == 1
        [row] = _rows(engine)
        assert row["state"] == "delivered" and row["attempts"] == 2
        assert row["last_status"] == 200 and row["last_error"] is None
        assert row["delivered_at"] == later

    # The first request was answered 500 by the script (before the handler), the second
    # verified by the receiver; both carry the same signed event.
    assert receiver.verified == [True]
    first, second = sink.requests
    for request in (first, second):
        assert request.method == "POST" and request.path == "/consent"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-consentry-event"] == "consent.opt_out"
        assert request.headers["x-consentry-signature"] == sign(
            secret, request.headers["x-consentry-timestamp"], request.body)
    payload = second.json()
    assert payload == first.json()
    assert payload["type"] == "consent.opt_out" and payload["profile_id"] == pid
    assert payload["channel"] == "email" and payload["old_state"] == "opted_in"
    assert payload["new_state"] == "opted_out" and payload["source"] == "api"
    assert payload["actor"] == "apikey:crm" and payload["service"] is None
    assert datetime.fromisoformat(payload["at"]).tzinfo is not None
    assert len(payload["id"]) == 64
    # Personal data stays home: no address, name, note, IP or user agent.
    body = second.body.decode()
    for secret_text in ("max@example.com", "Max", "Mustermann", "asked by phone",
                        "192.0.2.7", "secret-browser"):
        assert secret_text not in body
    assert "address" not in payload


def test_failed_after_the_last_attempt(engine, settings):
    endpoint_id, _ = _endpoint(engine, f"http://127.0.0.1:{free_port()}/gone", ["*"])
    pid = _profile(engine, settings)
    with engine.begin() as conn:
        consent.opt_out(conn, pid, None, OPERATOR)
    now = datetime.now(UTC)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        stats = dispatch.deliver_due(engine, now=now, timeout=2)
        assert stats.claimed == 1
        [row] = _rows(engine)
        assert row["attempts"] == attempt and row["last_status"] is None
        assert "ConnectError" in row["last_error"]
        if attempt < MAX_ATTEMPTS:
            assert row["state"] == "pending"
            assert row["next_attempt_at"] > now
            now = row["next_attempt_at"]
    assert row["state"] == "failed" and row["delivered_at"] is None
    assert dispatch.deliver_due(engine, now=now + timedelta(days=30)).claimed == 0
    with engine.connect() as conn:
        assert webhooks.get_endpoint(conn, endpoint_id)["deliveries"] == {
            "pending": 0, "delivered": 0, "failed": 1}
        # The delivery log shows it; a retry puts it back in the queue.
        [logged] = webhooks.deliveries(conn, endpoint_id, state="failed")
        assert logged["attempts"] == MAX_ATTEMPTS and logged["type"] == "consent.opt_out"
    with engine.begin() as conn:
        again = webhooks.retry(conn, endpoint_id, logged["id"], "os:tester")
    assert again["state"] == "pending" and again["attempts"] == 0
    # Old delivered and failed rows are pruned after the retention time.
    with engine.begin() as conn:
        webhooks.retry(conn, endpoint_id, logged["id"], "os:tester")
        conn.execute(webhook_deliveries.update().values(state="failed"))
        assert webhooks.prune(conn, now=datetime.now(UTC) + timedelta(days=10)) == 0
        assert webhooks.prune(conn, now=datetime.now(UTC) + webhooks.RETENTION * 2) == 1


def test_backoff_doubles_with_jitter_and_is_capped():
    rng = random.Random(7)
    for attempts in range(1, 8):
        expected = dispatch.BASE_DELAY * 2 ** (attempts - 1)
        wait = backoff(attempts, rng)
        assert expected * 0.8 <= wait <= expected * 1.2
    assert backoff(40, rng) <= dispatch.MAX_DELAY
    assert backoff(40, rng) >= dispatch.MAX_DELAY * 0.8


def test_events_filter_is_honoured(engine, settings):
    with http_sink() as sink:
        optouts, _ = _endpoint(engine, sink.url + "/optouts", ["opt_out"])
        subs, _ = _endpoint(engine, sink.url + "/subs", ["subscription", "consent.opt_in"])
        everything, _ = _endpoint(engine, sink.url + "/all", ["*"])
        pid = _profile(engine, settings)
        with engine.begin() as conn:
            news = consent.create_service(conn, "news", Channel.EMAIL, "News")
            consent.subscribe(conn, pid, news, OPERATOR, confirmed=True)
            consent.opt_out(conn, pid, None, OPERATOR)
            consent.opt_in(conn, pid, None, OPERATOR)
            consent.unsubscribe(conn, pid, news, OPERATOR)
            quarantine.set_status(conn, normalize_email("Max@Example.com"),
                                  Status.DENYLISTED, None, OPERATOR, settings.quarantine)
        stats = dispatch.deliver_due(engine)
        assert stats.delivered == stats.claimed == 1 + 3 + 5
    by_path: dict[str, list[str]] = {}
    for request in sink.requests:
        by_path.setdefault(request.path, []).append(request.json()["type"])
    assert by_path["/optouts"] == ["consent.opt_out"]
    assert by_path["/subs"] == ["subscription.changed", "consent.opt_in",
                                "subscription.changed"]
    assert by_path["/all"] == ["subscription.changed", "consent.opt_out", "consent.opt_in",
                               "subscription.changed", "quarantine.changed"]
    unsubscribed = [r.json() for r in sink.requests if r.path == "/subs"][-1]
    assert unsubscribed["service"] == "news" and unsubscribed["old_state"] == "subscribed"
    assert unsubscribed["new_state"] == "unsubscribed"
    # A quarantine change belongs to an address: that address is its only personal datum.
    [quarantined] = [r.json() for r in sink.requests
                     if r.json()["type"] == "quarantine.changed"]
    assert quarantined["address"] == "max@example.com"
    assert quarantined["profile_id"] is None and quarantined["status"] == "denylisted"
    assert quarantined["new_state"] == "denylisted(manual)"
    with engine.connect() as conn:
        counts = {e["id"]: e["deliveries"]["delivered"] for e in webhooks.list_endpoints(conn)}
    assert counts == {optouts: 1, subs: 3, everything: 5}


def test_a_rolled_back_change_sends_nothing(engine, settings):
    _endpoint(engine, "http://127.0.0.1:9/hook", ["*"])
    pid = _profile(engine, settings)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        consent.opt_out(conn, pid, None, OPERATOR)
        assert len(conn.execute(sa.select(webhook_deliveries)).all()) == 1
        raise RuntimeError("the caller's transaction fails after the change")
    assert _rows(engine) == []


def test_an_inactive_endpoint_keeps_its_queue_until_enabled(engine, settings):
    with http_sink() as sink:
        endpoint_id, _ = _endpoint(engine, sink.url, ["*"])
        pid = _profile(engine, settings)
        with engine.begin() as conn:
            consent.opt_out(conn, pid, None, OPERATOR)
            webhooks.update_endpoint(conn, endpoint_id, "os:tester", active=False)
        assert dispatch.deliver_due(engine).claimed == 0
        with engine.begin() as conn:
            webhooks.update_endpoint(conn, endpoint_id, "os:tester", active=True)
        assert dispatch.deliver_due(engine).delivered == 1
        assert len(sink.requests) == 1


def test_other_deliveries_of_a_failing_endpoint_wait_without_an_attempt(engine, settings):
    with http_sink() as sink:
        sink.script(Reply(503))
        _endpoint(engine, sink.url, ["opt_out", "opt_in"])
        pid = _profile(engine, settings)
        with engine.begin() as conn:
            consent.opt_out(conn, pid, None, OPERATOR)
            consent.opt_in(conn, pid, None, OPERATOR)
        stats = dispatch.deliver_due(engine)
        assert (stats.retrying, stats.postponed) == (1, 1)
        assert len(sink.requests) == 1
        assert [r["attempts"] for r in _rows(engine)] == [1, 0]


def test_verify_signature_refuses_tampering_other_secrets_and_old_timestamps():
    body = b'{"id":"x","type":"consent.opt_out"}'
    now = time.time()
    timestamp = str(int(now))
    header = sign("whsec_a", timestamp, body)
    assert verify_signature("whsec_a", timestamp, body, header, now=now)
    assert not verify_signature("whsec_b", timestamp, body, header, now=now)
    assert not verify_signature("whsec_a", timestamp, body + b" ", header, now=now)
    assert not verify_signature("whsec_a", str(int(now) - 1), body, header, now=now)
    assert not verify_signature("whsec_a", timestamp, body, header, now=now + 3600)
    assert verify_signature("whsec_a", timestamp, body, header, now=now + 3600, tolerance=None)
    assert not verify_signature("whsec_a", "soon", body, header)
    assert not verify_signature("whsec_a", None, body, header)
    assert not verify_signature("whsec_a", timestamp, body, None)


def test_endpoint_validation(engine):
    from consentry.domain.errors import ConsentryError

    with engine.begin() as conn:
        for url, events in (("ftp://example.com/x", ["*"]), ("http:///nohost", ["*"]),
                            ("https://example.com/x", ["nonsense"]),
                            ("https://example.com/x", [])):
            with pytest.raises(ConsentryError):
                webhooks.create_endpoint(conn, url, events, "os:tester")
        endpoint_id, _ = webhooks.create_endpoint(conn, "https://crm.example/hook",
                                                  ["opt_in,consent.opt_out", "opt_in"],
                                                  "os:tester")
        assert webhooks.get_endpoint(conn, endpoint_id)["events"] == ["opt_in", "opt_out"]


def test_claims_are_exclusive_between_dispatchers(pg_engine):
    """Two dispatchers at once on PostgreSQL: each delivery is sent exactly once."""
    with http_sink(lambda _r: Reply(200, delay=0.02)) as sink:
        _endpoint(pg_engine, sink.url, ["*"])
        now = datetime.now(UTC)
        with pg_engine.begin() as conn:
            ledger.append(conn, [Event(at=now, kind=Kind.OPT_OUT, source="api",
                                       profile_id=i, channel="all") for i in range(1, 41)])
        lock = threading.Lock()
        results: list[int] = []

        def run(_i: int) -> None:
            while True:
                stats = dispatch.deliver_due(pg_engine, limit=5)
                with lock:
                    results.append(stats.delivered)
                if stats.claimed == 0:
                    return

        run_in_threads(run, 2)
    assert sum(results) == 40
    ids = [r.json()["id"] for r in sink.requests]
    assert len(ids) == len(set(ids)) == 40
    assert all(r["state"] == "delivered" for r in _rows(pg_engine))


def test_cli_add_list_deliver_log(db_url):
    receiver = Receiver()
    with http_sink(receiver) as sink:
        added = cli(db_url, "webhooks", "add", sink.url + "/hook", "--events",
                    "opt_out,opt_in", "--json")
        assert added.exit_code == 0, added.stderr
        data = added.json()
        receiver.secrets["/hook"] = data["secret"]
        assert data["events"] == ["opt_in", "opt_out"] and data["active"] is True
        human = cli(db_url, "webhooks", "add", sink.url + "/other")
        assert human.exit_code == 0 and "not shown again" in human.stdout
        [other_secret] = re.findall(r"whsec_[\w-]+", human.stdout)
        receiver.secrets["/other"] = other_secret
        listed = cli(db_url, "webhooks", "list", "--json").json()
        assert [e["url"] for e in listed] == [sink.url + "/hook", sink.url + "/other"]
        assert all("secret" not in e for e in listed)
        assert cli(db_url, "profiles", "add", "--email", "a@example.com").exit_code == 0
        assert cli(db_url, "optout", "a@example.com").exit_code == 0
        delivered = cli(db_url, "webhooks", "deliver", "--json")
        assert delivered.exit_code == 0, delivered.stderr
        assert delivered.json()["delivered"] == 2
        log = cli(db_url, "webhooks", "log", str(data["id"]), "--json").json_lines()
        assert [(r["type"], r["state"], r["last_status"]) for r in log] == [
            ("consent.opt_out", "delivered", 200)]
        assert len(cli(db_url, "webhooks", "log", "--json").json_lines()) == 2
        assert cli(db_url, "webhooks", "log").exit_code == 0
        assert cli(db_url, "webhooks", "disable", str(data["id"])).exit_code == 0
        assert cli(db_url, "webhooks", "remove", str(data["id"])).exit_code == 0
        assert len(cli(db_url, "webhooks", "list", "--json").json()) == 1
        bad = cli(db_url, "webhooks", "add", "https://x.example", "--events", "everything")
        assert bad.exit_code == 1 and "unknown webhook event" in bad.stderr
        assert cli(db_url, "webhooks", "remove", "99").exit_code == 1
    assert receiver.verified == [True, True]


def test_worker_once_sends_the_due_webhooks(db_url):
    with http_sink() as sink:
        assert cli(db_url, "webhooks", "add", sink.url, "--events", "opt_out").exit_code == 0
        assert cli(db_url, "profiles", "add", "--email", "b@example.com").exit_code == 0
        assert cli(db_url, "optout", "b@example.com", "--channel", "sms").exit_code == 0
        done = cli(db_url, "worker", "--once", "--poll", "0")
        assert done.exit_code == 0, done.stderr
        assert "webhooks: 1 delivered" in done.stderr
        assert [r.json()["channel"] for r in sink.requests] == ["sms"]


def test_serve_background_runs_the_dispatch(engine, settings):
    from consentry.cli.serve_cmd import Background
    from consentry.tokens import Signer

    with http_sink() as sink:
        _endpoint(engine, sink.url, ["*"])
        pid = _profile(engine, settings)
        with engine.begin() as conn:
            consent.opt_out(conn, pid, None, OPERATOR)
            signer = Signer.for_database(conn, settings)
        background = Background(settings, engine, signer, webhook_every=0.1)
        background.dispatch_webhooks()
        assert len(sink.requests) == 1
