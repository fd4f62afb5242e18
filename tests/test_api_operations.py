"""The operations REST API on SQLite and PostgreSQL: the quarantine (list with filters and
cursors, add, update, release, bulk release with a dry run), deliveries (create, analyse, send
through a real SMTP sink, pause, resume, report, exclusion log), the alerting figures, and the
rules every route shares (problem+json naming the field, roles, idempotency keys)."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from consentry.auth.service import create_api_key
from consentry.cli.serve_cmd import Background, DeliverySender
from consentry.consent import service as consent
from consentry.delivery import sending
from consentry.domain import quarantine as qrules
from consentry.domain.addresses import normalize_email
from consentry.domain.channels import Channel
from consentry.domain.ledger import Origin
from consentry.profiles import service as profiles
from consentry.quarantine import service as quarantine
from consentry.settings import SendingSettings, Settings
from consentry.store.schema import audit_log, deliveries, idempotency_keys, ledger_events
from consentry.tokens import Signer
from consentry.web.app import create_app
from smtp_sink import SmtpSink

OP = Origin(source="cli", actor="os:tester")
V1 = "/api/v1"
TEXT = "Hallo {{ profile.first_name }},\nabmelden: {{ unsubscribe_url }}\n"
HTML = '<p>Hallo</p><a href="{{ unsubscribe_url }}">Abmelden</a>'
PROBLEM = "application/problem+json"


class Api:
    """A TestClient with an operator's and a viewer's API key."""

    def __init__(self, engine: sa.Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.client = TestClient(create_app(settings, engine))
        with engine.begin() as conn:
            _, operator = create_api_key(conn, "ops", "operator", "os:tester")
            _, viewer = create_api_key(conn, "reader", "viewer", "os:tester")
        self.operator = {"Authorization": f"Bearer {operator}"}
        self.viewer = {"Authorization": f"Bearer {viewer}"}

    def get(self, path: str, *, as_viewer: bool = True, **kw):
        return self.client.get(V1 + path, headers=self.viewer if as_viewer else self.operator,
                               **kw)

    def post(self, path: str, json=None, headers: dict | None = None, **kw):
        return self.client.post(V1 + path, json=json,
                                headers={**self.operator, **(headers or {})}, **kw)

    def put(self, path: str, json=None, **kw):
        return self.client.put(V1 + path, json=json, headers=self.operator, **kw)


@pytest.fixture
def sink():
    with SmtpSink() as s:
        yield s


def _settings(settings: Settings, sink: SmtpSink | None = None) -> Settings:
    return replace(settings, smtp_url=sink.url if sink else None,
                   base_url="https://news.example.org", bounce_domain="bounce.example.org",
                   sending=SendingSettings(rate=0, per_domain_rate=0, concurrency=2,
                                           batch_size=2))


@pytest.fixture
def api(engine, settings) -> Api:
    return Api(engine, _settings(settings))


def _problem(response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"]
    if field is not None:
        assert [e["field"] for e in body["errors"]] == [field], body
    return body


def _audience(engine, settings, n: int) -> list[int]:
    with engine.begin() as conn:
        news = consent.create_service(conn, "news", Channel.EMAIL, "Newsletter")
        ids = []
        for i in range(n):
            pid = profiles.create(conn, settings, profiles.NewProfile(
                email=f"p{i}@example.com", first_name=f"Vorname{i}"), OP)
            consent.subscribe(conn, pid, news, OP)
            ids.append(pid)
    return ids


def _create(api: Api, **fields) -> dict:
    body = {"name": "Juni", "channel": "email", "service": "news", "subject": "Hallo",
            "text": TEXT, "html": HTML, **fields}
    response = api.post("/deliveries", body)
    assert response.status_code == 201, response.text
    return response.json()


# --- quarantine ------------------------------------------------------------------------------

def test_put_show_and_release_an_address_through_the_ledger(api):
    unknown = api.get("/quarantine/" + quote("nobody@example.com"))
    assert unknown.status_code == 200
    assert unknown.json()["status"] == "valid" and unknown.json()["error_count"] == 0

    put = api.put("/quarantine/" + quote("Ann@Example.com"),
                  {"status": "denylisted", "reason": "complaint", "note": "asked by phone"})
    assert put.status_code == 200, put.text
    assert put.json() | {"updated_at": None, "status_at": None} == {
        "address": "Ann@example.com", "channel": "email", "status": "denylisted",
        "reason": "complaint", "error_count": 0, "first_error_at": None, "last_error_at": None,
        "status_at": None, "source": "api", "note": "asked by phone", "updated_at": None,
        "changed": True}
    shown = api.get("/quarantine/" + quote("ann@example.com")).json()
    assert (shown["status"], shown["reason"], shown["note"]) == (
        "denylisted", "complaint", "asked by phone")
    again = api.put("/quarantine/" + quote("ann@example.com"),
                    {"status": "denylisted", "reason": "complaint"})
    assert again.json()["changed"] is False

    # A phone number, its channel given (a "+" in the path is a plus, not a space).
    phone = api.put("/quarantine/" + quote("+49 151 23456789", safe=""),
                    {"status": "quarantined", "channel": "sms"})
    assert phone.status_code == 200, phone.text
    assert (phone.json()["address"], phone.json()["reason"]) == ("+4915123456789", "manual")
    assert api.get("/quarantine/%2B4915123456789").json()["status"] == "quarantined"

    released = api.post("/quarantine/" + quote("ann@example.com") + "/release",
                        {"note": "customer asked"})
    assert released.status_code == 200, released.text
    assert (released.json()["status"], released.json()["changed"]) == ("valid", True)
    noop = api.post("/quarantine/" + quote("ann@example.com") + "/release")
    assert (noop.json()["status"], noop.json()["changed"]) == ("valid", False)

    with api.engine.connect() as conn:
        events = conn.execute(sa.select(
            ledger_events.c.source, ledger_events.c.actor, ledger_events.c.address,
            ledger_events.c.old_state, ledger_events.c.new_state, ledger_events.c.note)
            .where(ledger_events.c.kind == "quarantine").order_by(ledger_events.c.id)).all()
    assert [tuple(e) for e in events] == [
        ("api", "apikey:ops", "ann@example.com", "valid", "denylisted(complaint)",
         "asked by phone"),
        ("api", "apikey:ops", "+4915123456789", "valid", "quarantined(manual)", None),
        ("api", "apikey:ops", "ann@example.com", "denylisted(complaint)", "valid",
         "customer asked"),
    ]


def test_list_filters_and_cursor_pagination(api):
    now = datetime.now(UTC)
    entries = [("a@gmail.com", qrules.Status.QUARANTINED, "user_unknown"),
               ("b@gmail.com", qrules.Status.QUARANTINED, "mailbox_full"),
               ("c@gmail.com", qrules.Status.DENYLISTED, "complaint"),
               ("d@web.de", qrules.Status.QUARANTINED, "user_unknown"),
               ("e@web.de", qrules.Status.ALLOWLISTED, "manual")]
    with api.engine.begin() as conn:
        for n, (address, status, reason) in enumerate(entries):
            # Three share one updated_at: the cursor must still neither skip nor repeat.
            at = now - timedelta(minutes=0 if n < 3 else n)
            quarantine.set_status(conn, normalize_email(address), status, reason, OP,
                                  api.settings.quarantine, now=at)
        quarantine.set_status(conn, normalize_email("f@web.de"), qrules.Status.QUARANTINED,
                              None, OP, api.settings.quarantine, now=now)
        quarantine.release(conn, normalize_email("f@web.de"), OP, api.settings.quarantine,
                           now=now)  # kept as valid: not listed without ?status=valid
        quarantine.set_status(conn, quarantine.Address(Channel.SMS, "+4915100000001",
                                                       "+4915100000001"),
                              qrules.Status.QUARANTINED, "user_unknown", OP,
                              api.settings.quarantine, now=now - timedelta(hours=1))

    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        body = api.get("/quarantine", params=params).json()
        seen += [item["address"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == 6
    assert seen[3:] == ["d@web.de", "e@web.de", "+4915100000001"]  # newest change first
    assert set(seen[:3]) == {"a@gmail.com", "b@gmail.com", "c@gmail.com"}

    def addresses(**params):
        response = api.get("/quarantine", params=params)
        assert response.status_code == 200, response.text
        return {item["address"] for item in response.json()["items"]}

    assert addresses(status="denylisted") == {"c@gmail.com"}
    assert addresses(reason="user_unknown") == {"a@gmail.com", "d@web.de", "+4915100000001"}
    assert addresses(channel="sms") == {"+4915100000001"}
    assert addresses(domain="GMAIL.com", reason="user_unknown") == {"a@gmail.com"}
    assert addresses(status="valid") == {"f@web.de"}
    _problem(api.get("/quarantine", params={"status": "gone"}), 422, "status")
    _problem(api.get("/quarantine", params={"cursor": "garbage!"}), 400, "cursor")
    _problem(api.get("/quarantine", params={"cursor": "WzEsMl0"}), 400, "cursor")  # [1,2]
    _problem(api.get("/quarantine", params={"limit": 0}), 422, "limit")


def test_bulk_release_dry_run_counts_and_the_real_one_releases(api):
    start = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
    with api.engine.begin() as conn:
        for n, address in enumerate(("a@gmail.com", "b@gmail.com", "c@gmail.com")):
            quarantine.set_status(conn, normalize_email(address), qrules.Status.QUARANTINED,
                                  "user_unknown", OP, api.settings.quarantine,
                                  now=start + timedelta(hours=n))
        for address, reason in (("d@gmail.com", "invalid_domain"), ("e@web.de", "user_unknown")):
            quarantine.set_status(conn, normalize_email(address), qrules.Status.QUARANTINED,
                                  reason, OP, api.settings.quarantine, now=start)
    outage = {"reason": "user_unknown", "domain": "gmail.com"}

    dry = api.post("/quarantine/release", {**outage, "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert dry.json() == {"count": 3, "dry_run": True}
    assert api.get("/quarantine/a%40gmail.com").json()["status"] == "quarantined"
    # A window of status changes; naive times are UTC.
    window = api.post("/quarantine/release", {**outage, "since": "2025-03-01T06:30:00",
                                              "until": "2025-03-01T08:00:00+00:00",
                                              "dry_run": True})
    assert window.json() == {"count": 1, "dry_run": True}

    real = api.post("/quarantine/release", {**outage, "note": "gmail outage"})
    assert real.json() == {"count": 3, "dry_run": False}
    statuses = {a: api.get("/quarantine/" + quote(a)).json()["status"]
                for a in ("a@gmail.com", "b@gmail.com", "c@gmail.com", "d@gmail.com",
                          "e@web.de")}
    assert statuses == {"a@gmail.com": "valid", "b@gmail.com": "valid", "c@gmail.com": "valid",
                        "d@gmail.com": "quarantined", "e@web.de": "quarantined"}
    assert api.post("/quarantine/release", outage).json() == {"count": 0, "dry_run": False}
    with api.engine.connect() as conn:
        released = conn.execute(sa.select(ledger_events.c.address).where(
            ledger_events.c.source == "api", ledger_events.c.new_state == "valid",
            ledger_events.c.note == "gmail outage")).scalars().all()
        audited = conn.execute(sa.select(audit_log.c.actor, audit_log.c.detail).where(
            audit_log.c.action == "quarantine.bulk_release")).all()
    assert sorted(released) == ["a@gmail.com", "b@gmail.com", "c@gmail.com"]
    assert [(a, d["count"]) for a, d in audited] == [("apikey:ops", 3), ("apikey:ops", 0)]

    _problem(api.post("/quarantine/release", {"dry_run": True}), 400, "reason")
    _problem(api.post("/quarantine/release", {"since": "yesterday"}), 422, "since")
    _problem(api.post("/quarantine/release", {"until": 0}), 422, "until")
    _problem(api.post("/quarantine/release", {"reason": "x", "bogus": 1}), 422, "bogus")
    _problem(api.post("/quarantine/release", {"reason": "x", "dry_run": 0}), 422, "dry_run")


def test_problems_name_the_field_at_fault(api):
    _audience(api.engine, api.settings, 1)
    _problem(api.get("/quarantine/not-an-address%40"), 400, "address")
    _problem(api.put("/quarantine/a%40example.com", {"status": "gone"}), 422, "status")
    _problem(api.put("/quarantine/a%40example.com", {"status": "quarantined",
                                                     "reason": "bored"}), 400, "reason")
    _problem(api.put("/quarantine/a%40example.com", {"reason": "manual"}), 422, "status")
    _problem(api.put("/quarantine/a%40example.com",
                     {"status": "quarantined", "note": "nul\x00byte"}), 422, "note")

    def create(status: int, field: str, **fields):
        body = {"name": "Juni", "channel": "email", "service": "news", "subject": "Hallo",
                "text": TEXT, **fields}
        return _problem(api.post("/deliveries", body), status, field)

    create(400, "text", text="Hallo, no link here")
    create(400, "html", html="<p>no link</p>")
    create(400, "html", html="<p>{% if %}</p>")
    create(400, "subject", subject="  ")
    create(400, "subject", subject="{{ profile.nickname }}")
    create(400, "service", service="missing")
    create(400, "service", channel="sms", text="Hallo {{ unsubscribe_url }}")
    create(400, "service", service=None, audience="service")
    create(400, "proof", service=None, proof=["not an address"])
    create(400, "fatigue_max", fatigue_max=3)
    create(422, "limit", limit=0)
    create(422, "limit", limit="5")
    create(422, "kind", kind="newsletter")
    create(422, "where.nickname.[key]", service=None, where={"nickname": "x"})
    create(422, "name", name="")
    create(422, "channel", channel="fax")
    with api.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(deliveries)).scalar() == 0

    assert _problem(api.get("/deliveries/99"), 404)["detail"] == "no delivery 99"
    _problem(api.get("/deliveries/99/report"), 404)
    _problem(api.get("/deliveries/99/rates"), 404)
    _problem(api.get("/deliveries/99/exclusions"), 404)
    _problem(api.post("/deliveries/99/send"), 404)
    _problem(api.get("/deliveries/0"), 422, "delivery_id")
    _problem(api.get("/deliveries/1/exclusions", params={"cursor": "WyJ4Il0"}), 400, "cursor")
    _problem(api.get("/rates/daily", params={"days": 0}), 422, "days")
    unauthenticated = api.client.get(V1 + "/quarantine")
    _problem(unauthenticated, 401)
    assert unauthenticated.headers["www-authenticate"].startswith("Bearer")
    _problem(api.client.get(V1 + "/deliveries", headers={"Authorization": "Bearer csk_x_y"}),
             401)


def test_a_viewer_reads_but_may_not_write(api):
    _audience(api.engine, api.settings, 1)
    delivery = _create(api)
    did = delivery["id"]
    for path in ("/quarantine", "/quarantine/a%40example.com", "/deliveries",
                 f"/deliveries/{did}", f"/deliveries/{did}/report", f"/deliveries/{did}/rates",
                 f"/deliveries/{did}/exclusions", "/rates/daily"):
        assert api.get(path).status_code == 200, path
    writes = [("PUT", "/quarantine/a%40example.com", {"status": "quarantined"}),
              ("POST", "/quarantine/a%40example.com/release", None),
              ("POST", "/quarantine/release", {"reason": "user_unknown"}),
              ("POST", "/deliveries", {"name": "x", "channel": "email", "service": "news"}),
              ("POST", f"/deliveries/{did}/analyze", None),
              ("POST", f"/deliveries/{did}/send", None),
              ("POST", f"/deliveries/{did}/pause", None),
              ("POST", f"/deliveries/{did}/resume", None)]
    for method, path, body in writes:
        response = api.client.request(method, V1 + path, json=body, headers=api.viewer)
        assert _problem(response, 403)["detail"] == "the role viewer may not write", path
    assert api.get(f"/deliveries/{did}").json()["state"] == "draft"
    assert api.get("/quarantine/a%40example.com").json()["status"] == "valid"


def test_idempotency_key_replays_the_creation(api):
    _audience(api.engine, api.settings, 1)
    body = {"name": "Juni", "channel": "email", "service": "news", "subject": "Hallo",
            "text": TEXT}
    first = api.post("/deliveries", body, headers={"Idempotency-Key": "juni-1"})
    again = api.post("/deliveries", body, headers={"Idempotency-Key": "juni-1"})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    _problem(api.post("/deliveries", {**body, "name": "Juli"},
                      headers={"Idempotency-Key": "juni-1"}), 422, "Idempotency-Key")
    other = api.post("/deliveries", body, headers={"Idempotency-Key": "juni-2"})
    assert other.json()["id"] != first.json()["id"]
    with api.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(deliveries)).scalar() == 2
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_log).where(
            audit_log.c.action == "delivery.create")).scalar() == 2
        assert conn.execute(sa.select(sa.func.count()).select_from(
            idempotency_keys)).scalar() == 2
    # Other POSTs replay too: the second send with the key answers the first's 202.
    did = first.json()["id"]
    assert api.post(f"/deliveries/{did}/analyze").status_code == 200
    sent = api.post(f"/deliveries/{did}/send", headers={"Idempotency-Key": "send-1"})
    replay = api.post(f"/deliveries/{did}/send", headers={"Idempotency-Key": "send-1"})
    assert sent.status_code == replay.status_code == 202
    assert replay.json() == sent.json() and replay.headers["idempotent-replayed"] == "true"


def test_delivery_created_analysed_sent_and_reported_through_the_api(engine, settings, sink):
    s = _settings(settings, sink)
    api = Api(engine, s)
    ids = _audience(engine, s, 7)
    with engine.begin() as conn:
        consent.opt_out(conn, ids[1], None, OP)
    # One quarantined through the API, one the sink refuses when it is sent.
    assert api.put("/quarantine/p2%40example.com",
                   {"status": "quarantined", "reason": "user_unknown"}).status_code == 200
    sink.reject("p3@example.com", "550 5.1.1 <p3@example.com>: User unknown")

    created = _create(api)
    assert {k: created[k] for k in ("name", "channel", "kind", "audience", "service", "state",
                                    "created_by", "sms", "where", "proof", "limit")} == {
        "name": "Juni", "channel": "email", "kind": "marketing", "audience": "service",
        "service": "news", "state": "draft", "created_by": "apikey:ops", "sms": None,
        "where": {}, "proof": [], "limit": None}
    did = created["id"]
    assert api.get(f"/deliveries/{did}").json() == {
        k: v for k, v in created.items() if k != "sms"}

    analysis = api.post(f"/deliveries/{did}/analyze")
    assert analysis.status_code == 200, analysis.text
    assert analysis.json() == {"delivery": did, "audience": 7,
                               "excluded": {"opted_out": 1, "quarantined": 1}, "to_send": 5}
    # A profile quarantined after the analysis is excluded when its batch is sent.
    assert api.put("/quarantine/p6%40example.com", {"status": "denylisted"}).status_code == 200

    accepted = api.post(f"/deliveries/{did}/send")
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["state"] == "sending" and accepted.json()["started_at"]
    assert sink.messages == []  # the background work sends it

    with engine.connect() as conn:
        signer = Signer.for_database(conn, s)
    Background(s, engine, signer).send_deliveries()
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == [
        "p0@example.com", "p4@example.com", "p5@example.com"]

    delivery = api.get(f"/deliveries/{did}").json()
    assert delivery["state"] == "done" and delivery["finished_at"]
    report = api.get(f"/deliveries/{did}/report")
    assert report.status_code == 200, report.text
    r = report.json()
    assert r["states"] == {"sent": 3, "failed": 1, "excluded": 2, "excluded_at_send": 1}
    assert r["excluded"] == {"opted_out": 1, "quarantined": 1}
    assert r["excluded_at_send"] == {"denylisted": 1}
    assert r["failures"] == {"user_unknown": 1}
    assert r["throughput"]["sent"] == 3
    fb = r["feedback"]
    assert (fb["attempted"], fb["bounces"], fb["bounce_rate"]) == (4, 1, 0.25)
    assert [(a["metric"], a["level"]) for a in fb["alerts"]] == [("bounce_rate", "alert")]

    rates = api.get(f"/deliveries/{did}/rates").json()
    assert {k: rates[k] for k in ("delivery", "attempted", "sent", "bounces", "complaints",
                                  "bounce_rate")} == {
        "delivery": did, "attempted": 4, "sent": 3, "bounces": 1, "complaints": 0,
        "bounce_rate": 0.25}
    assert rates["thresholds"]["bounce_rate_alert"] == s.feedback.bounce_rate_alert
    daily = api.get("/rates/daily", params={"days": 7}).json()
    today = datetime.now(UTC).date().isoformat()
    assert [(d["day"], d["attempted"], d["bounces"]) for d in daily["days"]] == [
        (today, 4, 1)]
    assert daily["days"][0]["alerts"][0]["metric"] == "bounce_rate"

    # The exclusion log, a row at a time, and by reason.
    rows, cursor = [], None
    while True:
        body = api.get(f"/deliveries/{did}/exclusions",
                       params={"limit": 1} | ({"cursor": cursor} if cursor else {})).json()
        rows += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [(r["address"], r["state"], r["reason"]) for r in rows] == [
        ("p1@example.com", "excluded", "opted_out"),
        ("p2@example.com", "excluded", "quarantined"),
        ("p6@example.com", "excluded_at_send", "denylisted")]
    assert [r["profile_id"] for r in rows] == [ids[1], ids[2], ids[6]]
    only = api.get(f"/deliveries/{did}/exclusions", params={"reason": "opted_out"}).json()
    assert [r["address"] for r in only["items"]] == ["p1@example.com"]

    explained = api.get(f"/deliveries/{did}/explain", params={"profile": ids[1]}).json()
    assert (explained["verdict"], explained["reason"]) == ("excluded", "opted_out")

    # The bounce went to the quarantine; the delivery's actions are in the audit log.
    assert api.get("/quarantine/p3%40example.com").json()["status"] in ("quarantined",
                                                                         "erroneous")
    with engine.connect() as conn:
        actions = conn.execute(sa.select(audit_log.c.action).where(
            audit_log.c.target == f"delivery:{did}", audit_log.c.actor == "apikey:ops")
            .order_by(audit_log.c.id)).scalars().all()
    assert actions == ["delivery.create", "delivery.analyze", "delivery.send"]
    # Once sending has started the delivery cannot be analysed again.
    _problem(api.post(f"/deliveries/{did}/analyze"), 409)
    assert api.post(f"/deliveries/{did}/send").json()["state"] == "done"


def test_pause_and_resume_change_the_state_and_stop_the_sending(engine, settings, sink):
    s = _settings(settings, sink)
    api = Api(engine, s)
    _audience(engine, s, 3)
    did = _create(api)["id"]
    _problem(api.post(f"/deliveries/{did}/send"), 409)  # not analysed
    _problem(api.post(f"/deliveries/{did}/pause"), 409)
    assert api.post(f"/deliveries/{did}/analyze").json()["to_send"] == 3
    _problem(api.post(f"/deliveries/{did}/resume"), 409)  # analysed, not paused
    assert api.post(f"/deliveries/{did}/send").json()["state"] == "sending"

    paused = api.post(f"/deliveries/{did}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["state"] == "paused"
    assert api.post(f"/deliveries/{did}/pause").json()["state"] == "paused"  # no change
    sender = DeliverySender(engine, s, report=lambda text: None)
    assert sender.step() == [] and sink.messages == []

    resumed = api.post(f"/deliveries/{did}/resume")
    assert resumed.json()["state"] == "sending"
    assert api.post(f"/deliveries/{did}/resume").json()["state"] == "sending"
    assert sender.step() == [did]
    assert len(sink.messages) == 3
    assert api.get(f"/deliveries/{did}").json()["state"] == "done"
    _problem(api.post(f"/deliveries/{did}/pause"), 409)
    with engine.connect() as conn:
        actions = conn.execute(sa.select(audit_log.c.action).where(
            audit_log.c.target == f"delivery:{did}").order_by(audit_log.c.id)).scalars().all()
    assert actions == ["delivery.create", "delivery.analyze", "delivery.send", "delivery.pause",
                       "delivery.resume"]


def test_list_deliveries_with_filters_and_cursor(api):
    _audience(api.engine, api.settings, 1)
    made = [_create(api, name=f"d{n}")["id"] for n in range(3)]
    sms = _create(api, name="sms", channel="sms", service=None, audience="all", subject=None,
                  html=None, text="Hallo {{ profile.first_name }} STOP: {{ unsubscribe_url }}")
    assert sms["sms"]["segments"] >= 1 and sms["audience"] == "all"
    api.post(f"/deliveries/{made[0]}/analyze")
    first = api.get("/deliveries", params={"limit": 3}).json()
    assert [d["id"] for d in first["items"]] == [sms["id"], made[2], made[1]]
    rest = api.get("/deliveries", params={"limit": 3, "cursor": first["next_cursor"]}).json()
    assert [d["id"] for d in rest["items"]] == [made[0]] and rest["next_cursor"] is None
    assert [d["id"] for d in api.get("/deliveries", params={"state": "analyzed"}).json()[
        "items"]] == [made[0]]
    assert [d["id"] for d in api.get("/deliveries", params={"channel": "sms"}).json()[
        "items"]] == [sms["id"]]


def test_sender_reports_a_failing_delivery_retries_it_and_sends_the_others(engine, settings,
                                                                           sink):
    unconfigured = _settings(settings)  # no SMTP relay
    api = Api(engine, unconfigured)
    _audience(engine, unconfigured, 2)
    did = _create(api)["id"]
    api.post(f"/deliveries/{did}/analyze")
    assert api.post(f"/deliveries/{did}/send").status_code == 202

    reports: list[str] = []
    sender = DeliverySender(engine, unconfigured, report=reports.append, retry_after=60)
    assert sender.step() == [did]
    assert len(reports) == 1 and "no SMTP relay configured" in reports[0]
    assert "tried again in 60 s" in reports[0]
    assert sender.step() == []  # not due again yet
    assert api.get(f"/deliveries/{did}").json()["state"] == "sending"

    # An SMS delivery without an SMS provider fails each time: the email one still goes.
    with engine.begin() as conn:
        profiles.create(conn, unconfigured, profiles.NewProfile(phone="+4915123456789"), OP)
    sms = _create(api, name="sms", channel="sms", service=None, audience="all", subject=None,
                  html=None, text="Hallo! STOP: {{ unsubscribe_url }}")["id"]
    assert api.post(f"/deliveries/{sms}/analyze").json()["to_send"] == 1
    assert api.post(f"/deliveries/{sms}/send").status_code == 202

    # With a relay configured (and no delay) it goes; the thread runs the step by itself.
    configured = _settings(settings, sink)
    with engine.connect() as conn:
        signer = Signer.for_database(conn, configured)
    background = Background(configured, engine, signer, send_every=0.1,
                            sender=DeliverySender(engine, configured, report=reports.append))
    background.start()
    try:
        deadline = time.monotonic() + 30
        while api.get(f"/deliveries/{did}").json()["state"] != "done":
            assert time.monotonic() < deadline, reports
            time.sleep(0.05)
    finally:
        background.stop()
    assert len(sink.messages) == 2
    assert f"delivery {did}: 2 sent, 0 failed, 0 excluded at send" in reports
    assert any(r.startswith(f"delivery {sms} failed") and "no SMS provider" in r
               for r in reports)
    assert api.get(f"/deliveries/{sms}").json()["state"] == "sending"
    with engine.connect() as conn:
        assert sending.sendable(conn) == [sms]
