"""Inbound SMS: keyword parsing (multilingual, polite forms, false positives), STOP / START /
HELP applied to quarantine on both databases, one confirmation, per-sender keywords, the
Twilio and generic webhooks with their signatures, replays, and `consentry sms inbound`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from consentry.domain import quarantine as rules
from consentry.domain.addresses import normalize_phone
from consentry.domain.ledger import Origin
from consentry.domain.sms_keywords import (
    DEFAULT_HELP,
    DEFAULT_START,
    DEFAULT_STOP,
    DEFAULT_STOP_REPLY,
    Action,
    KeywordSet,
    keyword_set,
    parse,
    sender_key,
    words,
)
from consentry.privacy import service as privacy
from consentry.profiles import service as profiles
from consentry.quarantine import service as quarantine
from consentry.settings import HookSettings, Settings
from consentry.sms.service import handle_inbound
from consentry.store.schema import inbound_sms, ledger_events
from consentry.web.app import create_app
from consentry.web.sms_hooks import generic_signature, twilio_signature
from helpers import cli, run_in_threads

PHONE = "+4915123456789"
SENDER = "+4915199990000"
T0 = datetime(2026, 3, 1, 8, tzinfo=UTC)

# --- parse: the keyword table -----------------------------------------------------------------

STOPS = [
    # domain.md's keywords, any case
    "STOP", "stop", "Stop", "STOPALL", "unsubscribe", "Cancel", "END", "quit", "revoke",
    "OPTOUT", "Stopp", "ende", "ABMELDEN",
    # punctuation, emoji, spacing
    "stop!!!", "STOP.", "  stop  ", "🛑 STOP 🛑", "S.T.O.P", "opt-out", "Opt out", "stop all",
    "STOP STOP STOP", "*STOP*", "Stop 🙏",
    # polite forms (FCC: any reasonable wording)
    "Stop. Thank you", "STOP please", "Please stop", "stop thanks!", "Stop, thank you very much",
    "please opt me out", "Opt me out please", "unsubscribe me", "Unsubscribe me now please",
    "remove me from this list", "Please remove me from your list, thanks",
    "take me off your list", "Take my number off the list", "don't text me anymore",
    "Do not text me again", "Stop texting me", "please stop sending me these messages",
    "Stop the messages", "No more texts please", "Leave me alone", "wrong number",
    "cancel my subscription", "How do I unsubscribe?", "I want to unsubscribe",
    "I don't want these texts", "No. Stop texting me", "Got it. STOP",
    # German
    "Stopp bitte", "bitte abmelden", "Bitte abmelden, danke", "keine SMS mehr",
    "Keine weiteren Nachrichten bitte", "Bitte keine SMS mehr schicken",
    "Ich möchte mich abmelden", "Bitte schreiben Sie mir nicht mehr", "austragen",
    # French
    "arrêt", "ARRET", "arreter", "Arrêtez", "désabonner", "Désabonnez-moi svp",
    "Je veux me désabonner", "STOP merci", "Plus de SMS svp",
    # Spanish
    "baja", "BAJA por favor", "Darme de baja", "No más mensajes", "cancelar",
    # Italian
    "cancella", "Cancellami grazie", "Basta", "Non voglio più messaggi",
    # Dutch, Portuguese
    "afmelden", "Uitschrijven aub", "sair",
]

STARTS = ["START", "start", "Start please", "UNSTOP", "yes", "Yes!", "Yes please", "YES.",
          "anmelden", "Anmelden bitte", "S T A R T"]

HELPS = ["HELP", "help", "Help!", "help me", "INFO", "info please", "HILFE", "Hilfe bitte",
         "aide", "ayuda", "aiuto", "HELP?"]

NONES = [
    "", "   ", "!!!", "🙂", "thank you", "ok", "hello",
    # ordinary messages that mention a keyword in passing
    "don't stop sending me deals", "Don't stop!", "Never stop", "I'll stop by tomorrow",
    "stop by anytime", "where is my order?", "Can I get help with my order",
    "cancel my order", "The end", "I never said stop", "please don't remove me from the list",
    "Please do not unsubscribe me", "I did not unsubscribe", "Don't end the alerts",
    "Yes. Where is my order?", "Start of the sale is when?", "Is there more info on the sofa?",
    "Ich bekomme keine SMS", "Je ne veux pas me désabonner", "Can you help me find my order",
    "When does the shop open? I want to stop by and pick up my parcel",
    "Great, see you at the end of the week",
    # a long message mentioning unsubscribing is for a person to read
    "I was going to unsubscribe last year but then your newsletter got much better and now "
    "I read every single one of them, so thanks for the great work and keep going",
]


@pytest.mark.parametrize("text", STOPS)
def test_stop_forms(text):
    assert parse(text) is Action.STOP


@pytest.mark.parametrize("text", STARTS)
def test_start_forms(text):
    assert parse(text) is Action.START


@pytest.mark.parametrize("text", HELPS)
def test_help_forms(text):
    assert parse(text) is Action.HELP


@pytest.mark.parametrize("text", NONES)
def test_not_keywords(text):
    assert parse(text) is Action.NONE


def test_stop_wins_over_start_and_help():
    assert parse("STOP HELP") is Action.STOP
    assert parse("START STOP") is Action.STOP
    assert parse("yes help") is Action.START


def test_words_normalize_case_accents_punctuation():
    assert words("Arrêt!! Don\u2019t ß") == ["ARRET", "DONT", "SS"]
    assert words("🛑🛑") == []


_PUNCT = st.text(alphabet=" \t\n.,!?;:-*\"()[]…🛑🙏😡👍", max_size=6)


def _random_case(draw, word: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.lower() if f else c.upper() for c, f in zip(word, flips, strict=True))


@st.composite
def decorated_keyword(draw, pool):
    word = draw(st.sampled_from(pool))
    before = draw(st.sampled_from(["", "please ", "Bitte ", "hi ", "OK "]))
    after = draw(st.sampled_from(["", " please", " thank you", " thanks", " danke", " merci"]))
    return (word, draw(_PUNCT) + before + _random_case(draw, word) + draw(_PUNCT)
            + after + draw(_PUNCT))


@given(decorated_keyword(DEFAULT_STOP))
def test_stop_keyword_with_any_case_punctuation_and_filler(case):
    word, text = case
    assert parse(text) is Action.STOP, (word, text)


@given(decorated_keyword(DEFAULT_START))
def test_start_keyword_with_any_case_punctuation_and_filler(case):
    word, text = case
    assert parse(text) is Action.START, (word, text)


@given(decorated_keyword(DEFAULT_HELP))
def test_help_keyword_with_any_case_punctuation_and_filler(case):
    word, text = case
    assert parse(text) is Action.HELP, (word, text)


@given(st.text(max_size=200))
def test_parse_takes_any_text(text):
    assert parse(text) in set(Action)


@given(st.sampled_from(["deals", "order", "by tomorrow", "sending me offers"]),
       st.sampled_from(DEFAULT_STOP))
def test_negated_keyword_is_not_an_opt_out(tail, word):
    assert parse(f"don't {word.lower()} {tail}") is Action.NONE


# --- keyword sets ------------------------------------------------------------------------------

CONFIG = {
    "default": {"help_reply": "Acme alerts. Reply STOP to end."},
    "+49 151 9999 0000": {"stop": ["HALT"], "stop_reply": "Halted. No more messages.",
                          "start": ["RESUME"]},
    "12345": {"help": ["MENU"], "help_reply": "Short code help."},
}


def test_keyword_set_merges_default_and_sender():
    ks = keyword_set(CONFIG, "+4915199990000")  # written differently in the config
    assert "HALT" in ks.stop and "STOP" in ks.stop  # stop words are only ever added to
    assert ks.start == ("RESUME",)  # start and help lists replace
    assert ks.stop_reply == "Halted. No more messages."
    assert ks.help_reply == "Acme alerts. Reply STOP to end."
    assert parse("halt please", ks) is Action.STOP
    assert parse("STOP", ks) is Action.STOP
    assert parse("resume", ks) is Action.START and parse("START", ks) is Action.NONE

    other = keyword_set(CONFIG, "+4915100000000")
    assert parse("halt", other) is Action.NONE
    assert other.stop_reply == DEFAULT_STOP_REPLY

    short = keyword_set(CONFIG, "12345")
    assert parse("menu", short) is Action.HELP and short.help_reply == "Short code help."
    assert keyword_set({}, "") == KeywordSet()


def test_sender_key_matches_number_spellings():
    assert sender_key("+49 151 9999 0000") == sender_key("015199990000", "DE") \
        == sender_key("0049151-9999-0000") == "4915199990000"
    assert sender_key("12345") == "12345"
    assert sender_key("AcmeShop") == sender_key("ACMESHOP")


# --- the service on both databases ---------------------------------------------------------


def _inbound(engine, settings, text, *, now=T0, frm=PHONE, to=SENDER, via="cli",
             provider_id=None):
    with engine.begin() as conn:
        return handle_inbound(conn, settings, from_number=frm, to_number=to, text=text,
                              via=via, provider_id=provider_id, now=now)


def _show(engine, settings, number=PHONE, now=T0):
    with engine.begin() as conn:
        return quarantine.show(conn, normalize_phone(number), settings.quarantine,
                               now=now + timedelta(minutes=30))


def _messages(engine):
    with engine.begin() as conn:
        return conn.execute(sa.select(inbound_sms).order_by(inbound_sms.c.id)).mappings().all()


def test_stop_denylists_start_releases(engine, settings):
    result = _inbound(engine, settings, "Stop. Thank you", frm="0151 23456789")
    assert result.action is Action.STOP and result.changed and not result.duplicate
    assert result.reply == DEFAULT_STOP_REPLY and result.from_number == PHONE
    shown = _show(engine, settings)
    assert shown["status"] == "denylisted" and shown["reason"] == "sms_stop"
    assert shown["source"] == "sms_keyword"
    with engine.begin() as conn:
        event = conn.execute(sa.select(ledger_events)).mappings().one()
    assert event["source"] == "sms_keyword" and event["actor"] == "sms:cli"
    assert event["wording"] == "Stop. Thank you" and event["address"] == PHONE
    assert event["new_state"] == "denylisted(sms_stop)"
    assert event["evidence"]["inbound_sms"] == result.message_id

    later = T0 + timedelta(hours=1)
    result = _inbound(engine, settings, "START", now=later)
    assert result.action is Action.START and result.changed and result.reply
    assert _show(engine, settings, now=later)["status"] == "valid"
    rows = _messages(engine)
    assert [(r["action"], r["from_number"], r["reply"] is not None) for r in rows] == [
        ("stop", PHONE, True), ("start", PHONE, True)]


def test_second_stop_gets_no_second_reply(engine, settings):
    assert _inbound(engine, settings, "STOP").reply == DEFAULT_STOP_REPLY
    again = _inbound(engine, settings, "stop!!", now=T0 + timedelta(minutes=1))
    assert again.action is Action.STOP and not again.changed and again.reply is None
    much_later = _inbound(engine, settings, "UNSUBSCRIBE", now=T0 + timedelta(days=3))
    assert much_later.reply is None
    # Back in, then out again: a new opt-out gets its own confirmation.
    _inbound(engine, settings, "START", now=T0 + timedelta(days=4))
    assert _inbound(engine, settings, "STOP", now=T0 + timedelta(days=5)).reply \
        == DEFAULT_STOP_REPLY
    rows = _messages(engine)
    assert [r["reply"] is not None for r in rows] == [True, False, False, True, True]


def test_start_does_not_release_other_denylists(engine, settings):
    address = normalize_phone(PHONE)
    with engine.begin() as conn:
        quarantine.set_status(conn, address, rules.Status.DENYLISTED, "complaint",
                              Origin(source="cli", actor="os:tester"), settings.quarantine,
                              now=T0)
    # STOP keeps the stronger reason, and confirms once.
    first = _inbound(engine, settings, "STOP", now=T0 + timedelta(minutes=1))
    assert not first.changed and first.reply == DEFAULT_STOP_REPLY
    assert _inbound(engine, settings, "STOP", now=T0 + timedelta(minutes=2)).reply is None
    start = _inbound(engine, settings, "START", now=T0 + timedelta(minutes=3))
    assert not start.changed and start.reply is None
    shown = _show(engine, settings)
    assert shown["status"] == "denylisted" and shown["reason"] == "complaint"


def test_start_on_a_valid_number_changes_nothing_and_says_nothing(engine, settings):
    result = _inbound(engine, settings, "Yes")  # e.g. an answer to an appointment reminder
    assert result.action is Action.START and not result.changed and result.reply is None
    assert _show(engine, settings)["status"] == "valid"


def test_stop_overrides_an_allowlist(engine, settings):
    with engine.begin() as conn:
        quarantine.set_status(conn, normalize_phone(PHONE), rules.Status.ALLOWLISTED, None,
                              Origin(source="cli"), settings.quarantine, now=T0)
    assert _inbound(engine, settings, "STOP", now=T0 + timedelta(minutes=1)).changed
    assert _show(engine, settings)["status"] == "denylisted"


def test_help_answers_and_changes_nothing(engine, settings):
    result = _inbound(engine, settings, "HELP")
    assert result.action is Action.HELP and not result.changed
    assert result.reply == KeywordSet().help_reply
    assert _show(engine, settings)["status"] == "valid"
    # Not twice within five minutes (two autoresponders must not loop), again later.
    assert _inbound(engine, settings, "help", now=T0 + timedelta(minutes=2)).reply is None
    assert _inbound(engine, settings, "info", now=T0 + timedelta(minutes=6)).reply
    with engine.begin() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ledger_events)).scalar() == 0


def test_per_sender_keywords_and_replies(engine, settings):
    custom = replace(settings, sms_keywords=CONFIG)
    result = _inbound(engine, custom, "Halt!", to="+49 151 99990000")
    assert result.action is Action.STOP and result.reply == "Halted. No more messages."
    assert _show(engine, custom)["status"] == "denylisted"
    other = _inbound(engine, custom, "HALT", frm="+4915111111111", to="+4915100000000")
    assert other.action is Action.NONE and other.reply is None
    help_ = _inbound(engine, custom, "help", frm="+4915111111111", to="+4915100000000")
    assert help_.reply == "Acme alerts. Reply STOP to end."


def test_non_keywords_and_bad_numbers_are_stored(engine, settings):
    plain = _inbound(engine, settings, "Where is my order?")
    assert plain.action is Action.NONE and plain.reply is None and not plain.changed
    bad = _inbound(engine, settings, "STOP", frm="not-a-number")
    assert bad.action is Action.NONE and bad.reply is None and "not a phone number" in \
        bad.problem
    rows = _messages(engine)
    assert [(r["from_number"], r["text"], r["action"]) for r in rows] == [
        (PHONE, "Where is my order?", "none"), ("not-a-number", "STOP", "none")]
    assert _show(engine, settings)["status"] == "valid"


def test_replayed_provider_id_counts_once(engine, settings):
    first = _inbound(engine, settings, "STOP", via="twilio", provider_id="twilio:SM1")
    again = _inbound(engine, settings, "STOP", via="twilio", provider_id="twilio:SM1",
                     now=T0 + timedelta(seconds=5))
    assert first.changed and first.reply and not first.duplicate
    assert again.duplicate and again.reply is None and not again.changed
    assert again.action is Action.STOP and again.message_id == first.message_id
    assert len(_messages(engine)) == 1


def test_concurrent_replays_count_once(pg_engine):
    """The same webhook delivered several times at once (PostgreSQL, real concurrency)."""
    settings = Settings()
    results = []

    def deliver(i: int) -> None:
        with pg_engine.begin() as conn:
            results.append(handle_inbound(conn, settings, from_number=PHONE, to_number=SENDER,
                                          text="STOP", via="twilio", provider_id="twilio:SMx"))

    run_in_threads(deliver, 4)
    assert sorted(r.duplicate for r in results) == [False, True, True, True]
    assert [r.reply is not None for r in results if not r.duplicate] == [True]
    assert len(_messages(pg_engine)) == 1
    with pg_engine.begin() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ledger_events)).scalar() == 1


def test_long_text_is_kept_and_the_ledger_wording_fits(engine, settings):
    text = "Please stop sending me these texts " + "!" * 400 + " ok" * 3
    result = _inbound(engine, settings, text)
    assert result.action is Action.STOP
    with engine.begin() as conn:
        event = conn.execute(sa.select(ledger_events)).mappings().one()
    assert len(event["wording"]) <= 255
    assert _messages(engine)[-1]["text"] == text


# --- webhooks ----------------------------------------------------------------------------------

TWILIO_TOKEN = "twilio-auth-token"
SECRET = "generic-secret"


@pytest.fixture
def hook_settings(settings):
    return replace(settings, base_url="https://sms.example.com",
                   hooks=HookSettings(twilio_auth_token=TWILIO_TOKEN, sms_secret=SECRET))


@pytest.fixture
def client(engine, hook_settings):
    with TestClient(create_app(hook_settings, engine)) as c:
        yield c


def _twilio_form(body="STOP", sid="SM0001", frm=PHONE):
    return {"MessageSid": sid, "SmsSid": sid, "AccountSid": "AC1", "From": frm,
            "To": SENDER, "Body": body, "NumMedia": "0"}


def _post_twilio(client, form, *, url="https://sms.example.com/hooks/sms/twilio",
                 token=TWILIO_TOKEN, signature=None):
    sig = signature if signature is not None else twilio_signature(
        token, url, list(form.items()))
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if sig:
        headers["X-Twilio-Signature"] = sig
    return client.post("/hooks/sms/twilio", content=urlencode(form), headers=headers)


def test_twilio_signature_matches_twilios_documented_example():
    # https://www.twilio.com/docs/usage/security#validating-requests
    # (the vector of Twilio's own RequestValidator tests)
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309",
              "Digits": "1234", "From": "+14158675309", "To": "+18005551212"}
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio_signature("12345", url, list(params.items())) == \
        "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    # Repeated parameters: each distinct value once, sorted.
    repeated = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"),
                ("Digits", "1234"), ("Digits", "1234")]
    assert twilio_signature("12345", url, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


def test_twilio_stop_answers_twiml(client, engine, hook_settings):
    response = _post_twilio(client, _twilio_form("Stop. Thank you"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    assert response.text.endswith(
        f"<Response><Message>{DEFAULT_STOP_REPLY}</Message></Response>")
    shown = _show(engine, hook_settings, now=datetime.now(UTC))
    assert shown["status"] == "denylisted" and shown["reason"] == "sms_stop"
    rows = _messages(engine)
    assert rows[0]["via"] == "twilio" and rows[0]["provider_id"] == "twilio:SM0001"
    with engine.begin() as conn:
        event = conn.execute(sa.select(ledger_events)).mappings().one()
    assert event["actor"] == "sms:twilio" and event["ip"] == "testclient"


def test_twilio_url_as_the_app_sees_it_is_accepted(client, engine):
    response = _post_twilio(client, _twilio_form("hello"),
                            url="http://testserver/hooks/sms/twilio")
    assert response.status_code == 200 and response.text.endswith("<Response/>")
    assert _messages(engine)[0]["action"] == "none"


def test_twilio_replay_counts_once(client, engine):
    form = _twilio_form("STOP")
    assert "<Message>" in _post_twilio(client, form).text
    again = _post_twilio(client, form)
    assert again.status_code == 200 and again.text.endswith("<Response/>")
    assert len(_messages(engine)) == 1


@pytest.mark.parametrize("case", ["missing", "forged", "wrong token", "tampered"])
def test_twilio_bad_signature_is_refused_and_nothing_stored(client, engine, case):
    form = _twilio_form("STOP")
    if case == "missing":
        response = _post_twilio(client, form, signature="")
    elif case == "forged":
        response = _post_twilio(client, form, signature=base64.b64encode(b"x" * 20).decode())
    elif case == "wrong token":
        response = _post_twilio(client, form, token="other-token")
    else:
        signature = twilio_signature(TWILIO_TOKEN, "https://sms.example.com/hooks/sms/twilio",
                                     list(form.items()))
        response = _post_twilio(client, {**form, "From": "+4915111111111"},
                                signature=signature)
    assert response.status_code == 403
    assert _messages(engine) == []


def test_twilio_hook_not_configured_is_refused(engine, settings):
    with TestClient(create_app(settings, engine)) as c:
        response = _post_twilio(c, _twilio_form(), url="http://testserver/hooks/sms/twilio")
    assert response.status_code == 403
    assert _messages(engine) == []


def test_twilio_token_from_sms_token(engine, settings):
    twilio = replace(settings, sms_provider="twilio", sms_token=f"AC123:{TWILIO_TOKEN}")
    with TestClient(create_app(twilio, engine)) as c:
        response = _post_twilio(c, _twilio_form("help"),
                                url="http://testserver/hooks/sms/twilio")
    assert response.status_code == 200 and "<Message>Reply STOP" in response.text


def _post_generic(client, payload, *, secret=SECRET, timestamp=None, signature=None,
                  headers=None):
    body = json.dumps(payload).encode()
    ts = str(int(time.time())) if timestamp is None else timestamp
    sig = signature if signature is not None else generic_signature(secret, ts, body)
    sent = {"Content-Type": "application/json", "X-Consentry-Timestamp": ts,
            "X-Consentry-Signature": sig}
    if headers is not None:
        sent = headers
    return client.post("/hooks/sms/generic", content=body, headers=sent)


def test_generic_hook_stop_start_and_replay(client, engine, hook_settings):
    payload = {"id": "m-1", "from": PHONE, "to": SENDER, "text": "please opt me out"}
    response = _post_generic(client, payload)
    assert response.status_code == 200
    assert response.json() == {"action": "stop", "reply": DEFAULT_STOP_REPLY,
                               "duplicate": False}
    assert _show(engine, hook_settings, now=datetime.now(UTC))["status"] == "denylisted"
    again = _post_generic(client, payload)
    assert again.json() == {"action": "stop", "reply": None, "duplicate": True}
    back = _post_generic(client, {"id": 2, "from": PHONE, "to": SENDER, "text": "START"})
    assert back.json()["action"] == "start" and back.json()["reply"]
    assert _show(engine, hook_settings, now=datetime.now(UTC))["status"] == "valid"
    assert [r["provider_id"] for r in _messages(engine)] == ["generic:m-1", "generic:2"]


@pytest.mark.parametrize("case", ["forged", "wrong secret", "stale", "future", "missing",
                                  "not a number"])
def test_generic_hook_bad_signature_is_refused(client, engine, case):
    payload = {"id": "m-9", "from": PHONE, "to": SENDER, "text": "STOP"}
    now = int(time.time())
    if case == "forged":
        response = _post_generic(client, payload, signature="sha256=" + "0" * 64)
    elif case == "wrong secret":
        response = _post_generic(client, payload, secret="guess")
    elif case == "stale":
        response = _post_generic(client, payload, timestamp=str(now - 3600))
    elif case == "future":
        response = _post_generic(client, payload, timestamp=str(now + 3600))
    elif case == "missing":
        response = _post_generic(client, payload, headers={"Content-Type": "application/json"})
    else:
        response = _post_generic(client, payload, timestamp="yesterday")
    assert response.status_code in (401, 403)
    assert _messages(engine) == []


def test_generic_hook_signature_covers_the_body(client, engine):
    ts = str(int(time.time()))
    signed = json.dumps({"id": "a", "from": PHONE, "to": SENDER, "text": "hello"}).encode()
    sent = json.dumps({"id": "a", "from": PHONE, "to": SENDER, "text": "STOP"}).encode()
    response = client.post("/hooks/sms/generic", content=sent, headers={
        "X-Consentry-Timestamp": ts,
        "X-Consentry-Signature": generic_signature(SECRET, ts, signed)})
    assert response.status_code == 403 and _messages(engine) == []


def test_generic_hook_rejects_bad_payloads(client, engine):
    assert _post_generic(client, {"id": "x", "to": SENDER, "text": "STOP"}).status_code == 400
    assert _post_generic(client, ["STOP"]).status_code == 400
    assert _messages(engine) == []


def test_generic_signature_format():
    expected = hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert generic_signature("k", "1700000000", b"{}") == "sha256=" + expected


# --- command line ------------------------------------------------------------------------------


def test_cli_sms_inbound(db_url):
    run = cli(db_url, "sms", "inbound", "--from", "+49 151 23456789", "--to", SENDER,
              "--text", "STOP please", "--json")
    assert run.exit_code == 0, run.stderr
    data = run.json()
    assert data["action"] == "stop" and data["reply"] == DEFAULT_STOP_REPLY
    assert data["duplicate"] is False and data["changed"] is True
    shown = cli(db_url, "quarantine", "show", PHONE, "--json").json()
    assert shown["status"] == "denylisted" and shown["reason"] == "sms_stop"

    again = cli(db_url, "sms", "inbound", "--from", PHONE, "--to", SENDER, "--text", "stop",
                "--json").json()
    assert again["action"] == "stop" and again["reply"] is None

    human = cli(db_url, "sms", "inbound", "--from", PHONE, "--to", SENDER, "--text", "HELP")
    assert human.exit_code == 0 and "reply: Reply STOP" in human.stdout

    plain = cli(db_url, "sms", "inbound", "--from", PHONE, "--to", SENDER, "--text",
                "where is my order?", "--json").json()
    assert plain["action"] == "none" and plain["reply"] is None


def test_cli_sms_inbound_needs_its_options(db_url):
    run = cli(db_url, "sms", "inbound", "--from", PHONE, "--text", "STOP")
    assert run.exit_code == 2


def test_erasure_removes_the_messages_a_number_sent(engine, settings):
    with engine.begin() as conn:
        pid = profiles.create(conn, settings, profiles.NewProfile(phone="+4915112345678"),
                              Origin(source="cli"))
        handle_inbound(conn, settings, from_number="+4915112345678", to_number="12345",
                       text="STOP", via="cli")
        handle_inbound(conn, settings, from_number="+4915187654321", to_number="12345",
                       text="hello", via="cli")
        privacy.erase(conn, settings, pid, Origin(source="cli"))
        left = conn.execute(sa.select(inbound_sms.c.from_number)).scalars().all()
    assert left == ["+4915187654321"]
