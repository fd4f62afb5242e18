"""The unsubscribe page /u/{token} and RFC 8058 one-click, on SQLite and PostgreSQL: GET changes
nothing, every token failure gets its page and changes nothing, each choice is applied and
recorded in the ledger with its evidence, the denylist choice covers other profiles holding the
address, CSRF, languages and headers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from babel.messages.extract import extract_from_file
from fastapi.testclient import TestClient

from consentry.consent import service as consent
from consentry.domain.channels import Channel
from consentry.domain.ledger import Origin
from consentry.ledger import service as ledger
from consentry.profiles import service as profiles
from consentry.store.schema import ledger_events, opt_outs, quarantine, subscriptions
from consentry.tokens import Signer
from consentry.web import i18n, unsubscribe
from consentry.web.app import create_app
from consentry.web.security import CSRF_COOKIE, CSRF_FIELD

OP = Origin(source="cli", actor="os:tester")
UA = "Mozilla/5.0 (Unsubscribe test)"
DELIVERY = 42


@pytest.fixture
def world(engine, settings):
    """A newsletter, profile `a` subscribed to it (email + phone), and the app."""
    with engine.begin() as conn:
        news = consent.create_service(conn, "news", Channel.EMAIL, "Monthly News")
        a = profiles.create(conn, settings, profiles.NewProfile(
            email="Anna.Berg@Example.com", phone="+4915112345678", first_name="Anna"), OP)
        consent.subscribe(conn, a, news, OP, confirmed=True)
    app = create_app(settings, engine)
    return app, a


def signer_of(app) -> Signer:
    return app.state.consentry.signer


def token(app, profile_id: int, service: str | None = "news", channel: str = "email",
          delivery: int | None = DELIVERY) -> str:
    return signer_of(app).unsubscribe_token(profile_id, delivery, service, channel)


def snapshot(engine) -> dict:
    """Everything a consent change could touch."""
    with engine.connect() as conn:
        return {
            "opt_outs": sorted(conn.execute(sa.select(opt_outs.c.profile_id,
                                                      opt_outs.c.scope)).all()),
            "subscriptions": sorted(conn.execute(sa.select(
                subscriptions.c.profile_id, subscriptions.c.service_id,
                subscriptions.c.state)).all()),
            "quarantine": sorted(conn.execute(sa.select(quarantine.c.address_key,
                                                        quarantine.c.status)).all()),
            "ledger_events": conn.execute(sa.select(sa.func.count()).select_from(
                ledger_events)).scalar_one(),
        }


def events(engine, source: str | None = None) -> list[dict]:
    query = sa.select(ledger_events).order_by(ledger_events.c.id)
    if source:
        query = query.where(ledger_events.c.source == source)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def evidence(event: dict) -> dict:
    import json

    value = event["evidence"]
    return json.loads(value) if isinstance(value, str) else value


def sub_state(engine, profile_id: int) -> str:
    with engine.connect() as conn:
        return next(s["state"] for s in consent.subscriptions_of(conn, profile_id)
                    if s["service"] == "news")


def form_client(app, url: str) -> tuple[TestClient, str]:
    """A browser that has shown the page: it holds the CSRF cookie."""
    client = TestClient(app, headers={"user-agent": UA})
    shown = client.get(url)
    assert shown.status_code == 200
    return client, client.cookies[CSRF_COOKIE]


# --- GET --------------------------------------------------------------------------------------


def test_get_shows_the_three_choices_and_changes_nothing(engine, world):
    app, a = world
    before = snapshot(engine)
    client = TestClient(app)
    for _ in range(3):  # a link scanner following the link, again and again
        page = client.get(f"/u/{token(app, a)}")
        assert page.status_code == 200
        head = client.head(f"/u/{token(app, a)}")
        assert head.status_code in (200, 405)
    assert snapshot(engine) == before
    html = page.text
    assert "A***@example.com" in html
    assert "Anna.Berg" not in html and "anna.berg" not in html  # masked, never in full
    assert "Monthly News" in html and "You are subscribed to" in html
    for value in ("service", "all", "address"):
        assert re.search(rf'<input type="radio" id="choice-{value}" name="choice" '
                         rf'value="{value}"', html)
        assert f'<label for="choice-{value}">' in html
    assert "<fieldset>" in html and "<legend>" in html
    assert f'name="{CSRF_FIELD}"' in html
    assert "<script" not in html
    assert f'action="/u/{token(app, a)}?lang=en"' in html
    # The page offers the preference center of the same profile.
    assert f'href="/p/{signer_of(app).preferences_token(a)}"' in html


def test_private_page_headers_on_every_answer(engine, world):
    app, a = world
    client, csrf = form_client(app, f"/u/{token(app, a)}")
    answers = [client.get(f"/u/{token(app, a)}"), client.get("/u/forged"),
               client.post(f"/u/{token(app, a)}", data={"choice": "all", CSRF_FIELD: csrf}),
               TestClient(app).post(f"/u/{token(app, a)}",
                                    data={"List-Unsubscribe": "One-Click"}),
               client.post("/u/forged", data={"List-Unsubscribe": "One-Click"})]
    for answer in answers:
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]


def test_page_without_service_offers_the_channel_and_sms_masks_the_number(engine, world):
    app, a = world
    html = TestClient(app).get(f"/u/{token(app, a, None, 'sms', None)}").text
    assert "Stop our text messages" in html
    assert 'value="service"' not in html
    assert "+49***78" in html and "12345678" not in html


# --- token failures ---------------------------------------------------------------------------


def _bad_tokens(app, a) -> dict[str, str]:
    good = token(app, a)
    payload, _, signature = good.rpartition(".")
    other = Signer(["some-other-key"]).unsubscribe_token(a, DELIVERY, "news", "email")
    # Same signature, payload naming another profile: altered.
    import base64
    import json

    forged_payload = base64.urlsafe_b64encode(json.dumps(
        [a + 1, DELIVERY, "news", "email"], separators=(",", ":")).encode()).decode().rstrip("=")
    # A character in the middle: the last one carries padding bits that base64 ignores.
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    return {"forged": "WzEsMiwibmV3cyIsImVtYWlsIl0.not-a-signature",
            "altered-signature": f"{payload}.{flipped}",
            "altered-payload": f"{forged_payload}.{signature}",
            "other-key": other, "truncated": good[:-5], "garbage": "not.a.token",
            "wrong-kind": signer_of(app).preferences_token(a)}


@pytest.mark.parametrize("method", ["get", "form", "one-click-urlencoded",
                                    "one-click-multipart"])
def test_every_token_failure_gets_400_and_changes_nothing(engine, world, method):
    app, a = world
    client, csrf = form_client(app, f"/u/{token(app, a)}")
    before = snapshot(engine)
    for name, bad in _bad_tokens(app, a).items():
        url = f"/u/{bad}"
        if method == "get":
            answer = client.get(url)
        elif method == "form":
            answer = client.post(url, data={"choice": "all", CSRF_FIELD: csrf})
        elif method == "one-click-urlencoded":
            answer = TestClient(app).post(url, data={"List-Unsubscribe": "One-Click"})
        else:
            answer = TestClient(app).post(url, files={"List-Unsubscribe": (None, "One-Click")})
        assert answer.status_code in (400, 404), name
        if answer.status_code == 400:
            assert "This link is not valid" in answer.text, name
        if method.startswith("one-click"):
            assert "set-cookie" not in answer.headers
    assert snapshot(engine) == before
    assert sub_state(engine, a) == "subscribed"


def test_link_of_a_profile_that_no_longer_exists_gets_410(engine, world):
    app, a = world
    gone = token(app, a + 1000)
    client, csrf = form_client(app, f"/u/{token(app, a)}")
    before = snapshot(engine)
    assert client.get(f"/u/{gone}").status_code == 410
    assert client.post(f"/u/{gone}", data={"choice": "all", CSRF_FIELD: csrf}).status_code == 410
    answer = TestClient(app).post(f"/u/{gone}", data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 410 and "no longer valid" in answer.text
    assert snapshot(engine) == before


# --- RFC 8058 one-click -----------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_one_click_leaves_the_service_without_cookies_or_redirect(engine, world, encoding):
    app, a = world
    provider = TestClient(app, headers={"user-agent": "GoogleOneClick/1.0"})
    url = f"/u/{token(app, a)}"
    if encoding == "urlencoded":
        answer = provider.post(url, content=b"List-Unsubscribe=One-Click", headers={
            "content-type": "application/x-www-form-urlencoded"}, follow_redirects=False)
    else:
        answer = provider.post(url, files={"List-Unsubscribe": (None, "One-Click")},
                               follow_redirects=False)
        assert answer.request.headers["content-type"].startswith("multipart/form-data")
    assert "cookie" not in answer.request.headers
    assert answer.status_code == 200
    assert "location" not in answer.headers
    assert "set-cookie" not in answer.headers  # no cookie asked for, none given
    assert "Monthly News" in answer.text
    assert sub_state(engine, a) == "unsubscribed"
    with engine.connect() as conn:
        assert consent.optouts(conn, a).scopes == frozenset()  # only the service
    [event] = events(engine, "one_click")
    assert (event["kind"], event["service"], event["old_state"], event["new_state"]) == (
        "subscription", "news", "subscribed", "unsubscribed")
    assert event["profile_id"] == a and event["actor"] == f"profile:{a}"
    assert event["ip"] == "testclient" and event["user_agent"] == "GoogleOneClick/1.0"
    assert event["wording"] == unsubscribe.ONE_CLICK_WORDING
    assert evidence(event) == {"page": "/u", "lang": "en", "delivery": DELIVERY,
                               "choice": "service"}
    # Again (providers retry): 200, nothing more recorded.
    again = provider.post(url, data={"List-Unsubscribe": "One-Click"}, follow_redirects=False)
    assert again.status_code == 200 and "nothing" in again.text
    assert len(events(engine, "one_click")) == 1
    with engine.connect() as conn:
        assert ledger.verify(conn).ok


def test_one_click_without_service_opts_out_of_the_channel(engine, world):
    app, a = world
    answer = TestClient(app).post(f"/u/{token(app, a, None, 'email', None)}",
                                  data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    with engine.connect() as conn:
        assert consent.optouts(conn, a).scopes == frozenset({"email"})
    assert sub_state(engine, a) == "subscribed"  # the subscription stays; the channel is off
    [event] = events(engine, "one_click")
    assert (event["kind"], event["channel"], event["new_state"]) == ("opt_out", "email",
                                                                     "opted_out")


def test_one_click_with_a_deleted_service_falls_back_to_the_channel(engine, world):
    app, a = world
    answer = TestClient(app).post(f"/u/{token(app, a, 'gone-service')}",
                                  data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    with engine.connect() as conn:
        assert consent.optouts(conn, a).scopes == frozenset({"email"})


def test_one_click_ignores_a_cookie_but_any_other_body_needs_csrf(engine, world):
    app, a = world
    before = snapshot(engine)
    # A form POST without the one-click field and without CSRF: refused.
    assert TestClient(app).post(f"/u/{token(app, a)}", data={"choice": "service"}
                                ).status_code == 403
    assert TestClient(app).post(f"/u/{token(app, a)}", data={"List-Unsubscribe": "yes"}
                                ).status_code == 403
    assert TestClient(app).post(f"/u/{token(app, a)}").status_code == 403
    assert snapshot(engine) == before


def test_one_click_fast_path_answers_with_the_security_headers(engine, world):
    """The urlencoded one-click is answered before the framework's routing
    (web/one_click.py); its answer carries the same headers as every page."""
    app, a = world
    answer = TestClient(app).post(f"/u/{token(app, a)}", content=b"List-Unsubscribe=One-Click",
                                  headers={"content-type": "application/x-www-form-urlencoded",
                                           "accept-language": "de"})
    assert answer.status_code == 200 and '<html lang="de">' in answer.text
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["cache-control"] == "no-store"
    assert sub_state(engine, a) == "unsubscribed"
    forged = TestClient(app).post("/u/forged.token", content=b"List-Unsubscribe=One-Click",
                                  headers={"content-type": "application/x-www-form-urlencoded"})
    assert forged.status_code == 400 and "not valid" in forged.text


# --- the form's three choices -----------------------------------------------------------------


@pytest.mark.parametrize("choice", ["service", "all", "address", "channel"])
def test_each_choice_is_applied_and_recorded_with_its_evidence(engine, world, choice):
    app, a = world
    url = f"/u/{token(app, a, None if choice == 'channel' else 'news')}"
    client, csrf = form_client(app, url)
    answer = client.post(url, data={"choice": choice, CSRF_FIELD: csrf},
                         follow_redirects=False)
    assert answer.status_code == 200
    assert "<h1>Done</h1>" in answer.text
    [event] = events(engine, "landing_page")
    with engine.connect() as conn:
        scopes = consent.optouts(conn, a).scopes
        shown = profiles.show(conn, app.state.consentry.settings, a)
    email_status = next(x["status"] for x in shown["addresses"] if x["channel"] == "email")
    if choice == "service":
        assert "You have left “Monthly News”" in answer.text
        assert sub_state(engine, a) == "unsubscribed" and scopes == frozenset()
        assert (event["kind"], event["service"]) == ("subscription", "news")
    elif choice == "channel":
        assert "We will send you no more emails." in answer.text
        assert scopes == frozenset({"email"}) and sub_state(engine, a) == "subscribed"
        assert (event["kind"], event["channel"]) == ("opt_out", "email")
    elif choice == "all":
        assert "We will send you nothing more, by any channel." in answer.text
        assert scopes == frozenset({"all"}) and sub_state(engine, a) == "subscribed"
        assert (event["kind"], event["channel"]) == ("opt_out", "all")
    else:
        assert "A***@example.com is now blocked" in answer.text
        assert scopes == frozenset() and email_status == "denylisted"
        assert (event["kind"], event["address"], event["new_state"]) == (
            "quarantine", "anna.berg@example.com", "denylisted(unsubscribe)")
    if choice != "address":
        assert email_status == "valid"
        assert event["profile_id"] == a
    assert event["actor"] == f"profile:{a}"
    assert event["ip"] == "testclient" and event["user_agent"] == UA
    assert event["wording"] == unsubscribe.PAGE_WORDING
    assert evidence(event) == {"page": "/u", "lang": "en", "delivery": DELIVERY,
                               "choice": choice}
    # The same choice again: "nothing has changed", nothing recorded.
    again = client.post(url, data={"choice": choice, CSRF_FIELD: csrf})
    assert again.status_code == 200 and "Nothing has changed" in again.text
    assert len(events(engine, "landing_page")) == 1
    with engine.connect() as conn:
        assert ledger.verify(conn).ok


def test_denylist_makes_another_profile_with_the_address_unreachable(engine, settings, world):
    app, a = world
    with engine.begin() as conn:  # the seed's two-profiles case: same person, two profiles
        b = profiles.create(conn, settings, profiles.NewProfile(
            email="anna.berg@example.com", first_name="Anna (old)"), OP)
        consent.subscribe(conn, b, consent.get_service(conn, "news"), OP)
    url = f"/u/{token(app, a)}"
    client, csrf = form_client(app, url)
    assert client.post(url, data={"choice": "address", CSRF_FIELD: csrf}).status_code == 200
    with engine.connect() as conn:
        other = profiles.show(conn, settings, b)
    [address] = other["addresses"]
    assert (address["status"], address["reachable"], address["excluded_by"]) == (
        "denylisted", False, "denylisted")
    # b's own link now says the address is blocked.
    html = TestClient(app).get(f"/u/{token(app, b)}").text
    assert "is blocked: nothing is sent to it" in html


def test_choice_not_offered_is_refused(engine, world):
    app, a = world
    url = f"/u/{token(app, a, None)}"  # no service: "service" is not offered
    client, csrf = form_client(app, url)
    before = snapshot(engine)
    for choice in ("service", "", "everything"):
        answer = client.post(url, data={"choice": choice, CSRF_FIELD: csrf})
        assert answer.status_code == 400
        assert "Please choose one of the options" in answer.text
    assert client.post(url, data={CSRF_FIELD: csrf}).status_code == 400
    assert snapshot(engine) == before


def test_already_in_effect_is_shown(engine, world):
    app, a = world
    with engine.begin() as conn:
        consent.opt_out(conn, a, None, OP)
    html = TestClient(app).get(f"/u/{token(app, a)}").text
    assert "You have already asked us to stop every message." in html


# --- CSRF -------------------------------------------------------------------------------------


def test_csrf_missing_or_wrong_gets_403_and_changes_nothing(engine, world):
    app, a = world
    url = f"/u/{token(app, a)}"
    client, csrf = form_client(app, url)
    before = snapshot(engine)
    assert client.post(url, data={"choice": "all"}).status_code == 403
    wrong = client.post(url, data={"choice": "all", CSRF_FIELD: "x" * 43})
    assert wrong.status_code == 403 and "Please try again" in wrong.text
    stranger = TestClient(app)  # another site posting the value without the cookie
    assert stranger.post(url, data={"choice": "all", CSRF_FIELD: csrf}).status_code == 403
    assert snapshot(engine) == before


# --- languages --------------------------------------------------------------------------------


def test_german_by_query_by_profile_locale_and_for_the_confirmation(engine, settings, world):
    app, a = world
    by_query = TestClient(app).get(f"/u/{token(app, a)}?lang=de")
    assert '<html lang="de">' in by_query.text and "Was möchten Sie abbestellen?" in by_query.text
    with engine.begin() as conn:
        g = profiles.create(conn, settings, profiles.NewProfile(
            email="greta@example.de", locale="de-DE"), OP)
        consent.subscribe(conn, g, consent.get_service(conn, "news"), OP)
    url = f"/u/{token(app, g)}"
    client = TestClient(app, headers={"accept-language": "en-US,en;q=0.9"})
    shown = client.get(url)
    assert '<html lang="de">' in shown.text  # the profile's locale wins over Accept-Language
    assert "„Monthly News“ abbestellen" in shown.text
    assert "Nichts mehr an g***@example.de senden" in shown.text
    done = client.post(url + "?lang=de", data={"choice": "service",
                                               CSRF_FIELD: client.cookies[CSRF_COOKIE]})
    assert "Sie haben „Monthly News“ abbestellt" in done.text
    assert '<html lang="de">' in done.text
    assert evidence(events(engine, "landing_page")[0])["lang"] == "de"
    # Errors too.
    assert "Dieser Link ist ungültig" in client.get("/u/forged?lang=de").text
    refused = client.post(url + "?lang=de", data={"choice": "all"})
    assert refused.status_code == 403 and "Bitte versuchen Sie es erneut" in refused.text
    one_click = TestClient(app, headers={"accept-language": "de"}).post(
        f"/u/{token(app, a)}", data={"List-Unsubscribe": "One-Click"})
    assert "Sie haben „Monthly News“ abbestellt" in one_click.text


WEB = Path(unsubscribe.__file__).parent


def used_messages() -> set[str]:
    """Every message the unsubscribe and opt-out pages show, from their templates and code."""
    found: set[str] = set()
    for template in WEB.joinpath("templates").glob("*.html"):
        if template.name.startswith(("unsubscribe", "optout")):
            found |= {m for _, m, _, _ in extract_from_file(
                "jinja2", template, keywords={"_": None},
                options={"extensions": "jinja2.ext.i18n"})}
    for module in ("unsubscribe.py", "optout.py"):
        found |= {m for _, m, _, _ in extract_from_file(
            "python", WEB / module, keywords={"N_": None, "gettext": (2,)})}
    return found


def test_every_message_of_these_pages_has_a_german_translation():
    messages = used_messages()
    assert len(messages) > 50
    german = i18n.translations("de")
    missing = sorted(m for m in messages if german.gettext(m) == m)
    assert missing == []
