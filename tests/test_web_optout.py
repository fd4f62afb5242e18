"""Opt-out by address, /optout, on SQLite and PostgreSQL: known and unknown addresses get the
same answer, byte for byte, in the same time; the link arrives at a real SMTP server (aiosmtpd
on loopback) and works; honeypot, CSRF, rate limits, blocked addresses, shared addresses, SMS."""

from __future__ import annotations

import email
import re
import time
from dataclasses import replace
from email import policy

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from consentry.consent import service as consent
from consentry.delivery.transport import Outcome
from consentry.domain import quarantine as qrules
from consentry.domain.addresses import normalize_email
from consentry.domain.channels import Channel
from consentry.domain.ledger import Origin
from consentry.profiles import service as profiles
from consentry.quarantine import service as quarantine
from consentry.settings import WebSettings
from consentry.store.schema import ledger_events
from consentry.web import optout
from consentry.web.app import create_app
from consentry.web.security import CSRF_COOKIE, CSRF_FIELD, HONEYPOT_FIELD
from http_sink import Reply, http_sink
from smtp_sink import SmtpSink

OP = Origin(source="cli", actor="os:tester")
BASE = "https://news.example.org"


@pytest.fixture
def sink():
    with SmtpSink() as s:
        yield s


def make_app(engine, settings, sink, **web):
    s = replace(settings, smtp_url=sink.url, base_url=BASE,
                web=WebSettings(**{"form_limit_per_ip": 100, "form_limit_per_address": 100,
                                   **web}))
    with engine.begin() as conn:
        news = consent.create_service(conn, "news", Channel.EMAIL, "Monthly News")
        pid = profiles.create(conn, s, profiles.NewProfile(email="Known@example.com"), OP)
        consent.subscribe(conn, pid, news, OP)
    return create_app(s, engine)


def _holders(conn, address: str) -> list[int]:
    from consentry.profiles import sql as profile_sql

    key = normalize_email(address).key
    return list(conn.execute(profile_sql.holders("email", key)).scalars())


def browser(app, **headers) -> tuple[TestClient, str]:
    client = TestClient(app, headers=headers)
    shown = client.get("/optout")
    assert shown.status_code == 200
    return client, client.cookies[CSRF_COOKIE]


def ask(client: TestClient, csrf: str, address: str, **extra):
    return client.post("/optout", data={"address": address, CSRF_FIELD: csrf, **extra})


def drained(app) -> None:
    optout.sender(app).drain()


def received(sink: SmtpSink) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(m.data, policy=policy.default) for m in sink.messages]


def ledger_count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(ledger_events)).scalar_one()


def test_form_has_labels_honeypot_and_csrf(engine, settings, sink):
    app = make_app(engine, settings, sink)
    answer = TestClient(app).get("/optout")
    html = answer.text
    assert answer.status_code == 200
    assert '<label for="address">' in html and 'id="address" name="address"' in html
    assert f'<label for="{HONEYPOT_FIELD}">' in html and 'class="hp"' in html
    assert f'name="{CSRF_FIELD}"' in html and "<legend>" in html
    assert "<script" not in html
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    german = TestClient(app).get("/optout?lang=de").text
    assert "E-Mail-Adresse oder Mobilnummer" in german and '<html lang="de">' in german


def test_known_and_unknown_get_identical_answers_and_the_link_works(engine, settings, sink):
    app = make_app(engine, settings, sink)
    client, csrf = browser(app, **{"user-agent": "Mozilla/5.0 (optout test)"})
    before = ledger_count(engine)
    known = ask(client, csrf, "  KNOWN@example.com ")
    unknown = ask(client, csrf, "stranger@example.com")
    assert known.status_code == unknown.status_code == 200
    assert known.content == unknown.content
    assert "If this address is in our lists, we have sent a link to it." in known.text
    assert "known@example.com" not in known.text.lower()
    assert {k: v for k, v in known.headers.items() if k != "date"} == {
        k: v for k, v in unknown.headers.items() if k != "date"}
    drained(app)
    [message] = received(sink)
    assert message["To"] == "Known@example.com"  # as the profile holds it
    assert sink.messages[0].rcpt_tos == ["Known@example.com"]
    assert message["Subject"] == "Your link to stop our messages"
    text = message.get_body(("plain",)).get_content()
    [link] = re.findall(rf"{re.escape(BASE)}(/u/\S+)", text)
    assert ledger_count(engine) == before  # asking for a link changes no consent
    # The link opens the profile's unsubscribe page; its choice is applied and recorded.
    page = client.get(link)
    assert page.status_code == 200 and "K***@example.com" in page.text
    done = client.post(link, data={"choice": "all", CSRF_FIELD: client.cookies[CSRF_COOKIE]})
    assert done.status_code == 200 and "nothing more, by any channel" in done.text
    with engine.connect() as conn:
        [pid] = _holders(conn, "known@example.com")
        assert consent.optouts(conn, pid).global_
        [event] = conn.execute(sa.select(ledger_events).where(
            ledger_events.c.source == "landing_page")).mappings().all()
    assert (event["ip"], event["user_agent"]) == ("testclient", "Mozilla/5.0 (optout test)")


def test_answer_time_does_not_depend_on_the_address(engine, settings, sink, monkeypatch):
    """Sending happens in the sender's threads: a relay that takes a second to answer does not
    show in the answer for a known address."""
    app = make_app(engine, settings, sink)
    calls = []

    def slow_send(settings, channel, address, subject, text):
        time.sleep(1.0)
        calls.append(address)
        return Outcome(0, True)

    monkeypatch.setattr(optout.notify, "send", slow_send)
    client, csrf = browser(app)
    ask(client, csrf, "warmup@example.com")
    timings = {}
    for address in ("known@example.com", "nobody@example.com"):
        started = time.perf_counter()
        assert ask(client, csrf, address).status_code == 200
        timings[address] = time.perf_counter() - started
    assert max(timings.values()) < 0.5, timings
    drained(app)
    assert calls == ["Known@example.com"]


def test_honeypot_gets_the_same_answer_and_nothing_is_sent(engine, settings, sink):
    app = make_app(engine, settings, sink)
    client, csrf = browser(app)
    human = ask(client, csrf, "nobody@example.com")
    bot = ask(client, csrf, "known@example.com", **{HONEYPOT_FIELD: "http://spam.example"})
    assert bot.status_code == 200 and bot.content == human.content
    drained(app)
    assert sink.messages == []


def test_csrf_missing_or_wrong_sends_nothing(engine, settings, sink):
    app = make_app(engine, settings, sink)
    client, csrf = browser(app)
    assert client.post("/optout", data={"address": "known@example.com"}).status_code == 403
    wrong = ask(client, "x" * 43, "known@example.com")
    assert wrong.status_code == 403 and "Please try again" in wrong.text
    assert ask(TestClient(app), csrf, "known@example.com").status_code == 403  # no cookie
    german = client.post("/optout?lang=de", data={"address": "known@example.com"})
    assert "Bitte versuchen Sie es erneut" in german.text
    time.sleep(0.2)
    assert sink.messages == []


def test_invalid_address_shows_the_form_again(engine, settings, sink):
    app = make_app(engine, settings, sink)
    client, csrf = browser(app)
    for bad in ("not an address", "someone@", "+49 1", ""):
        answer = ask(client, csrf, bad)
        assert answer.status_code == 400, bad
        assert 'class="error"' in answer.text and 'aria-invalid="true"' in answer.text
    german = client.post("/optout?lang=de", data={"address": "x@", CSRF_FIELD: csrf})
    assert "Bitte geben Sie eine E-Mail-Adresse" in german.text
    time.sleep(0.2)
    assert sink.messages == []


def test_rate_limit_per_address_counts_unknown_addresses_too(engine, settings, sink):
    app = make_app(engine, settings, sink, form_limit_per_address=2)
    client, csrf = browser(app)
    for address in ("known@example.com", "unknown@example.com"):
        # The matching key: case of the local part does not escape the limit.
        assert ask(client, csrf, address).status_code == 200
        assert ask(client, csrf, address.upper().replace("EXAMPLE.COM", "example.com")
                   ).status_code == 200
        over = client.post("/optout?lang=de", data={"address": address, CSRF_FIELD: csrf})
        assert over.status_code == 429
        assert "Zu viele Anfragen" in over.text
    assert ask(client, csrf, "third@example.com").status_code == 200
    drained(app)
    assert len(sink.messages) == 2  # the known address, twice; never more than the limit


def test_rate_limit_per_ip(engine, settings, sink):
    app = make_app(engine, settings, sink, form_limit_per_ip=3)
    client, csrf = browser(app)
    assert [ask(client, csrf, f"p{i}@example.com").status_code for i in range(4)] == [
        200, 200, 200, 429]
    assert "Too many requests" in ask(client, csrf, "known@example.com").text
    drained(app)
    assert sink.messages == []


def test_blocked_address_gets_nothing_and_the_same_answer(engine, settings, sink):
    app = make_app(engine, settings, sink)
    with engine.begin() as conn:
        quarantine.set_status(conn, normalize_email("known@example.com"),
                              qrules.Status.DENYLISTED, "manual", OP, settings.quarantine)
    client, csrf = browser(app)
    assert ask(client, csrf, "known@example.com").content == ask(
        client, csrf, "nobody@example.com").content
    drained(app)
    assert sink.messages == []


def test_shared_address_gets_one_message_with_a_link_per_profile(engine, settings, sink):
    app = make_app(engine, settings, sink)
    with engine.begin() as conn:
        other = profiles.create(conn, settings, profiles.NewProfile(
            email="known@EXAMPLE.com", locale="de"), OP)
    client, csrf = browser(app)
    assert client.post("/optout?lang=de", data={"address": "known@example.com",
                                                CSRF_FIELD: csrf}).status_code == 200
    drained(app)
    [message] = received(sink)
    assert message["Subject"] == "Ihr Link zum Abbestellen unserer Nachrichten"
    text = message.get_body(("plain",)).get_content()
    assert "Diese Adresse gehört bei uns zu mehreren Profilen" in text
    links = re.findall(rf"{re.escape(BASE)}(/u/\S+)", text)
    assert len(links) == 2
    signer = app.state.consentry.signer
    owners = [signer.read_unsubscribe_token(link.removeprefix("/u/")) for link in links]
    with engine.connect() as conn:
        holders = _holders(conn, "known@example.com")
    assert other in holders
    assert owners == [(pid, None, None, "email") for pid in holders]
    # "Stop everything sent to this address" on either link covers both profiles.
    url = links[1]
    page = client.get(url)
    assert '<html lang="de">' in page.text  # that profile's locale
    client.post(url, data={"choice": "address", CSRF_FIELD: client.cookies[CSRF_COOKIE]})
    with engine.connect() as conn:
        for pid in holders:
            [address] = profiles.show(conn, settings, pid)["addresses"]
            assert address["status"] == "denylisted" and not address["reachable"]


def test_phone_number_gets_the_link_by_sms(engine, settings, sink):
    def answer(request):
        return Reply(200, {"id": "sms-1"})

    with http_sink(answer) as sms:
        app = make_app(engine, replace(settings, sms_url=sms.url + "/send", sms_from="News",
                                       sms_token="t0k"), sink)
        with engine.begin() as conn:
            pid = profiles.create(conn, settings, profiles.NewProfile(phone="+4915112345678"),
                                  OP)
        client, csrf = browser(app)
        assert ask(client, csrf, "0151 1234 5678").status_code == 200  # national form, DE
        assert ask(client, csrf, "+49 151 00000000").content == ask(
            client, csrf, "+4915112345678").content
        drained(app)
        bodies = [r.json() for r in sms.requests]
    assert [b["to"] for b in bodies] == ["+4915112345678", "+4915112345678"]
    [link] = re.findall(rf"{re.escape(BASE)}(/u/\S+)", bodies[0]["text"])
    signer = app.state.consentry.signer
    assert signer.read_unsubscribe_token(link.removeprefix("/u/")) == (pid, None, None, "sms")
    assert sink.messages == []
