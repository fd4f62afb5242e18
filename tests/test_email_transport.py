"""The SMTP transport against a real aiosmtpd server on loopback (tests/smtp_sink.py)."""

from __future__ import annotations

import asyncio
import base64
import email
import math
import os
import re
import secrets
import shutil
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from email import policy
from pathlib import Path

import dkim
import pytest

from consentry.delivery.email_message import (
    DkimSigner,
    MessageBuilder,
    MessageError,
    build_message,
    fold,
    needs_smtputf8,
)
from consentry.delivery.email_transport import (
    SmtpTarget,
    SmtpTransport,
    is_throttling,
    parse_smtp_url,
)
from consentry.delivery.transport import Outcome, Outgoing
from consentry.domain.errors import ConsentryError
from consentry.domain.quarantine import FailureClass
from consentry.settings import SendingSettings
from smtp_sink import SmtpSink, free_port

FROM = "Consentry Shop <news@shop.example>"
FAST = SendingSettings(rate=0, concurrency=4, per_domain_rate=0)
DELAYS = (0.05, 0.1)


def outgoing(i: int, address: str | None = None, **kw: object) -> Outgoing:
    values: dict[str, object] = {
        "subject": f"Angebote für dich #{i}",
        "text": f"Hallo Jürgen,\nthis is message {i}.\n",
        "html": f"<p>Hallo J&uuml;rgen, message {i}</p>",
        "headers": {
            "List-Unsubscribe": f"<https://shop.example/u/tok{i}>, "
                                f"<mailto:u-{i}@bounces.shop.example>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "List-Id": '"Shop News" <news.bounces.shop.example>',
        },
        "envelope_from": f"b-{i}-x1@bounces.shop.example",
        "message_id": f"<7.{i}.abc@bounces.shop.example>",
    }
    values.update(kw)
    return Outgoing(i, address or f"user{i}@example.org", **values)  # type: ignore[arg-type]


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as server:
        yield server


def transport(url: str, sending: SendingSettings = FAST, *, delays: Sequence[float] = DELAYS,
              dkim_signer: DkimSigner | None = None) -> SmtpTransport:
    return SmtpTransport(parse_smtp_url(url), sending, email_from=FROM, dkim=dkim_signer,
                         retry_delays=delays)


def send(t: SmtpTransport, messages: Sequence[Outgoing]) -> list[Outcome]:
    async def run() -> list[Outcome]:
        try:
            return await t.send(messages)
        finally:
            await t.aclose()

    return asyncio.run(run())


def by_id(outcomes: list[Outcome]) -> dict[int, Outcome]:
    return {o.target_id: o for o in outcomes}


# --- URL -----------------------------------------------------------------------------------------

def test_parse_smtp_url() -> None:
    assert parse_smtp_url("smtp://relay.example:2525") == SmtpTarget("relay.example", 2525)
    t = parse_smtp_url("smtp://me%40x.org:p%3Ass@relay.example:587?starttls=1&timeout=5")
    assert (t.username, t.password, t.starttls, t.tls, t.timeout) == ("me@x.org", "p:ss", True,
                                                                     False, 5.0)
    assert "p:ss" not in repr(t) and "p:ss" not in str(t)
    s = parse_smtp_url("smtps://u:p@relay.example?verify=0&cafile=/etc/ca.pem")
    assert (s.port, s.tls, s.verify, s.cafile) == (465, True, False, "/etc/ca.pem")
    assert parse_smtp_url("smtp://relay.example").port == 25
    assert parse_smtp_url("smtp://relay.example?starttls=1").port == 587
    assert parse_smtp_url("smtp://[::1]:25").host == "::1"


@pytest.mark.parametrize(("url", "why"), [
    ("http://relay:25", "scheme"),
    ("relay.example:25", "scheme"),
    ("smtp://:25", "no host"),
    ("smtp://relay:port", "port"),
    ("smtp://relay:99999", "port"),
    ("smtp://user@relay:25", "password"),
    ("smtp://relay:25?tls=1", "unknown option"),
    ("smtp://relay:25?starttls=maybe", "starttls"),
    ("smtps://relay:465?starttls=1", "smtps"),
    ("smtp://relay:25/path", "path"),
    ("smtp://relay:25?timeout=-1", "timeout"),
])
def test_parse_smtp_url_errors(url: str, why: str) -> None:
    with pytest.raises(ConsentryError, match=why):
        parse_smtp_url(url)


def test_url_errors_hide_the_password() -> None:
    with pytest.raises(ConsentryError) as err:
        parse_smtp_url("smtp://me:secret@relay:25?bogus=1")
    assert "secret" not in str(err.value)


# --- building ------------------------------------------------------------------------------------

def test_message_has_every_header_and_both_parts() -> None:
    out = outgoing(1, subject="Größte Angebote \u2013 nur heute für dich, lieber Jürgen, mit einem "
                               "sehr langen Betreff")
    data = build_message(out, email_from=FROM)
    head = data.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert data.isascii()  # 7-bit clean: quoted-printable parts, encoded words
    msg = email.message_from_bytes(data, policy=policy.default)
    assert msg["From"] == FROM
    assert msg["To"] == "user1@example.org"
    assert msg["Subject"] == out.subject
    assert msg["Message-ID"] == "<7.1.abc@bounces.shop.example>"
    assert msg["List-Unsubscribe"] == out.headers["List-Unsubscribe"]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Id"] == '"Shop News" <news.bounces.shop.example>'
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"].datetime is not None
    assert msg.get_content_type() == "multipart/alternative"
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content().replace("\r\n", "\n") == out.text
    assert html.get_content().replace("\r\n", "\n") == out.html
    assert not msg.defects and not any(part.defects for part in msg.walk())


def test_text_only_message_and_odd_content() -> None:
    text = ".a line with a dot\r\nFrom the start\rtrailing space \n" + "x" * 200 + "\n=3D"
    data = build_message(outgoing(2, html=None, text=text, subject="Line\nbreak", headers={}),
                         email_from="plain@shop.example")
    msg = email.message_from_bytes(data, policy=policy.default)
    assert msg.get_content_type() == "text/plain"
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg["Subject"] == "Line break"
    assert msg.get_content().replace("\r\n", "\n") == text.replace("\r\n", "\n").replace(
        "\r", "\n")
    assert all(len(line) <= 78 for line in data.split(b"\r\n"))


def test_non_ascii_headers_and_addresses() -> None:
    out = outgoing(3, address="jürgen@xn--bcher-kva.example", message_id=None, headers={
        "List-Id": '"Größte \\"News\\"" <news.shop.example>'})
    builder = MessageBuilder("Bücher Laden <news@bücher.example>")
    assert builder.from_address == "news@xn--bcher-kva.example"
    data = builder.build(out)
    msg = email.message_from_bytes(data, policy=policy.SMTPUTF8)
    assert str(msg["From"]) == "Bücher Laden <news@xn--bcher-kva.example>"
    assert msg["To"] == "jürgen@xn--bcher-kva.example"  # RFC 6532: raw UTF-8
    assert str(msg["List-Id"]) == 'Größte "News" <news.shop.example>'
    assert re.fullmatch(r"<[0-9a-f]{32}@xn--bcher-kva\.example>", msg["Message-ID"])
    assert needs_smtputf8("jürgen@example.org")
    assert not needs_smtputf8("juergen@bücher.example", None)
    assert builder.envelope(out)[2] is True


@pytest.mark.parametrize("headers", [
    {"X-Evil": "a\r\nBcc: victim@example.org"},
    {"Bad Name": "x"},
    {"Subject": "again"},
    {"List-Unsubscribe": "<https://shop.example/ü>"},
])
def test_bad_headers_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(MessageError):
        build_message(outgoing(4, headers=headers), email_from=FROM)


def test_folding_is_lossless() -> None:
    value = "<https://shop.example/" + "a" * 40 + ">,  <mailto:u@b.example> word " * 3
    folded = fold("List-Unsubscribe", value)
    assert folded.replace("\r\n", "") == f"List-Unsubscribe: {value}"
    assert all(len(line) <= 78 or len(line.split()) <= 2 for line in folded.split("\r\n"))


def test_building_is_fast() -> None:
    builder = MessageBuilder(FROM)
    out = outgoing(5, text="Hallo Jürgen, das ist der Text.\n" * 40,
                   html="<p>Hallo J&uuml;rgen, das ist der Text.</p>\n" * 40)
    builder.build(out)
    n = 500
    start = time.perf_counter()
    for _ in range(n):
        builder.build(out)
    per_message = (time.perf_counter() - start) / n
    assert per_message < 1e-3, f"{per_message * 1e6:.0f} µs a message"  # ~100 µs here


def test_throttling_replies() -> None:
    assert is_throttling(421, "4.7.0 Try again later")
    assert is_throttling(451, "4.7.1 Rate limit exceeded")
    assert is_throttling(452, "4.5.3 Too many recipients")
    assert is_throttling(450, "4.7.28 Our system has detected an unusual rate of mail")
    assert not is_throttling(450, "4.2.1 Mailbox busy")
    assert not is_throttling(451, "4.3.0 Temporary local problem, please separate")
    assert not is_throttling(550, "5.7.1 too many complaints")


# --- sending to a real server ---------------------------------------------------------------------

def test_sends_every_header_over_smtp(sink: SmtpSink) -> None:
    messages = [outgoing(i) for i in range(5)]
    outcomes = by_id(send(transport(sink.url), messages))
    assert all(o.accepted for o in outcomes.values())
    assert outcomes[0].detail.startswith("250 2.0.0 Ok: queued as")
    assert outcomes[0].provider_id == "<7.0.abc@bounces.shop.example>"
    received = {r.rcpt_tos[0]: r for r in sink.messages}
    assert set(received) == {f"user{i}@example.org" for i in range(5)}
    got = received["user3@example.org"]
    assert got.mail_from == "b-3-x1@bounces.shop.example"  # the VERP return path
    assert any(o.startswith("SIZE=") for o in got.mail_options)
    msg = email.message_from_bytes(got.data, policy=policy.default)
    assert msg["List-Unsubscribe"] == ("<https://shop.example/u/tok3>, "
                                       "<mailto:u-3@bounces.shop.example>")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Id"] == '"Shop News" <news.bounces.shop.example>'
    assert msg["Message-ID"] == "<7.3.abc@bounces.shop.example>"
    assert msg["Subject"] == "Angebote für dich #3"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]


def test_message_without_envelope_sender_uses_from(sink: SmtpSink) -> None:
    text = "a line\n.\n..two dots\n.leading dot\n"
    send(transport(sink.url), [outgoing(1, envelope_from=None, text=text, html=None)])
    got = sink.messages[0]
    assert got.mail_from == "news@shop.example"
    msg = email.message_from_bytes(got.data, policy=policy.default)
    assert msg.get_content().replace("\r\n", "\n") == text  # dot-stuffing undone


def test_permanent_replies_fail_only_their_message(sink: SmtpSink) -> None:
    sink.reject("gone@example.org", "550 5.1.1 <gone@example.org>: Recipient address "
                                    "rejected: User unknown in virtual mailbox table")
    sink.reject("full@example.org", "552 5.2.2 <full@example.org>: Mailbox full")
    sink.reject("spam@example.org", "554 5.7.1 Message rejected as spam")
    messages = [outgoing(i) for i in range(10)] + [
        outgoing(100, "gone@example.org"), outgoing(101, "full@example.org"),
        outgoing(102, "spam@example.org")]
    outcomes = by_id(send(transport(sink.url, delays=(5, 5)), messages))
    assert all(outcomes[i].accepted for i in range(10))
    gone, full, spam = outcomes[100], outcomes[101], outcomes[102]
    assert (gone.accepted, gone.failure_class, gone.failure_reason) == (
        False, FailureClass.HARD, "user_unknown")
    assert gone.detail.startswith("550 5.1.1 <gone@example.org>: Recipient address rejected")
    assert gone.provider_id == "<7.100.abc@bounces.shop.example>"
    assert (full.failure_class, full.failure_reason) == (FailureClass.SOFT, "mailbox_full")
    assert (spam.failure_class, spam.failure_reason) == (FailureClass.SOFT, "refused")
    assert sink.count == 10
    assert sink.rcpt_commands("gone@example.org") == 1  # permanent: never retried


def test_transient_replies_are_retried(sink: SmtpSink) -> None:
    sink.reject("busy@example.org", "452 4.2.2 Mailbox full, try again later", times=2)
    sink.reject("greylisted@example.org", "450 4.2.0 Greylisted, see later")
    start = time.monotonic()
    outcomes = by_id(send(transport(sink.url), [outgoing(1, "busy@example.org"),
                                                outgoing(2, "greylisted@example.org"),
                                                outgoing(3)]))
    elapsed = time.monotonic() - start
    assert outcomes[1].accepted and outcomes[3].accepted
    assert sink.rcpt_commands("busy@example.org") == 3
    grey = outcomes[2]
    assert not grey.accepted and grey.failure_class is FailureClass.SOFT
    assert grey.failure_reason == "unreachable"
    assert grey.detail.startswith("450 4.2.0 Greylisted") and "3 attempts" in grey.detail
    assert sink.rcpt_commands("greylisted@example.org") == 3  # 1 + len(retry delays)
    assert elapsed >= sum(DELAYS)


def test_throttling_slows_down_and_every_message_arrives_once(sink: SmtpSink) -> None:
    sink.throttle_first(6)
    t = transport(sink.url)
    assert t.rate_limit is None  # unlimited
    messages = [outgoing(i) for i in range(60)]
    start = time.monotonic()

    async def run() -> tuple[list[Outcome], float | None]:
        try:
            outcomes = await t.send(messages)
            return outcomes, t.rate_limit
        finally:
            await t.aclose()

    outcomes, rate_after = asyncio.run(run())
    elapsed = time.monotonic() - start
    assert all(o.accepted for o in outcomes)
    ids = Counter(email.message_from_bytes(r.data)["Message-ID"] for r in sink.messages)
    assert len(ids) == 60 and set(ids.values()) == {1}  # all arrived, exactly once
    assert sink.mail_commands == 66
    assert t.throttled == 6
    assert rate_after is not None  # unlimited until throttled, now paced
    assert elapsed >= DELAYS[0]
    assert sink.connections >= 2  # each 421 closed its connection; the transport reconnected


def test_throttling_halves_a_configured_rate(sink: SmtpSink) -> None:
    sink.throttle_first(1)
    t = transport(sink.url, SendingSettings(rate=400, concurrency=2, per_domain_rate=0))

    async def run() -> float | None:
        try:
            await t.send([outgoing(i) for i in range(4)])
            return t.rate_limit
        finally:
            await t.aclose()

    rate = asyncio.run(run())
    assert rate is not None and 200 <= rate < 210  # halved, then a little back per success


def test_throttling_that_does_not_end_fails_soft(sink: SmtpSink) -> None:
    sink.throttling = True
    outcomes = send(transport(sink.url, delays=(0.02, 0.04)), [outgoing(i) for i in range(3)])
    for o in outcomes:
        assert not o.accepted
        assert (o.failure_class, o.failure_reason) == (FailureClass.SOFT, "unreachable")
        assert o.detail.startswith("421 4.7.0 Too many messages") and "3 attempts" in o.detail
    assert sink.mail_commands == 9
    assert sink.count == 0


def test_rate_limit(sink: SmtpSink) -> None:
    start = time.monotonic()
    outcomes = send(transport(sink.url, SendingSettings(rate=100, concurrency=4,
                                                        per_domain_rate=0)),
                    [outgoing(i) for i in range(50)])
    elapsed = time.monotonic() - start
    assert all(o.accepted for o in outcomes)
    assert elapsed >= 0.4, elapsed  # 50 messages at 100/s, a burst of 4 at most


def test_per_domain_rate_does_not_hold_up_other_domains(sink: SmtpSink) -> None:
    slow = [outgoing(i, f"user{i}@slow.example") for i in range(20)]
    fast = [outgoing(100 + i, f"user{i}@fast{i}.example") for i in range(20)]
    start = time.monotonic()
    outcomes = send(transport(sink.url, SendingSettings(rate=0, concurrency=4,
                                                        per_domain_rate=50)),
                    [m for pair in zip(slow, fast, strict=True) for m in pair])
    assert all(o.accepted for o in outcomes)
    arrivals: dict[str, list[float]] = {"slow": [], "fast": []}
    for r in sink.messages:
        arrivals["slow" if r.rcpt_tos[0].endswith("@slow.example") else "fast"].append(
            r.received_at - start)
    assert max(arrivals["slow"]) >= 0.3  # 20 messages at 50/s (a burst of 2)
    assert max(arrivals["fast"]) < max(arrivals["slow"]) - 0.1


def test_connections_are_reused_across_batches(sink: SmtpSink) -> None:
    t = transport(sink.url, SendingSettings(rate=0, concurrency=4, per_domain_rate=0))

    async def run() -> list[Outcome]:
        try:
            first = await t.send([outgoing(i) for i in range(200)])
            second = await t.send([outgoing(i) for i in range(200, 300)])
            both = await asyncio.gather(t.send([outgoing(i) for i in range(300, 350)]),
                                        t.send([outgoing(i) for i in range(350, 400)]))
            return first + second + both[0] + both[1]
        finally:
            await t.aclose()

    outcomes = asyncio.run(run())
    assert len(outcomes) == 400 and all(o.accepted for o in outcomes)
    assert sink.count == 400
    assert sink.connections <= 4
    assert t.connections_opened == sink.connections


def test_connections_closed_by_the_server_are_reopened(sink: SmtpSink) -> None:
    t = transport(sink.url)

    async def run() -> list[Outcome]:
        try:
            first = await t.send([outgoing(i) for i in range(20)])
            sink.drop_connections()
            await asyncio.sleep(0.05)
            return first + await t.send([outgoing(i) for i in range(20, 40)])
        finally:
            await t.aclose()

    outcomes = asyncio.run(run())
    assert all(o.accepted for o in outcomes)
    assert sink.count == 40
    assert sink.connections > 4 >= sink.connections - 4


def test_unreachable_relay_fails_soft_without_raising() -> None:
    url = f"smtp://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    outcomes = send(transport(url, delays=(0.02, 0.05)), [outgoing(i) for i in range(6)])
    elapsed = time.monotonic() - start
    assert len(outcomes) == 6
    for o in outcomes:
        assert not o.accepted
        assert (o.failure_class, o.failure_reason) == (FailureClass.SOFT, "unreachable")
        assert o.detail.startswith(f"relay {url} unreachable (3 connection attempts): "
                                   "Error connecting")
    assert elapsed >= 0.07  # both retry delays were waited for


def test_a_relay_coming_back_gets_the_waiting_messages() -> None:
    server = SmtpSink()  # its port is chosen, nothing listens there before start()

    async def run() -> list[Outcome]:
        t = transport(server.url, delays=(0.3, 1.0))
        try:
            task = asyncio.create_task(t.send([outgoing(i) for i in range(3)]))
            await asyncio.sleep(0.1)
            await asyncio.to_thread(server.start)
            return await task
        finally:
            await t.aclose()

    try:
        outcomes = asyncio.run(run())
    finally:
        server.stop()
    assert all(o.accepted for o in outcomes)
    assert server.count == 3


def test_invalid_message_fails_alone(sink: SmtpSink) -> None:
    outcomes = by_id(send(transport(sink.url), [
        outgoing(1, headers={"X-Bad": "line\nbreak"}), outgoing(2)]))
    assert outcomes[2].accepted
    bad = outcomes[1]
    assert (bad.accepted, bad.failure_class, bad.failure_reason) == (
        False, FailureClass.IGNORED, "message_invalid")
    assert "line break" in bad.detail
    assert sink.count == 1


def test_smtputf8_address() -> None:
    with SmtpSink() as sink:
        outcomes = send(transport(sink.url), [outgoing(1, "jürgen@example.org")])
        assert outcomes[0].accepted
        got = sink.messages[0]
        assert got.rcpt_tos == ["jürgen@example.org"]
        assert "SMTPUTF8" in got.mail_options
        assert "To: jürgen@example.org".encode() in got.data
    with SmtpSink(smtputf8=False) as sink:
        outcomes = send(transport(sink.url), [outgoing(1, "jürgen@example.org"), outgoing(2)])
        bad, good = by_id(outcomes)[1], by_id(outcomes)[2]
        assert good.accepted
        assert (bad.failure_class, bad.failure_reason) == (FailureClass.IGNORED,
                                                           "message_invalid")
        assert "SMTPUTF8" in bad.detail


# --- DKIM ----------------------------------------------------------------------------------------

_SMALL_PRIMES = [p for p in range(3, 2000, 2) if all(p % d for d in range(3, int(p**0.5) + 1, 2))]


def _probable_prime(n: int) -> bool:
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(20):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int) -> int:
    while True:
        candidate = secrets.randbits(bits) | (3 << (bits - 2)) | 1
        if all(candidate % p for p in _SMALL_PRIMES) and _probable_prime(candidate):
            return candidate


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes([n]) if n < 128 else (
        bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8))
    return bytes([tag]) + length + body


def _int(v: int) -> bytes:
    return _der(0x02, v.to_bytes(v.bit_length() // 8 + 1, "big"))


def rsa_key(bits: int = 1024) -> tuple[bytes, bytes]:
    """A fresh RSA key in pure Python: (PKCS#1 private key PEM, the DKIM DNS TXT record)."""
    e = 65537
    while True:
        p, q = _prime(bits // 2), _prime(bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and math.gcd(e, phi) == 1:
            break
    n, d = p * q, pow(e, -1, phi)
    private = _der(0x30, b"".join(_int(v) for v in (
        0, n, e, d, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p))))
    pem = (b"-----BEGIN RSA PRIVATE KEY-----\n" + base64.encodebytes(private)
           + b"-----END RSA PRIVATE KEY-----\n")
    rsa_oid = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010101")) + b"\x05\x00")
    spki = _der(0x30, rsa_oid + _der(0x03, b"\x00" + _der(0x30, _int(n) + _int(e))))
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki)


@pytest.fixture(scope="module")
def dkim_key() -> tuple[bytes, bytes]:
    return rsa_key()


def test_dkim_signature_verifies(sink: SmtpSink, dkim_key: tuple[bytes, bytes]) -> None:
    pem, record = dkim_key
    signer = DkimSigner("s2026", "shop.example", pem)
    outcomes = send(transport(sink.url, dkim_signer=signer), [outgoing(1), outgoing(
        2, html=None, headers={}, subject="Schöne Grüße")])
    assert all(o.accepted for o in outcomes)
    asked: list[bytes] = []

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        asked.append(name)
        return record if name == b"s2026._domainkey.shop.example." else None

    for got in sink.messages:
        assert got.data.startswith(b"DKIM-Signature: ")
        assert dkim.verify(got.data, dnsfunc=dns)
    assert asked and set(asked) == {b"s2026._domainkey.shop.example."}
    with_list = next(r for r in sink.messages if r.rcpt_tos == ["user1@example.org"])
    fields = dict(dkim.util.parse_tag_value(
        re.search(rb"^DKIM-Signature: (.*?)\r\n(?! )", with_list.data, re.S | re.M)
        .group(1)))  # type: ignore[union-attr]
    signed = {h.strip().lower() for h in fields[b"h"].split(b":")}
    assert {b"from", b"to", b"subject", b"date", b"message-id", b"list-unsubscribe",
            b"list-unsubscribe-post", b"list-id", b"mime-version", b"content-type"} <= signed
    assert (fields[b"d"], fields[b"s"], fields[b"c"]) == (b"shop.example", b"s2026",
                                                          b"relaxed/relaxed")
    # Changing a signed header, or adding a second List-Unsubscribe, breaks the signature.
    tampered = with_list.data.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
                                      b"List-Unsubscribe-Post: List-Unsubscribe=Two-Clicks")
    assert not dkim.verify(tampered, dnsfunc=dns)
    added = with_list.data.replace(b"\r\nMIME-Version:",
                                   b"\r\nList-Unsubscribe: <https://evil.example/>\r\n"
                                   b"MIME-Version:", 1)
    assert not dkim.verify(added, dnsfunc=dns)


def test_dkim_from_settings(tmp_path: Path, dkim_key: tuple[bytes, bytes]) -> None:
    assert DkimSigner.from_settings(SendingSettings()) is None
    with pytest.raises(ConsentryError, match="missing: dkim_domain, dkim_key_file"):
        DkimSigner.from_settings(SendingSettings(dkim_selector="s1"))
    key_file = tmp_path / "dkim.pem"
    with pytest.raises(ConsentryError, match="cannot read the DKIM key file"):
        DkimSigner.from_settings(SendingSettings(dkim_selector="s1", dkim_domain="shop.example",
                                                 dkim_key_file=str(key_file)))
    key_file.write_bytes(b"not a key")
    with pytest.raises(ConsentryError, match="not a PEM RSA private key"):
        DkimSigner.from_settings(SendingSettings(dkim_selector="s1", dkim_domain="shop.example",
                                                 dkim_key_file=str(key_file)))
    key_file.write_bytes(dkim_key[0])
    signer = DkimSigner.from_settings(SendingSettings(
        dkim_selector="s1", dkim_domain="shop.example", dkim_key_file=str(key_file)))
    assert signer is not None and (signer.selector, signer.domain) == ("s1", "shop.example")


# --- TLS and AUTH --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("the openssl command is needed to make a test certificate "
                        "(.ci/run installs it)")
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


# Why the ignore: when our client refuses the relay's certificate it resets the connection in
# the middle of the STARTTLS handshake, and aiosmtpd (the test server, not our code) then drops
# its side's transport without closing it; whenever the garbage collector finds it, a
# ResourceWarning is raised inside this test. Our client's own connections are checked by the
# other tests, which keep warnings as errors.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_starttls_and_auth(certificate: tuple[Path, Path]) -> None:
    with SmtpSink(tls_context=_server_context(certificate),
                  credentials=("mailer", "s3cret:pw")) as sink:
        base = f"127.0.0.1:{sink.port}?starttls=1&cafile={certificate[0]}"
        ok = send(transport(f"smtp://mailer:s3cret%3Apw@{base}"), [outgoing(1), outgoing(2)])
        assert all(o.accepted for o in ok)
        assert sink.count == 2
        bad = send(transport(f"smtp://mailer:wrong@{base}", delays=(0.02,)), [outgoing(3)])
        assert (bad[0].accepted, bad[0].failure_reason) == (False, "unreachable")
        assert "535" in bad[0].detail and sink.auth_failures >= 1
        # The relay's certificate is checked: without the CA it is refused.
        untrusted = send(transport(f"smtp://mailer:s3cret%3Apw@127.0.0.1:{sink.port}"
                                   "?starttls=1", delays=(0.02,)), [outgoing(4)])
        assert not untrusted[0].accepted and "certificate" in untrusted[0].detail.lower()
        assert sink.count == 2


def test_implicit_tls(certificate: tuple[Path, Path]) -> None:
    with SmtpSink(implicit_tls=_server_context(certificate)) as sink:
        outcomes = send(transport(f"smtps://127.0.0.1:{sink.port}?cafile={certificate[0]}"),
                        [outgoing(1)])
        assert outcomes[0].accepted
        assert sink.count == 1
