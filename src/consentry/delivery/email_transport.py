"""The email transport: deliveries over SMTP to a relay (smarthost), with connection reuse,
parallel connections, rate limits, back-off on throttling and retries.

How a batch goes out. `send()` puts its messages on a queue shared by every call (the sending
loop may run several batches at once) and waits for one Outcome each. Up to
`sending.concurrency` worker tasks, each owning at most one SMTP connection that stays open
between batches, take the messages that are due and send each in its own transaction
(MAIL, RCPT, DATA), so a refused recipient fails that message only.

Limits. A global GCRA token bucket at `sending.rate` msg/s paces the transactions, and a bucket
per recipient domain at `sending.per_domain_rate` defers a message whose domain has no token
(without holding up messages to other domains). 0 means unlimited for both.

Throttling (a 421, or a 4.7.x/451/452 reply that says "too many", "rate" or "throttl"): the
global rate is halved (multiplicative decrease, once per congestion event; unlimited first
becomes half the observed rate), the recipient's domain is paused for the retry delay, and the
message is tried again after `retry_delays[i]`. Every success gives some rate back (additive
increase: about a twentieth of the ceiling per second of sending). Other transient replies
(4xx) are retried the same way without slowing down. After the last retry the message fails
with `classify_reply`'s class and reason (soft, usually `unreachable`). Permanent replies
(5xx) fail at once with `classify_reply`'s verdict.

The relay being unreachable (refused, TLS or AUTH failure, timeout) is counted per relay, not
per message: connecting is retried after each of `retry_delays` while messages wait, and when
the last try fails every waiting message of the batches in progress fails soft `unreachable`
("relay ... unreachable: ..."); the next `send()` call tries again from the start.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import re
import socket
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

import aiosmtplib
from aiosmtplib import (
    SMTPException,
    SMTPHeloError,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from consentry.delivery.email_message import (
    DkimSigner,
    MessageBuilder,
    MessageError,
    build_message,
)
from consentry.delivery.transport import Outcome, Outgoing
from consentry.domain.errors import ConsentryError
from consentry.domain.failures import Classified, classify_reply, enhanced_status
from consentry.domain.quarantine import FailureClass
from consentry.settings import SendingSettings

__all__ = ["DkimSigner", "SmtpTarget", "SmtpTransport", "build_message", "parse_smtp_url"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_QUERY_KEYS = ("starttls", "verify", "cafile", "timeout")


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    """Where and how to connect: parsed from `smtp://[user:pass@]host[:port][?starttls=1]` or
    `smtps://...` (TLS from the start). Query parameters: starttls=1|0, verify=0 (do not check
    the relay's certificate), cafile=/path/to/ca.pem, timeout=seconds (default 30)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False  # implicit TLS (smtps://)
    starttls: bool = False
    verify: bool = True
    cafile: str | None = None
    timeout: float = 30.0

    def __str__(self) -> str:
        scheme = "smtps" if self.tls else "smtp"
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{user}{host}:{self.port}" + ("?starttls=1" if self.starttls else "")


def _redact(url: str) -> str:
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


def parse_smtp_url(url: str) -> SmtpTarget:
    """The relay named by CONSENTRY_SMTP_URL; ConsentryError saying what is wrong otherwise."""
    shown = _redact(url.strip())

    def bad(why: str) -> ConsentryError:
        return ConsentryError(f"invalid SMTP relay URL {shown!r}: {why} (expected "
                              "smtp://[user:password@]host:port[?starttls=1] or smtps://...)")

    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise bad(str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in ("smtp", "smtps"):
        raise bad("the scheme must be smtp:// or smtps://")
    if not parts.hostname:
        raise bad("no host")
    if parts.path not in ("", "/") or parts.fragment:
        raise bad("unexpected path")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if username and password is None:
        raise bad("a user needs a password (user:password@host)")
    if password is not None and not username:
        raise bad("a password needs a user")
    options: dict[str, str] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise bad("malformed query") from None
    for key, value in pairs:
        if key not in _QUERY_KEYS:
            raise bad(f"unknown option {key!r} (known: {', '.join(_QUERY_KEYS)})")
        options[key] = value

    def flag(key: str, default: bool) -> bool:
        value = options.get(key)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise bad(f"{key} must be 1 or 0")

    starttls = flag("starttls", False)
    tls = scheme == "smtps"
    if tls and starttls:
        raise bad("smtps:// is TLS from the start; starttls=1 is for smtp://")
    timeout = 30.0
    if "timeout" in options:
        try:
            timeout = float(options["timeout"])
        except ValueError:
            raise bad("timeout must be a number of seconds") from None
        if not (timeout > 0 and math.isfinite(timeout)):
            raise bad("timeout must be positive")
    if port is None:
        port = 465 if tls else 587 if starttls else 25
    if port == 0:
        raise bad("port 0")
    return SmtpTarget(host=parts.hostname, port=port, username=username, password=password,
                      tls=tls, starttls=starttls, verify=flag("verify", True),
                      cafile=options.get("cafile") or None, timeout=timeout)


# --- replies -------------------------------------------------------------------------------

_THROTTLE_TEXT = re.compile(r"too many|\brate\b|rate.?limit|throttl|slow(ing)? down", re.I)


def is_throttling(code: int, text: str) -> bool:
    """A 421, or a 4.7.x/451/452 reply about sending too much or too fast."""
    if code == 421:
        return True
    if not 400 <= code < 500:
        return False
    status = enhanced_status(text) or ""
    return (code in (451, 452) or status.startswith("4.7.")) and bool(_THROTTLE_TEXT.search(text))


def _reply_text(code: int, text: str) -> str:
    return f"{code} {' '.join(text.split())}".strip()


_UNREACHABLE = Classified(FailureClass.SOFT, "unreachable", None)
_INVALID = Classified(FailureClass.IGNORED, "message_invalid", None)


# --- rate limits ---------------------------------------------------------------------------

class _Bucket:
    """A token bucket as GCRA: `reserve` books the next slot and says how long to wait."""

    __slots__ = ("burst", "rate", "tat")

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.tat = 0.0  # theoretical arrival time of the next message

    def reserve(self, now: float) -> float:
        interval = 1.0 / self.rate
        slot = max(now, self.tat - (self.burst - 1.0) * interval)
        self.tat = max(self.tat, slot) + interval
        return slot - now


class _Pacer:
    """The global rate with AIMD: halve on throttling, give back a little on every success.
    It never goes below 1/32 of where it started (nor below 1 msg/s): under throttling that
    does not end, the retry delays and the paused domains do the rest."""

    MIN_RATE = 1.0
    MAX_DECREASE = 32.0

    def __init__(self, rate: float, concurrency: int) -> None:
        self.ceiling = rate if rate > 0 else None
        self.rate: float | None = self.ceiling  # None: unlimited
        burst = max(1.0, min(float(concurrency), (rate or 0.0) * 0.05))
        self.bucket = _Bucket(self.ceiling or 1.0, burst)
        self.concurrency = concurrency
        self.reference: float | None = None  # the observed rate at the first throttling
        self.decreased_at = -math.inf
        self.starts: deque[float] = deque(maxlen=64)

    def reserve(self, now: float) -> float:
        self.starts.append(now)
        if self.rate is None:
            return 0.0
        self.bucket.rate = self.rate
        return self.bucket.reserve(now)

    def observed(self, now: float, latency: float) -> float:
        """The rate reached lately; with too few transactions to tell, what `concurrency`
        connections reach at this transaction's latency."""
        if len(self.starts) >= 8 and now > self.starts[0]:
            return (len(self.starts) - 1) / (now - self.starts[0])
        return self.concurrency / max(latency, 1e-3)

    def on_throttle(self, started: float, now: float) -> None:
        if started < self.decreased_at:
            return  # this transaction began before we last slowed down: same congestion
        base = self.rate if self.rate is not None else self.observed(now, now - started)
        if self.ceiling is None and self.reference is None:
            self.reference = base
        start = self.ceiling if self.ceiling is not None else self.reference or base
        floor = max(min(self.MIN_RATE, start), start / self.MAX_DECREASE)
        self.rate = max(floor, base / 2.0)
        self.decreased_at = now

    def on_success(self) -> None:
        if self.rate is None:
            return
        top = self.ceiling if self.ceiling is not None else 2.0 * (self.reference or 1.0)
        # Each success adds step/rate: sending at the current rate, that is `step` msg/s more
        # every second, so a halved rate is back at its ceiling in about ten seconds.
        self.rate = min(top, self.rate + (top / 20.0) / self.rate)
        if self.ceiling is None and self.rate >= top:
            self.rate = None
            self.reference = None


@dataclass(slots=True)
class _Domain:
    bucket: _Bucket | None
    paused_until: float = 0.0


# --- the relay and connections ---------------------------------------------------------------

class _Relay:
    """Connection failures count for the relay, not for the messages waiting on it."""

    def __init__(self) -> None:
        self.failures = 0
        self.down_until = 0.0
        self.dead = False
        self.last_error = ""

    def on_failure(self, error: str, now: float, delays: Sequence[float]) -> None:
        self.last_error = error
        if self.dead or now < self.down_until:
            return  # a failure of a connection attempt made in the same round
        self.failures += 1
        if self.failures > len(delays):
            self.dead = True
        else:
            self.down_until = now + delays[self.failures - 1]

    def on_success(self) -> None:
        self.failures = 0
        self.down_until = 0.0
        self.dead = False

    def new_batch(self) -> None:
        if self.dead:
            self.on_success()


class _Conn:
    __slots__ = ("closed", "idle_since", "sent", "smtp")

    def __init__(self, smtp: aiosmtplib.SMTP) -> None:
        self.smtp = smtp
        self.sent = 0  # transactions tried on this connection
        self.idle_since = time.monotonic()
        self.closed = False


@dataclass(slots=True, eq=False)
class _Item:
    out: Outgoing
    future: asyncio.Future[Outcome]
    domain: str
    data: bytes | None = None
    sender: str = ""
    recipient: str = ""
    utf8: bool = False
    message_id: str | None = None
    attempts: int = 0  # failed tries that count against retry_delays
    free_retries: int = 0  # retries after a pooled connection turned out to be dead
    domain_slot: float | None = None


class _Stop(Exception):
    """The transport is closing: the worker ends."""


class SmtpTransport:
    """Sends email deliveries to an SMTP relay (implements delivery.transport.Transport)."""

    channel = "email"
    idle_timeout = 30.0  # seconds a pooled connection may stay unused before QUIT

    def __init__(self, target: SmtpTarget, sending: SendingSettings, *, email_from: str,
                 dkim: DkimSigner | None = None,
                 retry_delays: Sequence[float] = (1, 4, 15)) -> None:
        self.target = target
        self.sending = sending
        self.retry_delays = tuple(float(d) for d in retry_delays)
        if any(d < 0 or not math.isfinite(d) for d in self.retry_delays):
            raise ConsentryError("retry delays must be non-negative numbers of seconds")
        self.builder = MessageBuilder(email_from, dkim)  # checks email_from
        self.concurrency = max(1, int(sending.concurrency))
        self._domain_rate = float(sending.per_domain_rate)
        self._domain_burst = max(1.0, min(float(self.concurrency), self._domain_rate * 0.05))
        self._local_hostname: str | None = None
        # Counters, for reports and tests.
        self.connections_opened = 0
        self.throttled = 0
        self.retried = 0
        self._reset()

    def _reset(self) -> None:
        self._pacer = _Pacer(float(self.sending.rate), self.concurrency)
        self._domains: dict[str, _Domain] = {}
        self._relay = _Relay()
        self._heap: list[tuple[float, int, _Item]] = []
        self._seq = itertools.count()
        self._wakeup: asyncio.Event | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._live = 0  # open connections

    @property
    def rate_limit(self) -> float | None:
        """The global rate in force now (msg/s), lowered by throttling; None: unlimited."""
        return self._pacer.rate

    # --- the Transport interface -----------------------------------------------------------

    async def send(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        if not messages:
            return []
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._start(loop)
        if self._closing:
            raise ConsentryError("the SMTP transport is closing")
        self._relay.new_batch()
        now = time.monotonic()
        if len(self._domains) > 10_000:
            self._prune_domains(now)
        items = []
        for out in messages:
            item = _Item(out, loop.create_future(), out.address.rpartition("@")[2].lower())
            items.append(item)
            self._push(item, now)
        self._wake()
        return list(await asyncio.gather(*(item.future for item in items)))

    async def aclose(self) -> None:
        """QUIT every connection and stop the workers; messages still waiting fail with
        ConsentryError in their send() call. The transport can be used again afterwards."""
        workers = self._workers
        if self._loop is not None and self._loop is asyncio.get_running_loop() and workers:
            self._closing = True
            self._wake()
            _, pending = await asyncio.wait(workers, timeout=5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        for _, _, item in self._heap:
            if not item.future.done():
                item.future.set_exception(ConsentryError("the SMTP transport was closed"))
        self._reset()

    # --- scheduling --------------------------------------------------------------------------

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None:  # used from a new event loop: what the old one had is gone
            self._reset()
        self._loop = loop
        self._wakeup = asyncio.Event()
        self._workers = [loop.create_task(self._worker(), name=f"smtp-worker-{i}")
                         for i in range(self.concurrency)]

    def _push(self, item: _Item, at: float) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), item))

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _prune_domains(self, now: float) -> None:
        self._domains = {name: d for name, d in self._domains.items()
                         if d.paused_until > now or (d.bucket is not None and d.bucket.tat > now)}

    def _domain_gate(self, item: _Item, now: float) -> float:
        """When the item's domain can take it: `now`, or a later time to try again."""
        domain = self._domains.get(item.domain)
        if domain is None:
            bucket = _Bucket(self._domain_rate, self._domain_burst) if self._domain_rate > 0 \
                else None
            domain = self._domains[item.domain] = _Domain(bucket)
        if domain.paused_until > now:
            item.domain_slot = None
            return domain.paused_until
        if domain.bucket is None:
            return now
        if item.domain_slot is not None:
            item.domain_slot = None
            return now  # its booked slot has come
        wait = domain.bucket.reserve(now)
        if wait <= 0:
            return now
        item.domain_slot = now + wait
        return now + wait

    async def _next_item(self, conn: _Conn | None) -> tuple[_Item, _Conn | None]:
        assert self._wakeup is not None
        while True:
            if self._closing:
                raise _Stop
            now = time.monotonic()
            timeout: float | None = None
            if self._heap:
                at, _, item = self._heap[0]
                if at <= now:
                    heapq.heappop(self._heap)
                    if item.future.done():
                        continue  # its send() was cancelled
                    gate = self._domain_gate(item, now)
                    if gate > now:
                        self._push(item, gate)
                        continue
                    return item, conn
                timeout = at - now
            if conn is not None:
                idle_left = conn.idle_since + self.idle_timeout - now
                if idle_left <= 0:
                    await self._quit(conn)
                    conn = None
                    continue
                timeout = idle_left if timeout is None else min(timeout, idle_left)
            self._wakeup.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    async def _worker(self) -> None:
        conn: _Conn | None = None
        item: _Item | None = None
        try:
            while True:
                item, conn = await self._next_item(conn)
                try:
                    conn = await self._attempt(conn, item)
                except Exception as exc:  # a bug, not a delivery problem: the batch fails
                    if not item.future.done():
                        item.future.set_exception(exc)
                    self._discard(conn)
                    conn = None
                if conn is not None:
                    conn.idle_since = time.monotonic()
                item = None
        except _Stop:
            pass
        finally:
            if item is not None and not item.future.done():
                item.future.set_exception(ConsentryError("the SMTP transport was closed"))
            if conn is not None:
                await self._quit(conn)

    # --- one message ---------------------------------------------------------------------------

    def _resolve(self, item: _Item, outcome: Outcome) -> None:
        if not item.future.done():
            item.future.set_result(outcome)

    def _fail(self, item: _Item, verdict: Classified, detail: str, *,
              about_address: bool = True) -> None:
        self._resolve(item, Outcome(item.out.target_id, False, detail, verdict.klass,
                                    verdict.reason, item.message_id, about_address))

    def _prepare(self, item: _Item) -> bool:
        try:
            item.message_id = self.builder.message_id(item.out)
            item.sender, item.recipient, item.utf8 = self.builder.envelope(item.out)
            item.data = self.builder.build(item.out, item.message_id)
        except MessageError as exc:
            self._fail(item, _INVALID, f"message not sent: {exc}")
            return False
        return True

    async def _attempt(self, conn: _Conn | None, item: _Item) -> _Conn | None:
        if item.data is None and not self._prepare(item):
            return conn
        if conn is not None and (conn.closed or not conn.smtp.is_connected):
            self._discard(conn)
            conn = None
        if conn is None:
            conn = await self._connect(item)
            if conn is None:
                return None
        if item.utf8 and not conn.smtp.supports_extension("smtputf8"):
            self._fail(item, _INVALID, f"relay {self.target} does not support SMTPUTF8, "
                                       "needed for this non-ASCII address")
            return conn
        wait = self._pacer.reserve(time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)
        return await self._transact(conn, item)

    async def _transact(self, conn: _Conn, item: _Item) -> _Conn | None:
        assert item.data is not None
        smtp = conn.smtp
        options = []
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(item.data)}")
        encoding = "ascii"
        if item.utf8:
            encoding = "utf-8"
            options.append("SMTPUTF8")
            if smtp.supports_extension("8bitmime"):
                options.append("BODY=8BITMIME")
        reused = conn.sent > 0
        conn.sent += 1
        started = time.monotonic()
        stage = "MAIL"
        try:
            await smtp.mail(item.sender, options=options, encoding=encoding)
            stage = "RCPT"
            await smtp.rcpt(item.recipient, encoding=encoding)
            stage = "DATA"
            reply = await smtp.data(item.data)
        except SMTPResponseException as exc:
            kept: _Conn | None = None
            if exc.code == 421 or not smtp.is_connected:
                self._discard(conn)
            else:
                kept = await self._rset(conn)
            self._on_reply(item, exc.code, exc.message, stage, started)
            return kept
        except (SMTPServerDisconnected, SMTPTimeoutError, OSError) as exc:
            self._discard(conn)
            if reused and stage == "MAIL" and item.free_retries == 0:
                # A pooled connection the relay had closed: try again on a new one.
                item.free_retries += 1
                self._push(item, time.monotonic())
                self._wake()
            else:
                self._retry(item, None, f"connection to the relay lost during {stage}: "
                                        f"{_describe(exc)}", throttled=False)
            return None
        except ValueError as exc:  # aiosmtplib refuses an address it cannot send safely
            self._fail(item, _INVALID, f"message not sent: {exc}")
            return await self._rset(conn)
        self._pacer.on_success()
        self._relay.on_success()
        self._resolve(item, Outcome(item.out.target_id, True, _reply_text(reply.code,
                                    reply.message), provider_id=item.message_id))
        return conn

    def _on_reply(self, item: _Item, code: int, text: str, stage: str, started: float) -> None:
        detail = _reply_text(code, text)
        if 400 <= code < 500:
            throttled = is_throttling(code, text)
            if throttled:
                self.throttled += 1
                self._pacer.on_throttle(started, time.monotonic())
            self._retry(item, code, detail, throttled=throttled, text=text)
            return
        verdict = classify_reply(code, text)
        if stage == "MAIL" and verdict.klass is FailureClass.HARD:
            # The relay refused our sender, not the recipient: never the address's fault.
            verdict = Classified(FailureClass.SOFT, "refused", verdict.status)
        if stage == "MAIL":
            detail += " (MAIL FROM refused)"
        self._fail(item, verdict, detail, about_address=stage != "MAIL")

    def _retry(self, item: _Item, code: int | None, detail: str, *, throttled: bool,
               text: str = "") -> None:
        item.attempts += 1
        now = time.monotonic()
        if item.attempts > len(self.retry_delays):
            verdict = classify_reply(code, text) if code is not None else _UNREACHABLE
            if verdict.klass is FailureClass.HARD:  # a transient reply: never hard
                verdict = Classified(FailureClass.SOFT, verdict.reason, verdict.status)
            tries = item.attempts
            self._fail(item, verdict, f"{detail} (gave up after {tries} "
                                      f"attempt{'s' if tries > 1 else ''})")
            return
        self.retried += 1
        delay = self.retry_delays[item.attempts - 1]
        if throttled:
            domain = self._domains.get(item.domain)
            if domain is not None:
                domain.paused_until = max(domain.paused_until, now + delay)
        self._push(item, now + delay)
        self._wake()

    # --- connections ---------------------------------------------------------------------------

    async def _connect(self, item: _Item) -> _Conn | None:
        """A new connection; None when there is none to have (the item was dealt with)."""
        relay = self._relay
        while True:
            now = time.monotonic()
            if relay.dead:
                self._fail(item, _UNREACHABLE, f"relay {self.target} unreachable "
                                               f"({relay.failures} connection attempts): "
                                               f"{relay.last_error}", about_address=False)
                return None
            if relay.down_until > now:
                await asyncio.sleep(relay.down_until - now)
                if self._closing:
                    self._push(item, time.monotonic())
                    return None
                continue
            if self._local_hostname is None:
                self._local_hostname = await asyncio.to_thread(socket.getfqdn)
            target = self.target
            smtp = aiosmtplib.SMTP(
                hostname=target.host, port=target.port, username=target.username,
                password=target.password, use_tls=target.tls, start_tls=target.starttls,
                validate_certs=target.verify, cert_bundle=target.cafile,
                timeout=target.timeout, local_hostname=self._local_hostname)
            try:
                await smtp.connect()
                if smtp.is_ehlo_or_helo_needed:
                    try:
                        await smtp.ehlo()
                    except SMTPHeloError:
                        await smtp.helo()
            except (SMTPException, OSError) as exc:
                smtp.close()
                error = _describe(exc)
                if self._live > 0:
                    # Others are connected (the relay may cap connections per client): leave
                    # the message to them and back off.
                    relay.last_error = error
                    self._push(item, time.monotonic())
                    self._wake()
                    await asyncio.sleep(self.retry_delays[0] if self.retry_delays else 1.0)
                    return None
                relay.on_failure(error, time.monotonic(), self.retry_delays)
                continue
            self._live += 1
            self.connections_opened += 1
            relay.on_success()
            return _Conn(smtp)

    def _discard(self, conn: _Conn | None) -> None:
        if conn is not None and not conn.closed:
            conn.closed = True
            self._live -= 1
            conn.smtp.close()

    async def _rset(self, conn: _Conn) -> _Conn | None:
        try:
            await conn.smtp.rset()
        except (SMTPException, OSError):
            self._discard(conn)
            return None
        return conn

    async def _quit(self, conn: _Conn) -> None:
        if conn.closed:
            return
        try:
            if conn.smtp.is_connected:
                await asyncio.wait_for(conn.smtp.quit(), 2.0)
        except (SMTPException, OSError, TimeoutError):
            pass
        finally:
            self._discard(conn)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SMTPResponseException):
        return _reply_text(exc.code, exc.message)
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
