"""The operator console over HTTP (TestClient), on SQLite and PostgreSQL: login, logout,
lockout, CSRF, roles, every page for every role, manual opt-out with a note, denylisting the
addresses two profiles share, quarantine filters and bulk release, deliveries with charts."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from consentry.auth import service as auth
from consentry.consent import service as consent
from consentry.delivery import service as deliveries
from consentry.domain import quarantine as qrules
from consentry.domain.addresses import normalize_email
from consentry.domain.channels import Channel
from consentry.domain.ledger import Origin, Source
from consentry.ledger import service as ledger
from consentry.profiles import service as profiles
from consentry.quarantine import service as quarantine
from consentry.store.schema import ledger_events, opt_outs
from consentry.store.types import utcnow
from consentry.web.app import create_app
from consentry.web.console import charts
from consentry.web.console import routes as console_routes
from consentry.web.console.auth import SESSION_COOKIE

PASSWORD = "correct horse battery"
CLI = Origin(source=Source.CLI, actor="test")
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def client(engine: sa.Engine, settings: Any) -> TestClient:
    return TestClient(create_app(settings, engine), follow_redirects=False)


@pytest.fixture(autouse=True)
def no_login_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_routes, "FAILED_LOGIN_DELAY", 0.0)


def operator(engine: sa.Engine, login: str, role: str) -> None:
    with engine.begin() as conn:
        auth.create_operator(conn, login, PASSWORD, role, "test")


def csrf(client: TestClient, path: str = "/console/login") -> str:
    response = client.get(path)
    match = CSRF.search(response.text)
    assert match, (path, response.status_code, response.text[:500])
    return match.group(1)


def sign_in(client: TestClient, login: str, password: str = PASSWORD) -> Any:
    token = csrf(client)
    return client.post("/console/login", data={"login": login, "password": password,
                                               "csrf_token": token, "next": "/console"})


def as_role(client: TestClient, engine: sa.Engine, role: str) -> str:
    """Sign in as a new operator of `role`; the page's CSRF value for the forms."""
    operator(engine, role, role)
    assert sign_in(client, role).status_code == 303
    return csrf(client, "/console")


def add_profile(engine: sa.Engine, settings: Any, **fields: Any) -> int:
    with engine.begin() as conn:
        return profiles.create(conn, settings, profiles.NewProfile(**fields), CLI)


def seed(engine: sa.Engine, settings: Any) -> dict[str, int]:
    """A service with subscribers, an opted-out subscriber, a quarantined and a shared
    address, and an analysed delivery."""
    ids = {}
    with engine.begin() as conn:
        service = consent.create_service(conn, "news", Channel.EMAIL, "News")
    for name in ("ada", "bob", "cy", "dee"):
        ids[name] = add_profile(engine, settings, email=f"{name}@example.com",
                                first_name=name.title())
        with engine.begin() as conn:
            consent.subscribe(conn, ids[name], service, CLI, confirmed=True)
    ids["twin"] = add_profile(engine, settings, email="ada@example.com", first_name="Twin")
    with engine.begin() as conn:
        consent.opt_out(conn, ids["bob"], None, CLI)
        quarantine.set_status(conn, normalize_email("cy@example.com"),
                              qrules.Status.QUARANTINED, "user_unknown", CLI,
                              settings.quarantine)
        ids["delivery"] = deliveries.create(conn, settings, deliveries.NewDelivery(
            name="Spring", channel=Channel.EMAIL, service="news",
            content=deliveries.content_rules.Content(
                subject="Hi", text="Hello {{ profile.first_name }} {{ unsubscribe_url }}")),
            "test")
        deliveries.analyze(conn, settings, ids["delivery"])
    return ids


# --- login, logout, lockout, CSRF ------------------------------------------------------------


def test_login_logout(client, engine):
    operator(engine, "alice", "operator")
    first = client.get("/console/profiles")
    assert first.status_code == 303
    assert first.headers["location"] == "/console/login?next=%2Fconsole%2Fprofiles"
    wrong = sign_in(client, "alice", "wrong password!")
    assert wrong.status_code == 401
    assert "Wrong login or password" in wrong.text
    assert SESSION_COOKIE not in wrong.headers.get("set-cookie", "")
    unknown = sign_in(client, "nobody", "wrong password!")
    assert unknown.status_code == 401 and "Wrong login or password" in unknown.text

    ok = sign_in(client, "alice")
    assert ok.status_code == 303 and ok.headers["location"] == "/console"
    cookie = ok.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
    assert "Path=/console" in cookie and "Secure" not in cookie  # http here; https: Secure
    dashboard = client.get("/console")
    assert dashboard.status_code == 200
    assert "alice" in dashboard.text and "<svg" in dashboard.text
    assert dashboard.headers["cache-control"] == "no-store"
    assert client.get("/console/login").status_code == 303  # signed in already

    out = client.post("/console/logout", data={"csrf_token": csrf(client, "/console")})
    assert out.status_code == 303 and out.headers["location"] == "/console/login"
    assert client.get("/console").status_code == 303
    with engine.connect() as conn:
        actions = [a["action"] for a in auth.audit_page(conn)]
    assert actions[:2] == ["logout", "login"]


def test_login_redirects_only_inside_the_console(client, engine):
    operator(engine, "alice", "operator")
    token = csrf(client)
    response = client.post("/console/login", data={
        "login": "alice", "password": PASSWORD, "csrf_token": token,
        "next": "//evil.example/console"})
    assert response.headers["location"] == "/console"


def test_failed_login_is_slowed_down(client, engine, monkeypatch):
    monkeypatch.setattr(console_routes, "FAILED_LOGIN_DELAY", 0.5)
    operator(engine, "alice", "operator")
    token = csrf(client)
    started = time.monotonic()
    response = client.post("/console/login", data={"login": "alice", "password": "nope nope!",
                                                   "csrf_token": token})
    assert response.status_code == 401
    assert time.monotonic() - started >= 0.5


def test_lockout_after_five_failures(client, engine):
    operator(engine, "alice", "operator")
    for _ in range(auth.FAILURES_BEFORE_LOCK):
        assert sign_in(client, "alice", "wrong password!").status_code == 401
    locked = sign_in(client, "alice")  # the right password, but locked now
    assert locked.status_code == 401
    assert "Wrong login or password" in locked.text  # the same answer: nothing given away
    assert SESSION_COOKIE not in locked.headers.get("set-cookie", "")
    with engine.begin() as conn:  # once the lock has run out, the password works again
        later = utcnow() + auth.LOCK_FOR + timedelta(seconds=1)
        _, principal = auth.login(conn, "alice", PASSWORD, now=later)
    assert principal.name == "alice"


def test_csrf_is_required(client, engine, settings):
    pid = add_profile(engine, settings, email="ada@example.com")
    # The login form too.
    operator(engine, "alice", "operator")
    client.get("/console/login")
    refused = client.post("/console/login", data={"login": "alice", "password": PASSWORD})
    assert refused.status_code == 403 and SESSION_COOKIE not in refused.headers.get(
        "set-cookie", "")
    as_role(client, engine, "operator")
    for data in ({}, {"csrf_token": "x" * 43}):
        response = client.post(f"/console/profiles/{pid}/consent",
                               data={"scope": "all", "action": "opt_out", "note": "n", **data})
        assert response.status_code == 403
        assert "reload the page" in response.text
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(opt_outs)).scalar() == 0


# --- roles and pages ---------------------------------------------------------------------------


def pages(ids: dict[str, int]) -> list[str]:
    return ["/console", "/console/profiles", "/console/profiles?q=ada",
            f"/console/profiles/{ids['ada']}",
            f"/console/profiles/{ids['ada']}?delivery={ids['delivery']}",
            "/console/quarantine", "/console/quarantine?status=quarantined&domain=example.com",
            "/console/quarantine/entry?channel=email&address=cy%40example.com",
            "/console/services", "/console/services/news",
            "/console/services/news?state=subscribed",
            "/console/deliveries", f"/console/deliveries/{ids['delivery']}",
            f"/console/deliveries/{ids['delivery']}?reason=opted_out",
            f"/console/deliveries/{ids['delivery']}/progress"]


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_every_page_renders_for_each_role(client, engine, settings, role):
    ids = seed(engine, settings)
    as_role(client, engine, role)
    for path in pages(ids):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:1000])
        html = response.text
        assert "<h1>" in html or "<h1 " in html, path
        assert "style=" not in html and "<script" not in html, path  # CSP: none of these
        posts = re.findall(r'<form[^>]* method="post" action="([^"]+)"', html)
        if role == "viewer":
            assert posts == ["/console/logout"], (path, posts)
    profile = client.get(f"/console/profiles/{ids['ada']}").text
    assert ("Denylist the shared addresses" in profile) == (role != "viewer")
    writes = ["/console/deliveries/new",
              "/console/quarantine/bulk-release?reason=user_unknown"]
    for path in writes:
        assert client.get(path).status_code == (403 if role == "viewer" else 200), path
    assert client.get("/console/admin").status_code == (200 if role == "admin" else 403)
    dashboard = client.get("/console").text
    assert ('href="/console/admin"' in dashboard) == (role == "admin")


def test_viewer_cannot_post(client, engine, settings):
    ids = seed(engine, settings)
    token = as_role(client, engine, "viewer")
    posts = [(f"/console/profiles/{ids['ada']}/consent",
              {"scope": "all", "action": "opt_out", "note": "no"}),
             (f"/console/profiles/{ids['ada']}/denylist-shared", {}),
             ("/console/quarantine/set", {"channel": "email", "address": "x@example.com",
                                          "status": "denylisted"}),
             ("/console/quarantine/release", {"channel": "email",
                                              "address": "cy@example.com"}),
             ("/console/quarantine/bulk-release", {"reason": "user_unknown"}),
             ("/console/deliveries", {"name": "x"}),
             (f"/console/deliveries/{ids['delivery']}/analyze", {}),
             (f"/console/deliveries/{ids['delivery']}/send", {})]
    for path, data in posts:
        response = client.post(path, data={**data, "csrf_token": token})
        assert response.status_code == 403, path
        assert "may not do this" in response.text
    with engine.connect() as conn:
        assert quarantine.show(conn, normalize_email("cy@example.com"),
                               settings.quarantine)["status"] == "quarantined"
        assert deliveries.get(conn, ids["delivery"])["state"] == "analyzed"


def test_demo_outbox_linked_when_the_app_has_one(engine, settings):
    from consentry.web.outbox import Outbox, add_outbox

    app = create_app(settings, engine)
    client = TestClient(app, follow_redirects=False)
    as_role(client, engine, "viewer")
    assert 'href="/demo/outbox"' not in client.get("/console").text
    add_outbox(app, Outbox())
    assert 'href="/demo/outbox"' in client.get("/console").text


def test_signed_out_post_goes_to_login(client, engine, settings):
    ids = seed(engine, settings)
    response = client.post(f"/console/deliveries/{ids['delivery']}/send", data={})
    assert response.status_code == 303 and response.headers["location"] == "/console/login"


# --- consent ---------------------------------------------------------------------------------


def test_manual_optout_needs_a_note_and_lands_in_the_ledger(client, engine, settings):
    pid = add_profile(engine, settings, email="ada@example.com", first_name="Ada")
    token = as_role(client, engine, "operator")
    missing = client.post(f"/console/profiles/{pid}/consent",
                          data={"scope": "email", "action": "opt_out", "note": "  ",
                                "csrf_token": token})
    assert missing.status_code == 400 and "A note is required" in missing.text
    response = client.post(f"/console/profiles/{pid}/consent",
                           data={"scope": "email", "action": "opt_out",
                                 "note": "asked by phone, ticket 4711", "csrf_token": token},
                           headers={"user-agent": "console-test"})
    assert response.status_code == 303
    assert response.headers["location"] == f"/console/profiles/{pid}?done=opted_out"
    with engine.connect() as conn:
        shown = profiles.show(conn, settings, pid)
        events = ledger.history(conn, pid, [])
    assert shown["channels"]["email"]["opted_out"] and not shown["opted_out"]
    event = events[-1]
    assert (event["kind"], event["source"], event["actor"], event["channel"], event["note"],
            event["user_agent"]) == ("opt_out", "console", "operator:operator", "email",
                                     "asked by phone, ticket 4711", "console-test")
    page = client.get(response.headers["location"]).text
    assert "The change and your note are in the consent ledger" in page
    assert "asked by phone, ticket 4711" in page and "operator:operator" in page
    # Back in, with a note too; a second opt-in changes nothing.
    for expected in ("opted_in", "unchanged"):
        again = client.post(f"/console/profiles/{pid}/consent",
                            data={"scope": "email", "action": "opt_in", "note": "mistake",
                                  "csrf_token": token})
        assert again.headers["location"].endswith(f"done={expected}")
    with engine.connect() as conn:
        kinds = [e["kind"] for e in ledger.history(conn, pid, [])]
    assert kinds == ["opt_out", "opt_in"]


def test_denylist_the_addresses_two_profiles_share(client, engine, settings):
    first = add_profile(engine, settings, email="Shared@Example.com", phone="+4915112345678")
    second = add_profile(engine, settings, email="shared@example.com")
    token = as_role(client, engine, "operator")
    page = client.get(f"/console/profiles/{first}").text
    assert "Profiles sharing an address" in page
    assert f'href="/console/profiles/{second}"' in page
    response = client.post(f"/console/profiles/{first}/denylist-shared",
                           data={"csrf_token": token})
    assert response.status_code == 303
    with engine.connect() as conn:
        email = quarantine.show(conn, normalize_email("shared@example.com"),
                                settings.quarantine)
        phone = profiles.show(conn, settings, first)["addresses"][1]
        events = conn.execute(sa.select(ledger_events).where(
            ledger_events.c.kind == "quarantine")).mappings().all()
    assert (email["status"], email["reason"], email["source"]) == ("denylisted", "manual",
                                                                 "console")
    assert phone["status"] == "valid"  # not shared: untouched
    assert [(e["actor"], e["note"]) for e in events] == [
        ("operator:operator", f"shared by profiles {first}, {second}")]
    assert client.get(f"/console/profiles/{second}").text.count("denylisted") >= 1
    alone = add_profile(engine, settings, email="alone@example.com")
    nothing = client.post(f"/console/profiles/{alone}/denylist-shared",
                          data={"csrf_token": token})
    assert nothing.status_code == 400


# --- quarantine --------------------------------------------------------------------------------


def quarantined(engine: sa.Engine, settings: Any, address: str, reason: str,
                status: qrules.Status = qrules.Status.QUARANTINED, at: Any = None) -> None:
    with engine.begin() as conn:
        quarantine.set_status(conn, normalize_email(address), status, reason, CLI,
                              settings.quarantine, now=at)


def rows_of(html: str) -> list[str]:
    return re.findall(r'<tr><td><a href="/console/quarantine/entry\?[^"]+">([^<]+)</a>', html)


def test_quarantine_filters(client, engine, settings):
    old = utcnow() - timedelta(days=10)
    for name in ("a1", "a2", "b1"):
        quarantined(engine, settings, f"{name}@gmail.com", "user_unknown")
    quarantined(engine, settings, "old@gmail.com", "user_unknown", at=old)
    quarantined(engine, settings, "c1@yahoo.com", "user_unknown")
    quarantined(engine, settings, "full@gmail.com", "mailbox_full")
    quarantined(engine, settings, "deny@gmail.com", "manual", qrules.Status.DENYLISTED)
    as_role(client, engine, "viewer")
    everything = client.get("/console/quarantine").text
    assert len(rows_of(everything)) == 7 and "7 matching entries" in everything
    cases = {
        "domain=gmail.com&reason=user_unknown": {"a1@gmail.com", "a2@gmail.com",
                                                 "b1@gmail.com", "old@gmail.com"},
        "address=a": {"a1@gmail.com", "a2@gmail.com"},
        "status=denylisted": {"deny@gmail.com"},
        "reason=mailbox_full&channel=email": {"full@gmail.com"},
        "channel=sms": set(),
        f"until={(old + timedelta(days=1)).date()}": {"old@gmail.com"},
        f"since={(old + timedelta(days=1)).date()}&domain=gmail.com&reason=user_unknown":
            {"a1@gmail.com", "a2@gmail.com", "b1@gmail.com"},
    }
    for query, expected in cases.items():
        response = client.get(f"/console/quarantine?{query}")
        assert response.status_code == 200
        assert set(rows_of(response.text)) == expected, query
    assert client.get("/console/quarantine?status=bogus").status_code == 400
    assert client.get("/console/quarantine?since=yesterday").status_code == 400


def test_quarantine_add_edit_release(client, engine, settings):
    token = as_role(client, engine, "operator")
    added = client.post("/console/quarantine/set", data={
        "channel": "email", "address": " New@Example.com ", "status": "denylisted",
        "reason": "", "note": "asked us", "csrf_token": token})
    assert added.status_code == 303
    page = client.get(added.headers["location"]).text
    assert "denylisted" in page and "asked us" in page
    edited = client.post("/console/quarantine/set", data={
        "channel": "email", "address": "new@example.com", "status": "allowlisted",
        "reason": "manual", "csrf_token": token})
    assert edited.status_code == 303
    with engine.connect() as conn:
        assert quarantine.show(conn, normalize_email("new@example.com"),
                               settings.quarantine)["status"] == "allowlisted"
    quarantined(engine, settings, "gone@example.com", "user_unknown")
    released = client.post("/console/quarantine/release", data={
        "channel": "email", "address": "gone@example.com", "csrf_token": token})
    assert released.headers["location"].endswith("done=released")
    with engine.connect() as conn:
        assert quarantine.show(conn, normalize_email("gone@example.com"),
                               settings.quarantine)["status"] == "valid"
    bad = client.post("/console/quarantine/set", data={
        "channel": "email", "address": "not an address", "status": "denylisted",
        "csrf_token": token})
    assert bad.status_code == 400 and "invalid email address" in bad.text


def test_bulk_release_preview_matches_what_it_releases(client, engine, settings):
    for name in ("a1", "a2", "a3"):
        quarantined(engine, settings, f"{name}@gmail.com", "user_unknown")
    quarantined(engine, settings, "deny@gmail.com", "user_unknown", qrules.Status.DENYLISTED)
    quarantined(engine, settings, "c1@yahoo.com", "user_unknown")
    quarantined(engine, settings, "full@gmail.com", "mailbox_full")
    quarantined(engine, settings, "seed@gmail.com", "manual", qrules.Status.ALLOWLISTED)
    token = as_role(client, engine, "operator")
    listing = client.get("/console/quarantine?domain=gmail.com&reason=user_unknown").text
    assert 'href="/console/quarantine/bulk-release?reason=user_unknown&amp;domain=gmail.com"' \
        in listing
    preview = client.get("/console/quarantine/bulk-release?reason=user_unknown"
                         "&domain=gmail.com")
    assert preview.status_code == 200
    count = int(re.search(r'id="preview-count">(\d+)<', preview.text).group(1))
    assert count == 4
    with engine.connect() as conn:  # the preview changed nothing
        assert quarantine.show(conn, normalize_email("a1@gmail.com"),
                               settings.quarantine)["status"] == "quarantined"
    empty = client.get("/console/quarantine/bulk-release").text
    assert "Choose at least one" in empty
    done = client.post("/console/quarantine/bulk-release", data={
        "reason": "user_unknown", "domain": "gmail.com", "channel": "", "since": "",
        "until": "", "note": "gmail outage", "csrf_token": token})
    assert done.status_code == 303
    assert done.headers["location"] == f"/console/quarantine?done=bulk&n={count}"
    assert f"{count} addresses released" in client.get(done.headers["location"]).text
    with engine.connect() as conn:
        status = {a: quarantine.show(conn, normalize_email(a), settings.quarantine)["status"]
                  for a in ("a1@gmail.com", "deny@gmail.com", "c1@yahoo.com",
                            "full@gmail.com", "seed@gmail.com")}
        notes = conn.execute(sa.select(ledger_events.c.note, ledger_events.c.source).where(
            ledger_events.c.actor == "operator:operator")).all()
    assert status == {"a1@gmail.com": "valid", "deny@gmail.com": "valid",
                      "c1@yahoo.com": "quarantined", "full@gmail.com": "quarantined",
                      "seed@gmail.com": "allowlisted"}
    assert len(notes) == count and set(notes) == {("gmail outage", "console")}


# --- services and deliveries ---------------------------------------------------------------


def test_service_page_charts(client, engine, settings):
    ids = seed(engine, settings)
    with engine.begin() as conn:
        consent.unsubscribe(conn, ids["dee"], consent.get_service(conn, "news"), CLI)
    as_role(client, engine, "viewer")
    page = client.get("/console/services/news").text
    assert page.count("<svg") == 2
    assert "Subscriptions and unsubscribes over time" in page
    assert "<title>unsubscribed" in page  # a point of the unsubscribed series
    listing = client.get("/console/services/news?state=unsubscribed").text
    assert 'href="/console/profiles/' + str(ids["dee"]) + '"' in listing
    assert 'href="/console/profiles/' + str(ids["ada"]) + '"' not in listing


def test_delivery_create_analyse_and_send(client, engine, settings):
    ids = seed(engine, settings)
    token = as_role(client, engine, "operator")
    form = {"name": "Summer", "channel": "email", "kind": "marketing", "audience": "service",
            "service": "news", "subject": "Hello", "text": "No unsubscribe link", "html": "",
            "limit": "", "csrf_token": token}
    refused = client.post("/console/deliveries", data=form)
    assert refused.status_code == 400 and "unsubscribe link" in refused.text
    assert 'value="Summer"' in refused.text  # the form keeps what was typed
    form["text"] = "Hello {{ profile.first_name }}, {{ unsubscribe_url }}"
    created = client.post("/console/deliveries", data=form)
    assert created.status_code == 303
    delivery_id = int(created.headers["location"].rsplit("/", 1)[1])
    draft = client.get(created.headers["location"]).text
    assert "Analyse" in draft and "Exclusion causes" not in draft
    analysed = client.post(f"/console/deliveries/{delivery_id}/analyze",
                           data={"csrf_token": token})
    assert analysed.status_code == 303
    page = client.get(f"/console/deliveries/{delivery_id}").text
    assert "<svg" in page and "Exclusion causes" in page
    # ada and her twin share an address: one is a duplicate; bob opted out; cy quarantined.
    with engine.connect() as conn:
        summary = deliveries.summary(conn, delivery_id)
    assert summary["excluded"] == {"opted_out": 1, "quarantined": 1}
    assert re.search(r"<title>opted_out: 1</title>", page)
    assert re.search(r"<title>quarantined: 1</title>", page)
    assert f'href="/console/profiles/{ids["bob"]}?delivery={delivery_id}"' in page
    explained = client.get(f"/console/profiles/{ids['bob']}?delivery={delivery_id}").text
    assert "opted_out: <strong>failed</strong>" in explained
    assert "Verdict: <strong>excluded</strong> (opted_out)" in explained

    sent = client.post(f"/console/deliveries/{delivery_id}/send", data={"csrf_token": token})
    assert sent.status_code == 303
    assert sent.headers["location"] == f"/console/deliveries/{delivery_id}/progress"
    progress = client.get(sent.headers["location"]).text
    assert '<meta http-equiv="refresh" content="2">' in progress
    assert "Waiting for a worker" in progress and "<svg" in progress  # no SMTP relay here
    report = client.get(f"/console/deliveries/{delivery_id}").text
    assert "Failures by reason" in report and "alert threshold" in report


# --- charts ----------------------------------------------------------------------------------


def test_bar_chart_is_an_accessible_picture():
    svg = str(charts.bar_chart([("opted_out", 3), ("quarantined <x>", 12)],
                               title="Exclusion causes"))
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert 'role="img"' in svg and "<title id=" in svg and "<desc id=" in svg
    assert "<title>quarantined &lt;x&gt;: 12</title>" in svg  # escaped
    assert "style=" not in svg and "<script" not in svg
    assert svg.count("<rect") == 2
    assert "nothing" in str(charts.bar_chart([], title="t", empty="nothing"))


def test_line_chart_with_threshold():
    svg = str(charts.line_chart(["05-01", "05-02", "05-03"],
                                [charts.Series("bounce rate", [0.01, 0.07, 0.02])],
                                title="Bounce rate", value_format=charts.percent,
                                thresholds=[charts.Threshold(0.05, "alert")], area=True))
    assert "stroke-dasharray" in svg and "alert 5%" in svg
    assert "<title>bounce rate, 05-02: 7%</title>" in svg
    assert "<polygon" in svg and "<polyline" in svg
    assert charts.percent(0.001) == "0.1%" and charts.percent(0.003) == "0.3%"
    assert charts.nice_ticks(7) == [0, 2, 4, 6, 8]
