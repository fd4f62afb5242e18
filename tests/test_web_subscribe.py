"""The subscription form /s/{service} and double opt-in /c/{token}, on SQLite and PostgreSQL:
consent evidence in the ledger, the confirmation message through a real SMTP server, bad and
expired links, CSRF, honeypot, rate limits, languages, and the purge of stale requests."""

from __future__ import annotations

import email
import re
import time
from dataclasses import replace
from datetime import timedelta
from email import policy
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from consentry import maintenance
from consentry.consent import confirmation
from consentry.consent import service as consent
from consentry.domain import quarantine as qrules
from consentry.domain.addresses import normalize_email
from consentry.domain.channels import Channel
from consentry.domain.ledger import Origin
from consentry.ledger import service as ledger
from consentry.profiles import service as profiles
from consentry.settings import SendingSettings, Settings, WebSettings
from consentry.store.schema import ledger_events, subscriptions
from consentry.store.schema import profiles as profiles_table
from consentry.store.types import utcnow
from consentry.web.app import create_app
from consentry.web.security import CSRF_COOKIE, CSRF_FIELD, HONEYPOT_FIELD
from helpers import cli
from http_sink import Reply, http_sink
from smtp_sink import SmtpSink

OP = Origin(source="cli", actor="os:tester")
UA = "Mozilla/5.0 (X11; Linux x86_64) TestBrowser/1.0"


@pytest.fixture
def sink():
    with SmtpSink() as s:
        yield s


def _settings(settings: Settings, sink: SmtpSink | None = None, **web) -> Settings:
    return replace(settings, smtp_url=sink.url if sink else None,
                   base_url="https://news.example.org",
                   sending=SendingSettings(rate=0, per_domain_rate=0, concurrency=1),
                   web=replace(WebSettings(), **web))


def _services(engine) -> None:
    with engine.begin() as conn:
        consent.create_service(conn, "news", Channel.EMAIL, "Weekly News")
        consent.create_service(conn, "letter", Channel.EMAIL, "Letter", double_opt_in=True)
        consent.create_service(conn, "alerts", Channel.SMS, "Alerts", double_opt_in=True)
        consent.create_service(conn, "internal", Channel.EMAIL, "Internal", public=False)


def _client(settings: Settings, engine) -> TestClient:
    return TestClient(create_app(settings, engine), headers={"user-agent": UA})


def _counts(engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return tuple(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                     for t in (profiles_table, subscriptions, ledger_events))


def _form(client: TestClient, slug: str, lang: str | None = None) -> str:
    """Open the form (as a browser would, getting the CSRF cookie) and return its token."""
    shown = client.get(f"/s/{slug}" + (f"?lang={lang}" if lang else ""))
    assert shown.status_code == 200
    return client.cookies[CSRF_COOKIE]


def _post(client: TestClient, slug: str, address: str, *, lang: str | None = None,
          consent_given: bool = True, **extra: str):
    data = {CSRF_FIELD: _form(client, slug, lang), "address": address,
            "wording": "subscribe-v1", **extra}
    if consent_given:
        data["consent"] = "yes"
    return client.post(f"/s/{slug}" + (f"?lang={lang}" if lang else ""), data=data)


def _state(engine, address: str, slug: str) -> str | None:
    with engine.connect() as conn:
        pid = profiles.resolve(conn, address)
        return next((s["state"] for s in consent.subscriptions_of(conn, pid)
                     if s["service"] == slug), None)


def _events(engine, slug: str) -> list:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(ledger_events).where(
            ledger_events.c.service == slug).order_by(ledger_events.c.id)).mappings())


def _message_text(received) -> tuple[str, str]:
    msg = email.message_from_bytes(received.data, policy=policy.default)
    return str(msg["subject"]), msg.get_body(("plain",)).get_content()


def _link(text: str) -> str:
    match = re.search(r"https://news\.example\.org(/c/[A-Za-z0-9_.\-]+)", text)
    assert match, text
    return match.group(1)


def test_form_in_both_languages_and_get_changes_nothing(engine, settings):
    _services(engine)
    client = _client(_settings(settings), engine)
    before = _counts(engine)
    english = client.get("/s/news")
    assert english.status_code == 200
    assert "Subscribe to Weekly News" in english.text
    assert 'type="email" autocomplete="email"' in english.text
    assert "Yes, I want to receive Weekly News." in english.text
    assert f'name="{CSRF_FIELD}" value="{client.cookies[CSRF_COOKIE]}"' in english.text
    assert f'name="{HONEYPOT_FIELD}"' in english.text and 'class="hp"' in english.text
    german = client.get("/s/news?lang=de")
    assert '<html lang="de">' in german.text and "Weekly News abonnieren" in german.text
    assert "Ja, ich möchte Weekly News erhalten." in german.text
    by_header = client.get("/s/alerts", headers={"accept-language": "de-DE,de;q=0.9,en;q=0.5"})
    assert "Mobilnummer" in by_header.text and 'type="tel" autocomplete="tel"' in by_header.text
    assert client.get("/s/internal").status_code == 404  # not public
    assert client.get("/s/nope?lang=de").status_code == 404
    assert "Seite nicht gefunden" in client.get("/s/nope?lang=de").text
    assert _counts(engine) == before


def test_single_opt_in_records_the_consent_evidence(engine, settings):
    _services(engine)
    client = _client(_settings(settings), engine)
    answer = _post(client, "news", " Anna@Example.COM ", lang="de", first_name="Anna",
                   last_name="Muster")
    assert answer.status_code == 200
    assert "Sie haben abonniert" in answer.text
    assert _state(engine, "anna@example.com", "news") == "subscribed"
    with engine.connect() as conn:
        profile = profiles.get(conn, profiles.resolve(conn, "anna@example.com"))
    assert (profile["email"], profile["first_name"], profile["last_name"], profile["locale"]) \
        == ("Anna@example.com", "Anna", "Muster", "de")
    [event] = _events(engine, "news")
    assert (event["source"], event["actor"], event["old_state"], event["new_state"]) == (
        "landing_page", "public", None, "subscribed")
    assert (event["ip"], event["user_agent"], event["wording"]) == ("testclient", UA,
                                                                    "subscribe-v1")
    assert event["evidence"]["page"] == "/s/news" and event["evidence"]["lang"] == "de"
    assert event["evidence"]["text"].startswith("Ja, ich möchte Weekly News erhalten.")
    assert "anna" not in str(answer.url).lower()  # no personal data in the URL
    # The same address again: the same answer, no new profile, no new event.
    assert "Sie haben abonniert" in _post(client, "news", "anna@example.com", lang="de").text
    assert _counts(engine)[0] == 1 and len(_events(engine, "news")) == 1
    with engine.connect() as conn:
        assert ledger.verify(conn).ok


def test_double_opt_in_through_a_real_smtp_server(engine, settings, sink):
    _services(engine)
    s = _settings(settings, sink)
    client = _client(s, engine)
    answer = _post(client, "letter", "bea@example.com", lang="de")
    assert answer.status_code == 200 and "Bitte sehen Sie in Ihr Postfach" in answer.text
    assert _state(engine, "bea@example.com", "letter") == "pending"
    [received] = sink.messages
    assert received.rcpt_tos == ["bea@example.com"]
    subject, text = _message_text(received)
    assert subject == "Bitte bestätigen Sie Ihr Abonnement von Letter"
    assert "72 Stunden gültig" in text and "ignorieren Sie diese Nachricht" in text
    msg = email.message_from_bytes(received.data, policy=policy.default)
    assert msg["List-Unsubscribe"] is None  # transactional, not a campaign
    link = _link(text)

    browser = _client(s, engine)  # the link opened elsewhere (a mail client's browser)
    before = _counts(engine)
    shown = browser.get(link)
    assert shown.status_code == 200 and "Abonnement bestätigen" in shown.text  # profile locale
    assert shown.text.count("<button") == 1
    assert shown.headers["cache-control"] == "no-store"
    assert shown.headers["referrer-policy"] == "no-referrer"
    browser.get(link)  # a link scanner following it again
    assert _counts(engine) == before and _state(engine, "bea@example.com", "letter") == "pending"

    assert browser.post(link, data={CSRF_FIELD: "forged"}).status_code == 403
    assert _counts(engine) == before
    done = browser.post(link, data={CSRF_FIELD: browser.cookies[CSRF_COOKIE]})
    assert done.status_code == 200 and "Sie haben abonniert" in done.text
    assert not done.history  # the final page itself, no redirect
    assert _state(engine, "bea@example.com", "letter") == "subscribed"
    pending, confirmed = _events(engine, "letter")
    assert (pending["new_state"], pending["wording"]) == ("pending", "subscribe-v1")
    assert (confirmed["old_state"], confirmed["new_state"]) == ("pending", "subscribed")
    assert confirmed["actor"] == f"profile:{confirmed['profile_id']}"
    assert (confirmed["wording"], confirmed["ip"], confirmed["user_agent"]) == (
        "confirm-v1", "testclient", UA)
    assert confirmed["evidence"]["page"] == "/c"
    # Confirming twice changes nothing and is answered kindly.
    again = browser.post(link, data={CSRF_FIELD: browser.cookies[CSRF_COOKIE]})
    assert again.status_code == 200 and len(_events(engine, "letter")) == 2
    assert browser.get(link).status_code == 200
    # A subscribed address asking again: the same answer, and no message.
    assert "Check your inbox" in _post(client, "letter", "bea@example.com", lang="en").text
    assert len(sink.messages) == 1


def test_forged_altered_and_expired_links(engine, settings, sink, monkeypatch):
    _services(engine)
    s = _settings(settings, sink)
    client = _client(s, engine)
    with monkeypatch.context() as m:  # a link issued 73 hours ago
        m.setattr("itsdangerous.timed.TimestampSigner.get_timestamp",
                  lambda self: int(time.time()) - 73 * 3600)
        _post(client, "letter", "cem@example.com")
    old_link = _link(_message_text(sink.messages[0])[1])
    before = _counts(engine)

    forged = client.get("/c/not-a-token?lang=de")
    assert forged.status_code == 400 and "Dieser Link ist ungültig" in forged.text
    assert client.post("/c/not-a-token",
                       data={CSRF_FIELD: client.cookies[CSRF_COOKIE]}).status_code == 400
    token = old_link.removeprefix("/c/")
    altered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    assert client.get(f"/c/{altered}").status_code == 400
    head, _, rest = token.partition(".")
    other = client.get(f"/c/{head[:-1]}{'x' if head[-1] != 'x' else 'y'}.{rest}")
    assert other.status_code == 400

    expired = client.get(old_link)
    assert expired.status_code == 410 and "This link has expired" in expired.text
    assert f'action="{old_link}/resend?lang=en"' in expired.text
    assert client.post(old_link, data={CSRF_FIELD: client.cookies[CSRF_COOKIE]}
                       ).status_code == 410
    assert _counts(engine) == before and _state(engine, "cem@example.com", "letter") == "pending"

    assert client.post(f"{old_link}/resend", data={CSRF_FIELD: "x"}).status_code == 403
    assert len(sink.messages) == 1
    resent = client.post(f"{old_link}/resend?lang=en",
                         data={CSRF_FIELD: client.cookies[CSRF_COOKIE]})
    assert resent.status_code == 200 and "Check your inbox" in resent.text
    assert len(sink.messages) == 2
    subject, text = _message_text(sink.messages[1])
    assert subject == "Please confirm your subscription to Letter"
    new_link = _link(text)
    assert new_link != old_link and client.get(new_link).status_code == 200
    assert client.post(new_link, data={CSRF_FIELD: client.cookies[CSRF_COOKIE]}
                       ).status_code == 200
    assert _state(engine, "cem@example.com", "letter") == "subscribed"
    # The expired link of a confirmed request: nothing left to resend.
    assert client.get(old_link).status_code == 200
    # A link to a request withdrawn since must not subscribe again.
    with engine.begin() as conn:
        pid = profiles.resolve(conn, "cem@example.com")
        consent.unsubscribe(conn, pid, consent.get_service(conn, "letter"), OP)
    assert client.get(new_link).status_code == 410
    assert client.post(new_link, data={CSRF_FIELD: client.cookies[CSRF_COOKIE]}
                       ).status_code == 410
    assert _state(engine, "cem@example.com", "letter") == "unsubscribed"


def test_csrf_and_honeypot_store_and_send_nothing(engine, settings, sink):
    _services(engine)
    client = _client(_settings(settings, sink), engine)
    before = _counts(engine)
    _form(client, "letter")
    refused = client.post("/s/letter?lang=de", data={
        "address": "dan@example.com", "consent": "yes", "wording": "subscribe-v1"})
    assert refused.status_code == 403 and "Bitte versuchen Sie es erneut" in refused.text
    stranger = _client(_settings(settings, sink), engine)  # a form posted from another site
    assert stranger.post("/s/letter", data={
        CSRF_FIELD: client.cookies[CSRF_COOKIE], "address": "dan@example.com",
        "consent": "yes", "wording": "subscribe-v1"}).status_code == 403
    bot = _post(client, "letter", "dan@example.com", **{HONEYPOT_FIELD: "http://spam.test"})
    assert bot.status_code == 200 and "Check your inbox" in bot.text
    assert _counts(engine) == before and sink.messages == []


def test_invalid_address_and_missing_consent_are_shown_next_to_the_field(engine, settings):
    _services(engine)
    client = _client(_settings(settings), engine)
    before = _counts(engine)
    bad = _post(client, "news", "not-an-address", lang="de", first_name="Eva")
    assert bad.status_code == 400
    assert re.search(r'<label for="address">E-Mail-Adresse</label>\s*'
                     r'<p class="error" id="address-error">Bitte geben Sie eine gültige '
                     r'E-Mail-Adresse ein.</p>\s*<input id="address" name="address" '
                     r'value="not-an-address"', bad.text)
    assert 'aria-invalid="true" aria-describedby="address-error"' in bad.text
    assert 'value="Eva"' in bad.text
    unticked = _post(client, "news", "eva@example.com", consent_given=False)
    assert unticked.status_code == 400
    assert 'id="consent-error">Please tick the box to give your consent.' in unticked.text
    assert 'value="eva@example.com"' in unticked.text
    phone = _post(client, "alerts", "12", lang="en")
    assert phone.status_code == 400 and "Please enter a valid mobile number." in phone.text
    assert _counts(engine) == before


def test_rate_limits_per_address_and_per_ip(engine, settings):
    _services(engine)
    client = _client(_settings(settings, form_limit_per_address=2, form_limit_per_ip=5),
                     engine)
    assert [_post(client, "news", "FAY@example.com").status_code for _ in range(3)] == [
        200, 200, 429]
    assert "Too many requests" in _post(client, "news", "fay@example.com").text  # same key
    assert _post(client, "news", "gus@example.com").status_code == 200
    # Five allowed from one IP in the window (the 429s above counted too).
    limited = _post(client, "news", "hal@example.com", lang="de")
    assert limited.status_code == 429 and "Zu viele Anfragen" in limited.text
    assert _counts(engine)[0] == 2


def test_resubscribe_after_unsubscribe(engine, settings):
    _services(engine)
    client = _client(_settings(settings), engine)
    assert _post(client, "news", "ida@example.com").status_code == 200
    with engine.begin() as conn:
        pid = profiles.resolve(conn, "ida@example.com")
        consent.unsubscribe(conn, pid, consent.get_service(conn, "news"), OP)
    assert _state(engine, "ida@example.com", "news") == "unsubscribed"
    assert "You are subscribed" in _post(client, "news", "ida@example.com").text
    assert _state(engine, "ida@example.com", "news") == "subscribed"
    assert [(e["old_state"], e["new_state"]) for e in _events(engine, "news")] == [
        (None, "subscribed"), ("subscribed", "unsubscribed"), ("unsubscribed", "subscribed")]


def test_existing_profile_is_found_and_left_unchanged(engine, settings, sink):
    _services(engine)
    with engine.begin() as conn:
        older = profiles.create(conn, settings, profiles.NewProfile(
            email="Jo@Example.com", first_name="Jo", locale="en"), OP)
        profiles.create(conn, settings, profiles.NewProfile(email="jo@example.com"), OP)
    client = _client(_settings(settings, sink), engine)
    _post(client, "letter", "JO@example.com", lang="de", first_name="Mallory")
    with engine.connect() as conn:
        assert profiles.get(conn, older)["first_name"] == "Jo"
        assert consent.subscriptions_of(conn, older)[0]["state"] == "pending"
    [received] = sink.messages
    assert received.rcpt_tos == ["Jo@example.com"]  # the address as kept for sending
    subject, text = _message_text(received)
    assert subject == "Please confirm your subscription to Letter"  # the profile's language
    assert "Mallory" not in text
    assert "Confirm your subscription" in _client(settings, engine).get(_link(text)).text


def test_quarantined_or_denylisted_address_gets_the_same_answer_and_no_message(
        engine, settings, sink):
    _services(engine)
    with engine.begin() as conn:
        from consentry.quarantine import service as quarantine
        quarantine.set_status(conn, normalize_email("kai@example.com"),
                              qrules.Status.DENYLISTED, None, OP, settings.quarantine)
    client = _client(_settings(settings, sink), engine)
    answer = _post(client, "letter", "kai@example.com")
    assert answer.status_code == 200 and "Check your inbox" in answer.text
    assert sink.messages == []


def test_sms_double_opt_in_through_the_http_connector(engine, settings):
    _services(engine)
    with http_sink(lambda request: Reply(200, {"id": "sms-1"})) as sms:
        s = replace(_settings(settings), sms_url=sms.url + "/send", sms_from="Consentry",
                    sms_token="t0k")
        client = _client(s, engine)
        answer = _post(client, "alerts", "0151 23456789", lang="en")
        assert answer.status_code == 200 and "Check your messages" in answer.text
        [request] = sms.requests
    assert request.json()["to"] == "+4915123456789"
    text = request.json()["text"]
    assert text.startswith("Please confirm your subscription to Alerts: https://news.example")
    assert client.post(_link(text), data={CSRF_FIELD: client.cookies[CSRF_COOKIE]}
                       ).status_code == 200
    assert _state(engine, "+4915123456789", "alerts") == "subscribed"


def test_stale_pending_subscriptions_are_purged(engine, settings):
    _services(engine)
    s = _settings(settings, pending_purge_days=30)
    now = utcnow()
    with engine.begin() as conn:
        letter = consent.get_service(conn, "letter")
        ids = [profiles.create(conn, s, profiles.NewProfile(email=f"p{i}@example.com"), OP)
               for i in range(3)]
        consent.subscribe(conn, ids[0], letter, OP, now=now - timedelta(days=31))
        consent.subscribe(conn, ids[1], letter, OP, now=now - timedelta(days=29))
        consent.subscribe(conn, ids[2], letter, OP, now=now - timedelta(days=40))
        consent.subscribe(conn, ids[2], letter, OP, confirmed=True, now=now - timedelta(days=39))
    with engine.begin() as conn:
        assert confirmation.purge_pending(conn, s, now=now) == 1
    with engine.connect() as conn:
        assert [consent.subscriptions_of(conn, i) for i in ids[:1]] == [[]]
        assert consent.subscriptions_of(conn, ids[1])[0]["state"] == "pending"
        assert consent.subscriptions_of(conn, ids[2])[0]["state"] == "subscribed"
    purged = [e for e in _events(engine, "letter") if e["new_state"] == "expired"]
    assert [(e["profile_id"], e["old_state"], e["source"]) for e in purged] == [
        (ids[0], "pending", "expiry")]
    # Later, the second one's time is up too; the periodic maintenance purges it.
    with engine.begin() as conn:
        assert confirmation.purge_pending(conn, s, now=now + timedelta(days=2)) == 1
        assert confirmation.purge_pending(conn, s, now=now + timedelta(days=2)) == 0
    with engine.begin() as conn:
        consent.subscribe(conn, ids[0], letter, OP, now=now - timedelta(days=45))
    assert maintenance.run(engine, s) == (1, 0)
    # Subscribing again after a purge starts a new request.
    with engine.begin() as conn:
        assert consent.subscribe(conn, ids[0], letter, OP).state.value == "pending"


def test_cli_subscribe_sends_the_confirmation(engine, db_url, sink, tmp_path, monkeypatch):
    for var in ("CONSENTRY_SMTP_URL", "CONSENTRY_BASE_URL", "CONSENTRY_SECRET_KEYS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    Path("consentry.toml").write_text(f'smtp_url = "{sink.url}"\n'
                                      'base_url = "https://news.example.org"\n'
                                      "[sending]\nrate = 0\nper_domain_rate = 0\n")
    assert cli(db_url, "services", "create", "letter", "--channel", "email", "--label",
               "Letter", "--double-opt-in").exit_code == 0
    assert cli(db_url, "profiles", "add", "--email", "lea@example.com",
               "--locale", "de").exit_code == 0
    out = cli(db_url, "subscribe", "lea@example.com", "letter", "--json")
    assert out.exit_code == 0, out.stderr
    assert out.json()["state"] == "pending" and out.json()["confirmation_sent"] is True
    [received] = sink.messages
    subject, text = _message_text(received)
    assert subject == "Bitte bestätigen Sie Ihr Abonnement von Letter"  # the profile's locale
    settings = Settings(database_url=db_url, base_url="https://news.example.org")
    client = _client(settings, engine)
    link = _link(text)
    assert client.get(link).status_code == 200
    assert client.post(link, data={CSRF_FIELD: client.cookies[CSRF_COOKIE]}).status_code == 200
    shown = cli(db_url, "profiles", "show", "lea@example.com", "--json").json()
    assert [(s["service"], s["state"]) for s in shown["subscriptions"]] == [
        ("letter", "subscribed")]
    # --confirmed skips the message.
    assert cli(db_url, "services", "create", "more", "--channel", "email", "--label", "More",
               "--double-opt-in").exit_code == 0
    confirmed = cli(db_url, "subscribe", "lea@example.com", "more", "--confirmed", "--json")
    assert confirmed.json()["state"] == "subscribed" and "confirmation_sent" not in \
        confirmed.json()
    assert len(sink.messages) == 1


def test_cli_subscribe_without_a_relay_keeps_the_request_and_warns(db_url, tmp_path,
                                                                  monkeypatch):
    monkeypatch.delenv("CONSENTRY_SMTP_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    cli(db_url, "services", "create", "letter", "--channel", "email", "--label", "Letter",
        "--double-opt-in")
    cli(db_url, "profiles", "add", "--email", "max@example.com")
    out = cli(db_url, "subscribe", "max@example.com", "letter", "--json")
    assert out.exit_code == 0
    assert out.json()["state"] == "pending" and out.json()["confirmation_sent"] is False
    assert "no SMTP relay configured" in out.stderr
