"""SMS over HTTP: a generic JSON connector, or a Twilio-compatible REST API.

This module also holds what the push transport shares with it (`HttpTransport`): one httpx client
that reuses its connections, at most `sending.concurrency` requests in flight, a token bucket at
`sending.rate` requests per second over every task that calls `send`, and retries with back-off
for answers that say "later" (429, 5xx) and for connections that could not be made.

At most once: a request that was written but got no answer (read timeout, connection dropped)
is not sent again, because the provider may have taken it and a second SMS or push costs money
and annoys; it fails soft `unreachable` with a detail saying so.

Failures are mapped to domain.md section 4's taxonomy; the sending loop feeds them to the
quarantine state machine. Rejected credentials are our problem, not the address's: the whole
batch fails soft `refused` (never counts towards quarantine) and no further request is made.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import httpx

from consentry.delivery.transport import Outcome, Outgoing
from consentry.domain.errors import ConsentryError
from consentry.domain.quarantine import REASON_CLASS, FailureClass
from consentry.settings import SendingSettings, Settings

DEFAULT_RETRY_DELAYS: tuple[float, ...] = (0.5, 2.0, 8.0)
DEFAULT_MAX_RETRY_AFTER = 30.0  # a longer Retry-After gives up at once instead of waiting
DEFAULT_TIMEOUT = 30.0
USER_AGENT = "consentry"
_DETAIL_MAX = 300


# --- shared HTTP machinery -------------------------------------------------------------------


class TokenBucket:
    """At most `rate` acquisitions per second over all tasks, bursts up to `burst` (0: no limit).

    Each caller reserves the next free slot and then sleeps until it; the reservation has no
    `await` inside, so concurrent asyncio tasks need no lock."""

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self._next = 0.0  # time.monotonic() of the next free slot

    async def acquire(self) -> None:
        if self.rate <= 0:
            return
        interval = 1.0 / self.rate
        now = time.monotonic()
        slot = max(self._next, now - (self.burst - 1.0) * interval)
        self._next = slot + interval
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one HTTP answer (or the lack of one) means for its message."""

    accepted: bool
    detail: str
    reason: str | None = None
    klass: FailureClass | None = None
    provider_id: str | None = None
    retry: bool = False  # transient: try again after a back-off; when out of tries, fail so
    credentials: bool = False  # our credentials were refused: fail the whole batch


def accepted(detail: str, provider_id: str | None = None) -> Verdict:
    return Verdict(True, detail, provider_id=provider_id)


def failed(reason: str, detail: str, klass: FailureClass | None = None) -> Verdict:
    return Verdict(False, detail, reason, klass or REASON_CLASS.get(reason, FailureClass.SOFT))


def transient(detail: str) -> Verdict:
    return Verdict(False, detail, "unreachable", FailureClass.SOFT, retry=True)


def credentials_refused(detail: str, setting: str) -> Verdict:
    return Verdict(False, f"{detail}: the provider refused our credentials (check {setting}); "
                          "not the address's fault", "refused", FailureClass.SOFT,
                   credentials=True)


def short(text: str, limit: int = _DETAIL_MAX) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def json_body(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content) if response.content else None
    except (ValueError, UnicodeDecodeError):
        return None


def body_snippet(response: httpx.Response, limit: int = 120) -> str:
    try:
        return short(response.text, limit)
    except (UnicodeDecodeError, LookupError):
        return f"{len(response.content)} bytes"


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def http_url(value: str, setting: str) -> str:
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConsentryError(f"{setting}: not a URL ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConsentryError(f"{setting} must be an http:// or https:// URL, not {value!r}")
    return value


# Errors raised before the request could have reached the provider: safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError,
             httpx.WriteError, httpx.WriteTimeout)


class _BatchState:
    __slots__ = ("refused",)

    def __init__(self) -> None:
        self.refused: Verdict | None = None  # set when the provider refused our credentials


class HttpTransport:
    """A Transport over one HTTP API; subclasses build the request and judge the answer."""

    channel: str = ""
    credentials_setting: str = ""  # named in the detail when credentials are refused

    def __init__(self, sending: SendingSettings, *, headers: Mapping[str, str] | None = None,
                 auth: httpx.Auth | None = None,
                 retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
                 max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        if sending.concurrency < 1:
            raise ConsentryError("sending.concurrency must be at least 1")
        if sending.rate < 0:
            raise ConsentryError("sending.rate must be 0 (unlimited) or more")
        self.concurrency = sending.concurrency
        self.bucket = TokenBucket(sending.rate)
        self.retry_delays = tuple(float(d) for d in retry_delays)
        self.max_retry_after = max_retry_after
        self.timeout = timeout
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json",
                         **(headers or {})}
        self._auth = auth
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self._resume_at = 0.0  # monotonic: a Retry-After holds every request until then

    # -- for subclasses --

    def build(self, client: httpx.AsyncClient, message: Outgoing) -> httpx.Request:
        raise NotImplementedError

    def judge(self, response: httpx.Response) -> Verdict:
        raise NotImplementedError

    # -- Transport --

    async def send(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        if not messages:
            return []
        client, slots = self._open()
        batch = _BatchState()
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._send_one(client, slots, m, batch))
                         for m in messages]
        except ExceptionGroup as errors:
            # Only a bug gets here (answers and network errors become outcomes); the other
            # sends were cancelled. Raise it plainly: the batch's fate is unknown.
            raise errors.exceptions[0] from None
        return [t.result() for t in tasks]

    async def aclose(self) -> None:
        client, self._client, self._slots = self._client, None, None
        if client is not None:
            await client.aclose()

    # -- internals --

    def _open(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        # Created on first use, inside the event loop that sends (the sending loop builds the
        # transport before asyncio.run); aclose() lets a later loop start afresh.
        if self._client is None or self._slots is None:
            limits = httpx.Limits(max_connections=self.concurrency,
                                  max_keepalive_connections=self.concurrency)
            self._client = httpx.AsyncClient(
                headers=self._headers, auth=self._auth, limits=limits,
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                follow_redirects=False)
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._client, self._slots

    async def _send_one(self, client: httpx.AsyncClient, slots: asyncio.Semaphore,
                        message: Outgoing, batch: _BatchState) -> Outcome:
        attempt = 0
        while True:
            verdict, wait = await self._attempt(client, slots, message, batch)
            attempt += 1
            if verdict.credentials and batch.refused is None:
                batch.refused = verdict
            if not verdict.retry:
                return self._outcome(message, verdict)
            if attempt > len(self.retry_delays):
                return self._outcome(message, replace(
                    verdict, detail=f"{verdict.detail} (gave up after {attempt} attempts)"))
            delay = self.retry_delays[attempt - 1]
            if wait is not None:
                if wait > self.max_retry_after:
                    return self._outcome(message, replace(
                        verdict, detail=f"{verdict.detail} (asked to retry after {wait:g} s; "
                                        "not waiting that long)"))
                delay = max(delay, wait)
                # The provider asked everyone to hold back, not just this message.
                self._resume_at = max(self._resume_at, time.monotonic() + wait)
            await asyncio.sleep(delay * random.uniform(1.0, 1.1))

    async def _attempt(self, client: httpx.AsyncClient, slots: asyncio.Semaphore,
                       message: Outgoing, batch: _BatchState) -> tuple[Verdict, float | None]:
        async with slots:
            if batch.refused is not None:
                return replace(batch.refused, detail=f"not sent: {batch.refused.detail}"), None
            hold = self._resume_at - time.monotonic()
            if hold > 0:
                await asyncio.sleep(hold)
            await self.bucket.acquire()
            try:
                response = await client.send(self.build(client, message))
            except _NOT_SENT as exc:
                return transient(f"no connection to {self.channel} provider: "
                                 f"{_describe(exc)}"), None
            except httpx.TransportError as exc:
                # Written but unanswered: the provider may have taken it; at most once.
                return failed("unreachable", f"no answer from {self.channel} provider "
                                             f"({_describe(exc)}); it may have been sent, "
                                             "not retried"), None
        verdict = self.judge(response)
        return verdict, (retry_after(response) if verdict.retry else None)

    def _outcome(self, message: Outgoing, verdict: Verdict) -> Outcome:
        if verdict.accepted:
            return Outcome(message.target_id, True, short(verdict.detail),
                           provider_id=verdict.provider_id)
        return Outcome(message.target_id, False, short(verdict.detail),
                       failure_class=verdict.klass, failure_reason=verdict.reason,
                       provider_id=verdict.provider_id, about_address=not verdict.credentials)


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_transient_status(status: int) -> bool:
    return status in (408, 425, 429) or status >= 500


# --- SMS: generic JSON connector --------------------------------------------------------------

# A number that answered STOP to our sender (Twilio 21610, or an "opted_out" error) must not get
# SMS from us any more: domain.md section 4 puts "SMS STOP" with complaints, so it is class
# COMPLAINT, which the state machine turns into `denylisted`. The reason is "complaint" as
# agreed for the loop; "sms_stop" (a manual reason for inbound STOP keywords) would say it more
# precisely in reports and could replace it here alone.
SMS_STOP_REASON = "complaint"

# Error codes a generic provider names in its JSON answer, normalized (lowercase, "_").
GENERIC_ERRORS: dict[str, str] = {
    # The number does not exist or cannot take SMS: hard.
    "invalid_number": "user_unknown", "invalid_recipient": "user_unknown",
    "invalid_to": "user_unknown", "invalid_phone_number": "user_unknown",
    "unknown_number": "user_unknown", "unknown_subscriber": "user_unknown",
    "unknown_recipient": "user_unknown", "number_not_found": "user_unknown",
    "not_a_mobile_number": "user_unknown", "not_mobile": "user_unknown",
    "landline": "user_unknown",
    # The handset is off or out of coverage: soft.
    "unreachable": "unreachable", "absent_subscriber": "unreachable",
    "handset_unreachable": "unreachable",
    # Blocked or filtered by the carrier (spam filter, barring, our sender id): the sender's
    # problem, logged but never quarantining the number.
    "blocked": "refused", "carrier_blocked": "refused", "barred": "refused",
    "filtered": "refused", "spam": "refused", "invalid_sender": "refused",
    "invalid_from": "refused",
    # The number said STOP to our sender: denylist it, like an inbound STOP (see below).
    "opted_out": "complaint", "unsubscribed": "complaint", "stop": "complaint",
    # Our message: nothing to hold against the number.
    "message_too_long": "message_invalid", "invalid_message": "message_invalid",
    "empty_message": "message_invalid", "invalid_text": "message_invalid",
}
_RETRY_CODES = frozenset({"rate_limited", "rate_limit", "throttled", "too_many_requests"})


def _generic_error(body: Any) -> tuple[str, str]:
    """(code, message) from {"error": "code"}, {"error": {"code", "message"}}, {"code": ...}."""
    if not isinstance(body, dict):
        return "", ""
    error = body.get("error")
    message = body.get("message") or body.get("error_description") or body.get("detail") or ""
    if isinstance(error, dict):
        code = error.get("code") or error.get("type") or error.get("status") or ""
        message = error.get("message") or message
    else:
        code = error or body.get("code") or body.get("error_code") or body.get("reason") or ""
    return str(code), str(message)


def _normal(code: str) -> str:
    return code.strip().lower().replace("-", "_").replace(" ", "_")


class GenericSmsTransport(HttpTransport):
    """POST {url} with JSON {"to", "from", "text"}; Bearer token when one is set."""

    channel = "sms"
    credentials_setting = "CONSENTRY_SMS_TOKEN"

    def __init__(self, url: str, sender: str, token: str | None, sending: SendingSettings,
                 **options: Any) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        super().__init__(sending, headers=headers, **options)
        self.url = url
        self.sender = sender

    def build(self, client: httpx.AsyncClient, message: Outgoing) -> httpx.Request:
        return client.build_request("POST", self.url, json={
            "to": message.address, "from": self.sender, "text": message.text})

    def judge(self, response: httpx.Response) -> Verdict:
        status = response.status_code
        body = json_body(response)
        if 200 <= status < 300:
            pid = body.get("id") if isinstance(body, dict) else None
            return accepted(f"HTTP {status}", None if pid is None else str(pid))
        code, message = _generic_error(body)
        what = " ".join(p for p in (code, message) if p) or body_snippet(response)
        detail = f"HTTP {status}" + (f": {what}" if what else "")
        reason = GENERIC_ERRORS.get(_normal(code))
        if _is_transient_status(status) or _normal(code) in _RETRY_CODES:
            return transient(detail)
        if reason == "complaint":
            return failed(SMS_STOP_REASON, detail, FailureClass.COMPLAINT)
        if reason is not None:
            return failed(reason, detail)
        if status in (401, 403):
            return credentials_refused(detail, self.credentials_setting)
        if status == 413:
            return failed("message_invalid", detail)
        return failed("not_defined", detail)


# --- SMS: Twilio-compatible REST API ----------------------------------------------------------

# Twilio error codes (https://www.twilio.com/docs/api/errors) -> our reason.
TWILIO_ERRORS: dict[int, str] = {
    21211: "user_unknown",  # invalid 'To' phone number
    21614: "user_unknown",  # 'To' is not a mobile number (cannot take SMS)
    21612: "unreachable",  # 'To' not currently reachable via SMS
    21610: "complaint",  # recipient unsubscribed (replied STOP): see SMS_STOP_REASON
    21408: "refused",  # sending to this region not enabled on our account
    21606: "refused",  # our 'From' cannot send this
    21659: "refused",  # our 'From' is not a Twilio number
    21660: "refused",  # 'From' does not belong to the account
    21212: "refused",  # invalid 'From'
    20404: "refused",  # the account or resource does not exist: our configuration
    21602: "message_invalid",  # body required
    21617: "message_invalid",  # body too long
    30003: "unreachable",  # destination handset unreachable (off, no coverage)
    30004: "refused",  # message blocked (by the recipient's carrier or settings)
    30005: "user_unknown",  # unknown destination handset (number does not exist)
    30006: "user_unknown",  # landline or unreachable carrier: cannot take SMS
    30007: "refused",  # carrier filtering (spam): the sender's problem
    30008: "not_defined",  # unknown error
    30034: "refused",  # US A2P 10DLC: our sender is not registered
}
TWILIO_RETRY = frozenset({20429, 20500, 20503})
TWILIO_AUTH = frozenset({20003})


class TwilioSmsTransport(HttpTransport):
    """POST {url}/2010-04-01/Accounts/{sid}/Messages.json, form To/From/Body, basic auth."""

    channel = "sms"
    credentials_setting = "CONSENTRY_SMS_TOKEN (ACCOUNT_SID:AUTH_TOKEN)"

    def __init__(self, url: str, sender: str, account_sid: str, auth_token: str,
                 sending: SendingSettings, **options: Any) -> None:
        super().__init__(sending, auth=httpx.BasicAuth(account_sid, auth_token), **options)
        self.url = f"{url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self.sender = sender
        # A Messaging Service SID (MG + 32 hex) sends through the service's number pool.
        self._sender_field = ("MessagingServiceSid" if sender.startswith("MG")
                              and len(sender) == 34 else "From")

    def build(self, client: httpx.AsyncClient, message: Outgoing) -> httpx.Request:
        return client.build_request("POST", self.url, data={
            "To": message.address, self._sender_field: self.sender, "Body": message.text})

    def judge(self, response: httpx.Response) -> Verdict:
        status = response.status_code
        body = json_body(response)
        if 200 <= status < 300:
            sid = body.get("sid") if isinstance(body, dict) else None
            return accepted(f"HTTP {status}", None if sid is None else str(sid))
        code: int | None = None
        message = ""
        if isinstance(body, dict):
            try:
                code = int(body["code"]) if body.get("code") is not None else None
            except (TypeError, ValueError):
                code = None
            message = str(body.get("message") or "")
        what = " ".join(p for p in (str(code) if code else "", message) if p)
        detail = f"HTTP {status}: " + (what or body_snippet(response) or "no details")
        if code in TWILIO_RETRY or _is_transient_status(status):
            return transient(detail)
        if code in TWILIO_AUTH:
            return credentials_refused(detail, self.credentials_setting)
        reason = TWILIO_ERRORS.get(code) if code is not None else None
        if reason == "complaint":
            return failed(SMS_STOP_REASON, detail, FailureClass.COMPLAINT)
        if reason is not None:
            return failed(reason, detail)
        if status in (401, 403):
            return credentials_refused(detail, self.credentials_setting)
        return failed("not_defined", detail)


# --- factory ----------------------------------------------------------------------------------


def sms_transport(settings: Settings, *, retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
                  max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
                  timeout: float = DEFAULT_TIMEOUT) -> HttpTransport:
    """The SMS transport the settings describe (sms_url, sms_provider, sms_from, sms_token)."""
    if not settings.sms_url:
        raise ConsentryError("no SMS provider configured (CONSENTRY_SMS_URL)")
    if not settings.sms_from:
        raise ConsentryError("CONSENTRY_SMS_FROM is needed")
    url = http_url(settings.sms_url, "CONSENTRY_SMS_URL")
    options: dict[str, Any] = {"retry_delays": retry_delays, "max_retry_after": max_retry_after,
                               "timeout": timeout}
    provider = (settings.sms_provider or "generic").strip().lower()
    if provider == "generic":
        return GenericSmsTransport(url, settings.sms_from, settings.sms_token or None,
                                   settings.sending, **options)
    if provider == "twilio":
        sid, _, token = (settings.sms_token or "").partition(":")
        if not sid.strip() or not token.strip():
            raise ConsentryError("CONSENTRY_SMS_TOKEN must be ACCOUNT_SID:AUTH_TOKEN for the "
                                 "twilio SMS provider")
        return TwilioSmsTransport(url, settings.sms_from, sid.strip(), token.strip(),
                                  settings.sending, **options)
    raise ConsentryError(f"unknown SMS provider {settings.sms_provider!r} "
                         "(CONSENTRY_SMS_PROVIDER): expected generic or twilio")
