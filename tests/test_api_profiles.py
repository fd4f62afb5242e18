"""REST API: profiles, consent, subscriptions both ways, services, ledger, export, explain and
erasure, on SQLite and PostgreSQL; problem+json, pagination, idempotency keys and roles."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from consentry.auth.service import create_api_key
from consentry.delivery import service as deliveries
from consentry.delivery.content import Content
from consentry.domain.channels import Channel
from consentry.ledger import service as ledger
from consentry.web.app import create_app

PROBLEM = "application/problem+json"
MAIL = Content(subject="Hello", text="Hi\nUnsubscribe: {{ unsubscribe_url }}\n")


class Api:
    """A TestClient with one API key per role."""

    def __init__(self, engine, settings) -> None:
        self.client = TestClient(create_app(settings, engine))
        self.keys = {}
        with engine.begin() as conn:
            for role in ("admin", "operator", "viewer"):
                self.keys[role] = create_api_key(conn, f"{role}-key", role, "test")[1]

    def __call__(self, method: str, path: str, role: str = "operator", **kw):
        headers = {"Authorization": f"Bearer {self.keys[role]}", **kw.pop("headers", {})}
        return self.client.request(method, "/api/v1" + path, headers=headers, **kw)

    def profile(self, **fields) -> dict:
        r = self("POST", "/profiles", json=fields)
        assert r.status_code == 201, r.text
        return r.json()


@pytest.fixture
def api(engine, settings) -> Api:
    return Api(engine, settings)


def _problem(r, status: int, field: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status and body["title"]
    if field is not None:
        assert body["errors"][0]["field"] == field, body
    return body


# --- profiles ---------------------------------------------------------------------------------

def test_create_read_update_profile(api):
    created = api.profile(email="Ada@Example.com", phone="0151 23456789", first_name=" Ada ",
                          last_name="Lovelace", locale="en_gb", external_id="crm-1",
                          attributes={"tier": "gold"},
                          push_tokens=[{"token": "tok-12345678", "app_id": "app",
                                        "platform": "iOS"}])
    pid = created["id"]
    assert created["email"] == "Ada@example.com"
    assert created["phone"] == "+4915123456789"
    assert created["first_name"] == "Ada" and created["locale"] == "en-GB"
    assert created["push_tokens"] == [{"token": "tok-12345678", "app_id": "app",
                                       "platform": "ios"}]
    assert created["opted_out"] is False
    assert {a["channel"] for a in created["addresses"]} == {"email", "sms", "push"}
    assert all(a["status"] == "valid" and a["reachable"] for a in created["addresses"])

    got = api("GET", f"/profiles/{pid}", role="viewer")
    assert got.status_code == 200 and got.json() == created

    r = api("PATCH", f"/profiles/{pid}", json={"first_name": "Augusta", "phone": None,
                                                "attributes": {"tier": "silver"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["first_name"] == "Augusta" and body["last_name"] == "Lovelace"
    assert body["phone"] is None and body["attributes"] == {"tier": "silver"}
    assert body["email"] == "Ada@example.com"  # left out: unchanged
    assert {a["channel"] for a in body["addresses"]} == {"email", "push"}


def test_not_found_and_validation_problems(api):
    _problem(api("GET", "/profiles/999999"), 404)
    _problem(api("PATCH", "/profiles/999999", json={"first_name": "x"}), 404)
    _problem(api("DELETE", "/profiles/999999"), 404)
    _problem(api("POST", "/profiles/999999/optout", json={}), 404)
    _problem(api("GET", "/profiles/abc"), 422, "profile_id")
    _problem(api("POST", "/profiles", json={"email": "not an address"}), 400, "email")
    _problem(api("POST", "/profiles", json={"phone": "12"}), 400, "phone")
    _problem(api("POST", "/profiles", json={"locale": "???"}), 400, "locale")
    _problem(api("POST", "/profiles", json={"email": 5}), 422, "email")
    _problem(api("POST", "/profiles", json={"opted_out": True}), 422, "opted_out")
    _problem(api("POST", "/profiles", json={"push_tokens": [{"token": "short"}]}), 422,
             "push_tokens.0.token")
    _problem(api("POST", "/profiles", json={"email": "a\x00b@example.com"}), 422, "email")
    pid = api.profile(email="x@example.com")["id"]
    _problem(api("PATCH", f"/profiles/{pid}", json={"email": "broken@"}), 400, "email")
    _problem(api("POST", f"/profiles/{pid}/optout", json={"channel": "fax"}), 422, "channel")
    assert api("GET", f"/profiles/{pid}").json()["email"] == "x@example.com"


def test_external_id_conflict_is_409(api):
    api.profile(external_id="crm-7")
    other = api.profile(email="b@example.com")["id"]
    _problem(api("POST", "/profiles", json={"external_id": "crm-7"}), 409, "external_id")
    _problem(api("PATCH", f"/profiles/{other}", json={"external_id": "crm-7"}), 409,
             "external_id")


def test_search_by_name_address_and_external_id(api):
    ada = api.profile(email="ada@example.com", first_name="Ada", last_name="Lovelace",
                      external_id="crm-ada")["id"]
    bob = api.profile(email="bob@example.org", phone="+4915123456789", first_name="Bob",
                      external_id="crm-bob")["id"]
    api.profile(first_name="Carol", external_id="x_%")

    def ids(**params) -> list[int]:
        r = api("GET", "/profiles", role="viewer", params=params)
        assert r.status_code == 200, r.text
        return [p["id"] for p in r.json()["items"]]

    assert len(ids()) == 3
    assert ids(q="ada lovelace") == [ada]
    assert ids(q="LOVE") == [ada]
    assert ids(q="example.org") == [bob]
    assert ids(q="23456") == [bob]
    assert ids(q="crm-") == [ada, bob]
    assert ids(q="_%") == [3]  # LIKE wildcards are matched literally
    assert ids(email="ADA@example.com") == [ada]
    assert ids(phone="0151 23456789") == [bob]
    assert ids(external_id="crm-bob") == [bob]
    assert ids(external_id="nobody") == []
    _problem(api("GET", "/profiles", params={"email": "nope"}), 400, "email")
    api("POST", f"/profiles/{bob}/optout", json={"channel": "sms"})
    assert ids(opted_out="sms") == [bob]
    assert ids(opted_out="all") == []
    _problem(api("GET", "/profiles", params={"opted_out": "fax"}), 422, "opted_out")


def test_cursor_pagination(api):
    created = [api.profile(first_name=f"P{i}")["id"] for i in range(7)]
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        body = api("GET", "/profiles", role="viewer", params=params).json()
        assert len(body["items"]) <= 3
        seen += [p["id"] for p in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == created and pages == 3
    _problem(api("GET", "/profiles", params={"cursor": "!!not-ours"}), 400, "cursor")
    _problem(api("GET", "/profiles", params={"cursor": "WyJ4Il0"}), 400, "cursor")
    _problem(api("GET", "/profiles", params={"limit": 0}), 422, "limit")


def test_idempotency_key_replays_and_refuses_another_body(api):
    key = {"Idempotency-Key": "create-ada-1"}
    first = api("POST", "/profiles", json={"email": "ada@example.com"}, headers=key)
    again = api("POST", "/profiles", json={"email": "ada@example.com"}, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    listed = api("GET", "/profiles", params={"email": "ada@example.com"}).json()["items"]
    assert len(listed) == 1
    _problem(api("POST", "/profiles", json={"email": "eve@example.com"}, headers=key), 422,
             "Idempotency-Key")
    # Keys are per API key: another key may use the same string for its own request.
    other = api("POST", "/profiles", role="admin", json={"email": "eve@example.com"},
                headers=key)
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    # Consent changes too: the second opt-out is a replay, not a no-op "changed: false".
    pid = first.json()["id"]
    out = {"Idempotency-Key": "optout-1"}
    a = api("POST", f"/profiles/{pid}/optout", json={"note": "asked"}, headers=out)
    b = api("POST", f"/profiles/{pid}/optout", json={"note": "asked"}, headers=out)
    assert a.json() == b.json() == {"profile": pid, "scope": "all", "opted_out": True,
                                    "changed": True}


def test_roles(api):
    pid = api.profile(email="ada@example.com")["id"]
    for path in (f"/profiles/{pid}", "/profiles", "/services", f"/profiles/{pid}/ledger",
                 f"/profiles/{pid}/export", f"/profiles/{pid}/subscriptions"):
        assert api("GET", path, role="viewer").status_code == 200, path
    for method, path, body in (
            ("POST", "/profiles", {"email": "x@example.com"}),
            ("PATCH", f"/profiles/{pid}", {"first_name": "x"}),
            ("DELETE", f"/profiles/{pid}", None),
            ("POST", f"/profiles/{pid}/optout", {}),
            ("POST", f"/profiles/{pid}/optin", {}),
            ("POST", f"/profiles/{pid}/subscriptions", {"service": "news"}),
            ("DELETE", f"/profiles/{pid}/subscriptions/news", None),
            ("POST", "/services", {"slug": "news", "channel": "email", "label": "News"}),
            ("POST", "/services/news/subscriptions", {"profile_id": pid}),
            ("DELETE", f"/services/news/subscriptions/{pid}", None)):
        _problem(api(method, path, role="viewer", json=body), 403)
    r = api.client.get(f"/api/v1/profiles/{pid}")
    _problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    _problem(api.client.get(f"/api/v1/profiles/{pid}",
                            headers={"Authorization": "Bearer csk_nope_nope"}), 401)
    assert api("GET", f"/profiles/{pid}").json()["opted_out"] is False


# --- consent ----------------------------------------------------------------------------------

def test_optout_optin_land_in_the_ledger_with_the_key_as_actor(api):
    pid = api.profile(email="ada@example.com", phone="+4915123456789")["id"]
    r = api("POST", f"/profiles/{pid}/optout", json={"channel": "email", "note": "by phone"},
            headers={"User-Agent": "crm-sync/1.0"})
    assert r.status_code == 200
    assert r.json() == {"profile": pid, "scope": "email", "opted_out": True, "changed": True}
    again = api("POST", f"/profiles/{pid}/optout", json={"channel": "email"})
    assert again.json()["changed"] is False
    shown = api("GET", f"/profiles/{pid}").json()
    assert shown["channels"]["email"]["opted_out"] is True
    assert shown["channels"]["email"]["detail"]["actor"] == "apikey:operator-key"
    assert shown["channels"]["email"]["detail"]["source"] == "api"
    assert shown["channels"]["sms"]["opted_out"] is False and shown["opted_out"] is False
    email = next(a for a in shown["addresses"] if a["channel"] == "email")
    assert email["reachable"] is False and email["excluded_by"] == "channel_opted_out"

    assert api("POST", f"/profiles/{pid}/optout").json()["scope"] == "all"  # no body: global
    assert api("GET", f"/profiles/{pid}").json()["opted_out"] is True
    r = api("POST", f"/profiles/{pid}/optin", role="admin", json={"channel": None,
                                                                    "note": "re-consented"})
    assert r.json() == {"profile": pid, "scope": "all", "opted_out": False, "changed": True}
    assert api("POST", f"/profiles/{pid}/optin", json={"channel": "sms"}).json()[
        "changed"] is False

    events = api("GET", f"/profiles/{pid}/ledger", role="viewer").json()["items"]
    assert [(e["kind"], e["channel"]) for e in events] == [
        ("opt_out", "email"), ("opt_out", "all"), ("opt_in", "all")]
    assert [e["actor"] for e in events] == ["apikey:operator-key"] * 2 + ["apikey:admin-key"]
    assert {e["source"] for e in events} == {"api"}
    assert events[0]["note"] == "by phone" and events[0]["user_agent"] == "crm-sync/1.0"
    assert events[0]["ip"] == "testclient"
    assert events[2]["note"] == "re-consented"


def test_ledger_pagination_and_filters(api):
    pid = api.profile(email="ada@example.com")["id"]
    for _ in range(3):
        api("POST", f"/profiles/{pid}/optout", json={"channel": "email"})
        api("POST", f"/profiles/{pid}/optin", json={"channel": "email"})
    api("POST", f"/profiles/{pid}/optout", json={"channel": "sms"})
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = api("GET", f"/profiles/{pid}/ledger", params=params).json()
        seen += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 7 and len({e["id"] for e in seen}) == 7
    assert [e["at"] for e in seen] == sorted(e["at"] for e in seen)

    def kinds(**params) -> list[str]:
        return [(e["kind"], e["channel"]) for e in
                api("GET", f"/profiles/{pid}/ledger", params=params).json()["items"]]

    assert kinds(kind="opt_in") == [("opt_in", "email")] * 3
    assert kinds(channel="sms") == [("opt_out", "sms")]
    assert kinds(source="cli") == []
    _problem(api("GET", f"/profiles/{pid}/ledger", params={"cursor": "WyJ4IiwgMV0"}), 400,
             "cursor")


# --- services and subscriptions ---------------------------------------------------------------

def test_services(api):
    r = api("POST", "/services", json={"slug": "news", "channel": "email", "label": "News",
                                       "validity_days": 365})
    assert r.status_code == 201, r.text
    news = r.json()
    assert news == {"id": news["id"], "slug": "news", "label": "News", "channel": "email",
                    "double_opt_in": False, "validity_days": 365, "public": True,
                    "subscriptions": {"pending": 0, "subscribed": 0, "unsubscribed": 0,
                                      "expired": 0}}
    api("POST", "/services", json={"slug": "alerts", "channel": "sms", "label": "Alerts",
                                   "double_opt_in": True})
    assert api("GET", "/services/news", role="viewer").json() == news
    assert api("GET", f"/services/{news['id']}").json() == news
    _problem(api("GET", "/services/nope"), 404)
    _problem(api("GET", "/services/Bad Slug"), 422, "service")
    listed = api("GET", "/services").json()
    assert [s["slug"] for s in listed["items"]] == ["alerts", "news"]
    page1 = api("GET", "/services", params={"limit": 1}).json()
    page2 = api("GET", "/services", params={"limit": 1, "cursor": page1["next_cursor"]}).json()
    assert [s["slug"] for s in page1["items"] + page2["items"]] == ["alerts", "news"]
    assert page2["next_cursor"] is None
    assert [s["slug"] for s in api("GET", "/services", params={"channel": "sms"}).json()[
        "items"]] == ["alerts"]
    _problem(api("POST", "/services", json={"slug": "news", "channel": "email",
                                            "label": "Again"}), 409, "slug")
    _problem(api("POST", "/services", json={"slug": "Bad Slug", "channel": "email",
                                            "label": "x"}), 400, "slug")
    _problem(api("POST", "/services", json={"slug": "x", "channel": "email",
                                            "label": " "}), 400, "label")
    _problem(api("POST", "/services", json={"slug": "x", "channel": "fax", "label": "x"}),
             422, "channel")


def test_subscriptions_both_ways(api, engine):
    api("POST", "/services", json={"slug": "news", "channel": "email", "label": "News"})
    api("POST", "/services", json={"slug": "club", "channel": "email", "label": "Club",
                                   "double_opt_in": True})
    ada = api.profile(email="ada@example.com")["id"]
    bob = api.profile(email="bob@example.com")["id"]

    r = api("POST", f"/profiles/{ada}/subscriptions", json={"service": "news", "note": "web"})
    assert r.status_code == 200, r.text
    assert r.json() == {"profile": ada, "service": "news", "state": "subscribed",
                        "changed": True, "needs_confirmation": False,
                        "confirmation_sent": None}
    r = api("POST", "/services/news/subscriptions", json={"profile_id": bob})
    assert r.json()["state"] == "subscribed"
    # Double opt-in: pending, and the confirmation is attempted (no relay here: not sent).
    r = api("POST", f"/profiles/{ada}/subscriptions", json={"service": "club"})
    assert r.json()["state"] == "pending" and r.json()["needs_confirmation"] is True
    assert r.json()["confirmation_sent"] is False
    r = api("POST", "/services/club/subscriptions", json={"profile_id": bob,
                                                          "confirmed": True})
    assert r.json()["state"] == "subscribed"

    mine = api("GET", f"/profiles/{ada}/subscriptions", role="viewer").json()
    assert [(s["service"], s["state"]) for s in mine["items"]] == [
        ("club", "pending"), ("news", "subscribed")]
    only = api("GET", f"/profiles/{ada}/subscriptions", params={"status": "pending"}).json()
    assert [s["service"] for s in only["items"]] == ["club"]
    subs = api("GET", "/services/news/subscriptions", role="viewer").json()
    assert [(s["profile_id"], s["state"]) for s in subs["items"]] == [
        (ada, "subscribed"), (bob, "subscribed")]
    first = api("GET", "/services/news/subscriptions", params={"limit": 1}).json()
    rest = api("GET", "/services/news/subscriptions",
               params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert [s["profile_id"] for s in first["items"] + rest["items"]] == [ada, bob]

    r = api("DELETE", f"/profiles/{ada}/subscriptions/news")
    assert r.status_code == 204 and r.content == b""
    r = api("DELETE", f"/services/news/subscriptions/{bob}")
    assert r.status_code == 204
    assert api("DELETE", f"/services/news/subscriptions/{bob}").status_code == 204  # no-op
    subs = api("GET", "/services/news/subscriptions", params={"status": "unsubscribed"})
    assert [s["profile_id"] for s in subs.json()["items"]] == [ada, bob]
    assert api("GET", "/services/news").json()["subscriptions"]["unsubscribed"] == 2
    assert api("GET", "/services/news/subscriptions",
               params={"status": "subscribed"}).json()["items"] == []

    _problem(api("POST", f"/profiles/{ada}/subscriptions", json={"service": "nope"}), 404,
             "service")
    _problem(api("POST", "/services/news/subscriptions", json={"profile_id": 999999}), 404)
    _problem(api("DELETE", "/profiles/999999/subscriptions/news"), 404)
    _problem(api("DELETE", f"/profiles/{ada}/subscriptions/nope"), 404)

    events = api("GET", f"/profiles/{ada}/ledger", params={"kind": "subscription"}).json()
    assert [(e["service"], e["new_state"], e["actor"], e["source"])
            for e in events["items"]] == [
        ("news", "subscribed", "apikey:operator-key", "api"),
        ("club", "pending", "apikey:operator-key", "api"),
        ("news", "unsubscribed", "apikey:operator-key", "api")]
    assert events["items"][0]["note"] == "web"
    with engine.connect() as conn:
        assert ledger.verify(conn).ok


# --- privacy, explain -------------------------------------------------------------------------

def test_export_and_erase(api, engine):
    pid = api.profile(email="ada@example.com", first_name="Ada")["id"]
    api("POST", f"/profiles/{pid}/optout", json={"channel": "email", "note": "gdpr"})
    export = api("GET", f"/profiles/{pid}/export", role="viewer")
    assert export.status_code == 200
    data = export.json()
    assert data["profile"]["first_name"] == "Ada"
    assert [e["kind"] for e in data["ledger"]] == ["opt_out"]
    assert data["exported_at"]

    r = api("DELETE", f"/profiles/{pid}", params={"note": "Art. 17 request"})
    assert r.status_code == 204 and r.content == b""
    _problem(api("GET", f"/profiles/{pid}"), 404)
    _problem(api("GET", f"/profiles/{pid}/ledger"), 404)
    _problem(api("GET", f"/profiles/{pid}/export"), 404)
    _problem(api("DELETE", f"/profiles/{pid}"), 404)
    with engine.connect() as conn:
        assert ledger.verify(conn).ok


@pytest.mark.parametrize("via", ["create", "patch"])
def test_an_erased_address_comes_back_suppressed(api, via):
    old = api.profile(email="ada@example.com")["id"]
    api("POST", f"/profiles/{old}/optout", json={"channel": "email"})
    assert api("DELETE", f"/profiles/{old}").status_code == 204
    if via == "create":
        new = api.profile(email="ADA@example.com")
    else:
        pid = api.profile(first_name="Ada")["id"]
        r = api("PATCH", f"/profiles/{pid}", json={"email": "ADA@example.com"})
        assert r.status_code == 200, r.text
        new = r.json()
    assert new["channels"]["email"]["opted_out"] is True
    events = api("GET", f"/profiles/{new['id']}/ledger").json()["items"]
    assert [(e["kind"], e["actor"], e["source"]) for e in events] == [
        ("suppression", "apikey:operator-key", "api")]


def test_explain(api, engine, settings):
    api("POST", "/services", json={"slug": "news", "channel": "email", "label": "News"})
    ada = api.profile(email="ada@example.com")["id"]
    bob = api.profile(email="bob@example.com")["id"]
    api("POST", f"/profiles/{ada}/subscriptions", json={"service": "news"})
    api("POST", f"/profiles/{bob}/optout", json={"channel": "email"})
    with engine.begin() as conn:
        did = deliveries.create(conn, settings, deliveries.NewDelivery(
            name="June", channel=Channel.EMAIL, service="news", content=MAIL), None)
    r = api("GET", f"/profiles/{ada}/explain/{did}", role="viewer")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["verdict"] == "send" and body["reason"] is None
    assert body["address"] == "ada@example.com" and body["analysed"] is None
    assert body["rules"][0] == {"rule": "address_missing", "passed": True}
    body = api("GET", f"/profiles/{bob}/explain/{did}").json()
    assert body["verdict"] == "excluded" and body["reason"] == "channel_opted_out"
    _problem(api("GET", f"/profiles/{ada}/explain/999999"), 404)
    _problem(api("GET", f"/profiles/999999/explain/{did}"), 404)
