"""SMS (generic JSON, Twilio-compatible) and push (FCM v1 shaped) transports against a real
HTTP server: request shapes, error mappings, retries, concurrency and rate limits."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence
from typing import Any

import pytest

from consentry.delivery.push_transport import push_transport
from consentry.delivery.sms_transport import HttpTransport, sms_transport
from consentry.delivery.transport import Outcome, Outgoing, Transport
from consentry.delivery.transports import transport_for
from consentry.domain.channels import Channel
from consentry.domain.errors import ConsentryError
from consentry.domain.quarantine import FailureClass
from consentry.settings import SendingSettings, Settings
from http_sink import HttpSink, Recorded, Reply, free_port, http_sink

FAST = (0.05, 0.1)  # two retries, quickly

HARD, SOFT = FailureClass.HARD, FailureClass.SOFT
IGNORED, COMPLAINT = FailureClass.IGNORED, FailureClass.COMPLAINT


def config(rate: float = 0.0, concurrency: int = 4, **values: Any) -> Settings:
    return Settings(sending=SendingSettings(rate=rate, concurrency=concurrency), **values)


def generic(sink: HttpSink | str, token: str | None = "tok", **sending: Any) -> HttpTransport:
    url = sink if isinstance(sink, str) else sink.url + "/v1/sms"
    return sms_transport(config(sms_url=url, sms_from="Consentry", sms_token=token, **sending),
                         retry_delays=FAST)


def twilio(sink: HttpSink, **sending: Any) -> HttpTransport:
    return sms_transport(config(sms_url=sink.url + "/", sms_provider="twilio",
                                sms_from="+4930123456", sms_token="AC123:secret", **sending),
                         retry_delays=FAST)


def fcm(sink: HttpSink, **sending: Any) -> HttpTransport:
    return push_transport(config(push_url=sink.url + "/v1/projects/p/messages:send",
                                 push_token="ya29.token", **sending), retry_delays=FAST)


def sms(i: int, number: str | None = None, text: str = "Hallo") -> Outgoing:
    return Outgoing(target_id=i, address=number or f"+49151000000{i:02d}", subject="", text=text)


def push(i: int, token: str | None = None) -> Outgoing:
    return Outgoing(target_id=i, address=token or f"tok-{i}", subject="Sale", text="50% off")


def send(transport: Transport, messages: Sequence[Outgoing]) -> dict[int, Outcome]:
    async def main() -> list[Outcome]:
        try:
            return await transport.send(messages)
        finally:
            await transport.aclose()

    outcomes = asyncio.run(main())
    assert sorted(o.target_id for o in outcomes) == sorted(m.target_id for m in messages)
    return {o.target_id: o for o in outcomes}


def failure(o: Outcome) -> tuple[FailureClass | None, str | None]:
    assert not o.accepted, o
    return o.failure_class, o.failure_reason


# --- configuration ----------------------------------------------------------------------------


def test_factories_say_what_is_missing() -> None:
    with pytest.raises(ConsentryError, match=r"no SMS provider configured \(CONSENTRY_SMS_URL\)"):
        sms_transport(Settings())
    with pytest.raises(ConsentryError, match="CONSENTRY_SMS_FROM is needed"):
        sms_transport(Settings(sms_url="http://127.0.0.1:9/"))
    with pytest.raises(ConsentryError, match="ACCOUNT_SID:AUTH_TOKEN"):
        sms_transport(Settings(sms_url="http://x/", sms_from="+49", sms_provider="twilio",
                               sms_token="no-colon"))
    with pytest.raises(ConsentryError, match="unknown SMS provider 'nexmo'"):
        sms_transport(Settings(sms_url="http://x/", sms_from="+49", sms_provider="nexmo"))
    with pytest.raises(ConsentryError, match="http:// or https://"):
        sms_transport(Settings(sms_url="ftp://x/", sms_from="+49"))
    with pytest.raises(ConsentryError,
                       match=r"no push provider configured \(CONSENTRY_PUSH_URL\)"):
        push_transport(Settings())
    s = config(sms_url="http://x/", sms_from="+49", push_url="https://fcm.example/send")
    assert transport_for(Channel.SMS, s).channel == "sms"
    assert transport_for(Channel.PUSH, s).channel == "push"
    assert sms_transport(s).channel == "sms" and push_transport(s).channel == "push"


# --- SMS, generic JSON ------------------------------------------------------------------------


def test_generic_sms_request_shape_and_provider_ids() -> None:
    with http_sink(lambda r: Reply(201, {"id": f"m-{r.json()['to']}"})) as sink:
        out = send(generic(sink), [sms(1), sms(2, text="Grüße, 20% Rabatt")])
        assert out[1].accepted and out[1].provider_id == "m-+4915100000001"
        assert out[2].provider_id == "m-+4915100000002" and "201" in out[2].detail
        bodies = sorted((r.json() for r in sink.requests), key=lambda b: b["to"])
        assert bodies == [
            {"to": "+4915100000001", "from": "Consentry", "text": "Hallo"},
            {"to": "+4915100000002", "from": "Consentry", "text": "Grüße, 20% Rabatt"}]
        for r in sink.requests:
            assert (r.method, r.path) == ("POST", "/v1/sms")
            assert r.headers["authorization"] == "Bearer tok"
            assert r.headers["content-type"] == "application/json"

    with http_sink(lambda r: Reply(200, b"OK", {"Content-Type": "text/plain"})) as sink:
        out = send(generic(sink, token=None), [sms(1)])
        assert out[1].accepted and out[1].provider_id is None
        assert "authorization" not in sink.requests[0].headers


GENERIC_ANSWERS: dict[str, tuple[Reply, FailureClass, str]] = {
    "+491000000001": (Reply(400, {"error": "invalid_number"}), HARD, "user_unknown"),
    "+491000000002": (Reply(404, {"error": {"code": "unknown_subscriber",
                                            "message": "no such subscriber"}}),
                      HARD, "user_unknown"),
    "+491000000003": (Reply(403, {"error": "blocked"}), SOFT, "refused"),
    "+491000000004": (Reply(400, {"error": "opted_out"}), COMPLAINT, "complaint"),
    "+491000000005": (Reply(400, {"error": "message_too_long"}), IGNORED, "message_invalid"),
    "+491000000006": (Reply(400, {"error": "absent_subscriber"}), SOFT, "unreachable"),
    "+491000000007": (Reply(422, {"error": "something_new"}), SOFT, "not_defined"),
    "+491000000008": (Reply(400, "<html>Bad Request</html>", {"Content-Type": "text/html"}),
                      SOFT, "not_defined"),
}


def test_generic_sms_error_mapping() -> None:
    numbers = list(GENERIC_ANSWERS)
    with http_sink(lambda r: GENERIC_ANSWERS[r.json()["to"]][0]) as sink:
        out = send(generic(sink), [sms(i, n) for i, n in enumerate(numbers)])
        assert len(sink.requests) == len(numbers)  # no retries; a "blocked" 403 is per number
    for i, number in enumerate(numbers):
        reply, klass, reason = GENERIC_ANSWERS[number]
        assert failure(out[i]) == (klass, reason), number
        assert f"HTTP {reply.status}" in out[i].detail
    assert "invalid_number" in out[0].detail and "no such subscriber" in out[1].detail
    assert "Bad Request" in out[7].detail


def test_generic_sms_retries_429_and_5xx_then_succeeds() -> None:
    with http_sink(lambda r: Reply(200, {"id": "ok-1"})) as sink:
        sink.script(Reply(429, {"error": "rate_limited"}), Reply(503, {}))
        out = send(generic(sink), [sms(1)])
        assert out[1].accepted and out[1].provider_id == "ok-1"
        assert len(sink.requests) == 3


def test_generic_sms_gives_up_soft_unreachable() -> None:
    with http_sink(lambda r: Reply(500, {"error": "internal"})) as sink:
        out = send(generic(sink), [sms(1), sms(2)])
        assert len(sink.requests) == 6  # each: one try and two retries
    for o in out.values():
        assert failure(o) == (SOFT, "unreachable")
        assert "HTTP 500" in o.detail and "gave up after 3 attempts" in o.detail


def test_retry_after_is_honoured_when_small_and_not_waited_for_when_long() -> None:
    with http_sink(lambda r: Reply(200, {"id": "x"})) as sink:
        sink.script(Reply(429, {}, {"Retry-After": "1"}))
        started = time.monotonic()
        out = send(generic(sink), [sms(1)])
        assert out[1].accepted and len(sink.requests) == 2
        assert time.monotonic() - started >= 0.95

    with http_sink(lambda r: Reply(429, {}, {"Retry-After": "3600"})) as sink:
        out = send(generic(sink), [sms(1)])
        assert len(sink.requests) == 1
        assert failure(out[1]) == (SOFT, "unreachable") and "3600" in out[1].detail


def test_refused_credentials_fail_the_whole_batch_soft() -> None:
    with http_sink(lambda r: Reply(401, {"error": "invalid_token"})) as sink:
        out = send(generic(sink, concurrency=1), [sms(i) for i in range(5)])
        assert len(sink.requests) == 1  # the others are not even tried
    for o in out.values():
        assert failure(o) == (SOFT, "refused") and "credentials" in o.detail
        assert "HTTP 401" in o.detail


# --- SMS, Twilio ------------------------------------------------------------------------------


def test_twilio_request_shape_and_sid() -> None:
    with http_sink(lambda r: Reply(201, {"sid": "SM" + r.form()["To"][-4:],
                                         "status": "queued"})) as sink:
        out = send(twilio(sink), [sms(1), sms(2)])
        assert {o.provider_id for o in out.values()} == {"SM0001", "SM0002"}
        basic = "Basic " + base64.b64encode(b"AC123:secret").decode()
        for r in sink.requests:
            assert (r.method, r.path) == ("POST", "/2010-04-01/Accounts/AC123/Messages.json")
            assert r.headers["authorization"] == basic
            assert r.headers["content-type"] == "application/x-www-form-urlencoded"
        forms = sorted((r.form() for r in sink.requests), key=lambda f: f["To"])
        assert forms[0] == {"To": "+4915100000001", "From": "+4930123456", "Body": "Hallo"}


def _twilio_error(code: int, status: int = 400) -> Reply:
    return Reply(status, {"code": code, "message": f"Twilio says {code}",
                          "more_info": f"https://www.twilio.com/docs/errors/{code}",
                          "status": status})


TWILIO_ANSWERS: dict[int, tuple[FailureClass, str]] = {
    21211: (HARD, "user_unknown"),
    21614: (HARD, "user_unknown"),
    21610: (COMPLAINT, "complaint"),  # STOP at the carrier: denylisted
    30003: (SOFT, "unreachable"),
    30005: (HARD, "user_unknown"),
    30006: (HARD, "user_unknown"),
    30007: (SOFT, "refused"),
    21408: (SOFT, "refused"),
    21617: (IGNORED, "message_invalid"),
}


def test_twilio_error_codes() -> None:
    codes = list(TWILIO_ANSWERS)
    by_number = {f"+4917{code}": code for code in codes}
    with http_sink(lambda r: _twilio_error(by_number[r.form()["To"]])) as sink:
        out = send(twilio(sink), [sms(i, f"+4917{c}") for i, c in enumerate(codes)])
        assert len(sink.requests) == len(codes)
    for i, code in enumerate(codes):
        assert failure(out[i]) == TWILIO_ANSWERS[code], code
        assert f"HTTP 400: {code} Twilio says {code}" == out[i].detail


def test_twilio_rate_limit_is_retried_and_bad_credentials_refused() -> None:
    with http_sink(lambda r: Reply(201, {"sid": "SM1"})) as sink:
        sink.script(_twilio_error(20429, 429))
        out = send(twilio(sink), [sms(1)])
        assert out[1].provider_id == "SM1" and len(sink.requests) == 2

    with http_sink(lambda r: _twilio_error(20003, 401)) as sink:
        out = send(twilio(sink, concurrency=1), [sms(1), sms(2), sms(3)])
        assert len(sink.requests) == 1
    assert all(failure(o) == (SOFT, "refused") and "credentials" in o.detail
               for o in out.values())


# --- push, FCM v1 shaped ----------------------------------------------------------------------


def _fcm_error(status: int, rpc: str, message: str, code: str | None = None) -> Reply:
    details = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": code}] if code else []
    return Reply(status, {"error": {"code": status, "message": message, "status": rpc,
                                    "details": details}})


def test_push_request_shape_and_name() -> None:
    with http_sink(lambda r: Reply(200, {"name": "projects/p/messages/"
                                         + r.json()["message"]["token"]})) as sink:
        out = send(fcm(sink), [push(1), push(2)])
        assert out[1].accepted and out[1].provider_id == "projects/p/messages/tok-1"
        r = next(r for r in sink.requests if r.json()["message"]["token"] == "tok-2")
        assert (r.method, r.path) == ("POST", "/v1/projects/p/messages:send")
        assert r.headers["authorization"] == "Bearer ya29.token"
        assert r.json() == {"message": {"token": "tok-2", "notification": {
            "title": "Sale", "body": "50% off"}}}


PUSH_ANSWERS: dict[str, tuple[Reply, FailureClass, str]] = {
    "gone-fcm": (_fcm_error(404, "NOT_FOUND", "Requested entity was not found.",
                            "UNREGISTERED"), HARD, "user_unknown"),
    "gone-400": (_fcm_error(400, "INVALID_ARGUMENT", "Requested entity was not found.",
                            "UNREGISTERED"), HARD, "user_unknown"),
    "bad-token": (_fcm_error(400, "INVALID_ARGUMENT", "The registration token is not a valid "
                             "FCM registration token", "INVALID_ARGUMENT"), HARD, "user_unknown"),
    "apns-bad": (Reply(400, {"reason": "BadDeviceToken"}), HARD, "user_unknown"),
    "apns-gone": (Reply(410, {"reason": "Unregistered", "timestamp": 1700000000000}),
                  HARD, "user_unknown"),
    "payload": (_fcm_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.",
                           "INVALID_ARGUMENT"), IGNORED, "message_invalid"),
    "mismatch": (_fcm_error(403, "PERMISSION_DENIED", "SenderId mismatch",
                            "SENDER_ID_MISMATCH"), SOFT, "refused"),
    # A bare 404 (a wrong URL says so for every token) must not quarantine the token.
    "bare-404": (Reply(404, "Not Found", {"Content-Type": "text/plain"}), SOFT, "not_defined"),
}


def test_push_error_mapping() -> None:
    tokens = list(PUSH_ANSWERS)
    with http_sink(lambda r: PUSH_ANSWERS[r.json()["message"]["token"]][0]) as sink:
        out = send(fcm(sink), [push(i, t) for i, t in enumerate(tokens)])
        assert len(sink.requests) == len(tokens)  # the per-token 403 does not stop the batch
    for i, token in enumerate(tokens):
        reply, klass, reason = PUSH_ANSWERS[token]
        assert failure(out[i]) == (klass, reason), token
        assert out[i].detail.startswith(f"HTTP {reply.status}")
    assert "UNREGISTERED" in out[0].detail and "BadDeviceToken" in out[3].detail


def test_push_retries_429_and_503_then_succeeds_or_gives_up() -> None:
    with http_sink(lambda r: Reply(200, {"name": "projects/p/messages/1"})) as sink:
        sink.script(_fcm_error(429, "RESOURCE_EXHAUSTED", "quota", "QUOTA_EXCEEDED"),
                    Reply(503, {"error": {"status": "UNAVAILABLE"}}, {"Retry-After": "0"}))
        out = send(fcm(sink), [push(1)])
        assert out[1].accepted and len(sink.requests) == 3

    with http_sink(lambda r: _fcm_error(503, "UNAVAILABLE", "try later", "UNAVAILABLE")) as sink:
        out = send(fcm(sink), [push(1)])
        assert len(sink.requests) == 3
    assert failure(out[1]) == (SOFT, "unreachable") and "HTTP 503" in out[1].detail


def test_push_refused_credentials_fail_every_message_soft() -> None:
    with http_sink(lambda r: _fcm_error(401, "UNAUTHENTICATED", "Request had invalid "
                                        "authentication credentials.")) as sink:
        out = send(fcm(sink, concurrency=2), [push(i) for i in range(10)])
        assert len(sink.requests) <= 2
    for o in out.values():
        assert failure(o) == (SOFT, "refused")
        assert "credentials" in o.detail and "HTTP 401" in o.detail


# --- throttling, concurrency, network ---------------------------------------------------------


def test_concurrency_limit_and_connection_reuse() -> None:
    with http_sink(lambda r: Reply(200, {"id": "x"}, delay=0.1)) as sink:
        out = send(generic(sink, concurrency=3), [sms(i) for i in range(12)])
        assert all(o.accepted for o in out.values())
        assert sink.max_in_flight == 3
        assert len(sink.connections) <= 3  # 12 requests over at most 3 connections


def test_send_from_several_tasks_shares_the_limits() -> None:
    with http_sink(lambda r: Reply(200, {"name": "n"}, delay=0.05)) as sink:
        transport = fcm(sink, concurrency=2)

        async def main() -> list[list[Outcome]]:
            try:
                return await asyncio.gather(*(transport.send([push(10 * k + i) for i in range(5)])
                                              for k in range(3)))
            finally:
                await transport.aclose()

        batches = asyncio.run(main())
        assert [len(b) for b in batches] == [5, 5, 5]
        assert all(o.accepted for b in batches for o in b)
        assert sink.max_in_flight == 2 and len(sink.connections) <= 2


def test_rate_limit() -> None:
    with http_sink(lambda r: Reply(200, {"id": "x"})) as sink:
        started = time.monotonic()
        out = send(generic(sink, rate=100, concurrency=8), [sms(i) for i in range(30)])
        elapsed = time.monotonic() - started
        assert all(o.accepted for o in out.values()) and len(sink.requests) == 30
        assert elapsed >= 0.25


def test_unreachable_server_gives_soft_unreachable_outcomes() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/sms"
    out = send(generic(url), [sms(1), sms(2), sms(3)])
    for o in out.values():
        assert failure(o) == (SOFT, "unreachable") and "no connection" in o.detail
    out = send(fcm_at(url), [push(1)])
    assert failure(out[1]) == (SOFT, "unreachable")


def fcm_at(url: str) -> HttpTransport:
    return push_transport(config(push_url=url, push_token="t"), retry_delays=FAST)


def test_no_answer_is_not_sent_twice() -> None:
    # The request reached the provider; it may have been delivered: at most once.
    with http_sink(lambda r: Reply(drop=True)) as sink:
        out = send(generic(sink), [sms(1)])
        assert len(sink.requests) == 1
    assert failure(out[1]) == (SOFT, "unreachable") and "may have been sent" in out[1].detail

    with http_sink(lambda r: Reply(200, {"id": "late"}, delay=0.6)) as sink:
        transport = sms_transport(config(sms_url=sink.url, sms_from="X"), retry_delays=FAST,
                                  timeout=0.2)
        out = send(transport, [sms(1)])
        assert len(sink.requests) == 1
    assert failure(out[1]) == (SOFT, "unreachable") and "ReadTimeout" in out[1].detail


def test_transport_can_be_used_again_after_aclose() -> None:
    with http_sink(lambda r: Reply(200, {"id": "x"})) as sink:
        transport = generic(sink)
        assert send(transport, [sms(1)])[1].accepted
        assert send(transport, [sms(2)])[2].accepted  # a new event loop, a new client
        assert send(transport, []) == {}


def test_request_recorder_reads_forms() -> None:
    r = Recorded("POST", "/", {}, b"To=%2B49&Body=a+b", 1)
    assert r.form() == {"To": "+49", "Body": "a b"}
