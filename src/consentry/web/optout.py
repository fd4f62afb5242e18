"""Opt-out by address, GET/POST /optout: for people without a message from us at hand. They
enter an email address or a mobile number and get an unsubscribe link sent to it.

- The answer never tells whether the address is known (domain.md section 6): after the checks
  that depend only on the request (CSRF, rate limits, honeypot, the address's syntax) every POST
  gets the same page, byte for byte, and takes the same time. Looking the address up and sending
  happen afterwards in the app's own sender threads (`LinkSender`), so neither the lookup nor
  the relay's speed shows in the answer's timing.
- Rate limits, in this process's memory: per client IP and per normalized address (its matching
  key), `web.form_limit_per_ip` and `web.form_limit_per_address` in `web.form_limit_window`
  seconds. An unknown address counts exactly like a known one; over a limit -> 429 page.
- Honeypot: a filled-in hidden field is a bot; it gets the normal answer and nothing is sent.
- What is sent: for a known address that is not quarantined or denylisted, ONE message
  (transactional, no advertising) to that address, through notify.send, with an unsubscribe
  link per profile holding the address (/u/{token}, token without delivery and service, on the
  address's channel). Several profiles can share an address (the seed's two-profiles case):
  each link opens that profile's unsubscribe page, and the page's "stop everything sent to this
  address" choice covers them all. An unknown or blocked address gets nothing.
- Nothing here changes consent, so nothing is written to the ledger; the change happens, and is
  recorded, on the /u page the link opens.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from consentry import notify
from consentry.domain import quarantine as qrules
from consentry.domain.addresses import Address, guess_channel, normalize
from consentry.domain.channels import Channel
from consentry.domain.errors import InvalidAddress
from consentry.profiles import service as profiles
from consentry.profiles import sql as profile_sql
from consentry.quarantine import service as quarantine
from consentry.settings import Settings
from consentry.tokens import Signer
from consentry.web.deps import client_ip, state
from consentry.web.render import gettext, language, page
from consentry.web.security import CSRF_FIELD, HONEYPOT_FIELD, RateLimiter, csrf_ok, is_bot

router = APIRouter()
log = logging.getLogger("consentry.web.optout")

# At most this many profiles' links in one message (an address shared by more is an operator's
# matter; the "stop everything sent to this address" choice on any link covers all of them).
MAX_LINKS = 10


def N_(message: str) -> str:
    """Marks a message for the catalog; it is translated where it is shown."""
    return message


# --- sending, after the answer --------------------------------------------------------------


def send_links(settings: Settings, engine: sa.Engine, signer: Signer, address: Address,
               lang: str) -> bool:
    """Send the unsubscribe link(s) for `address` if it is known and not blocked; True when a
    message was handed to the transport and accepted."""
    with engine.connect() as conn:
        entry = quarantine.status_of(conn, address, settings.quarantine)
        if entry.status in qrules.BLOCKING:
            return False
        holders = list(conn.execute(profile_sql.holders(address.channel.value, address.key))
                       .scalars())[:MAX_LINKS]
        if not holders:
            return False
        first = profiles.get(conn, holders[0])
    # Send to the address as the profile holds it (the key only matches it).
    to = first["email"] if address.channel is Channel.EMAIL else first["phone"]
    to = to or address.value
    base = settings.base_url.rstrip("/")
    links = [f"{base}/u/{signer.unsubscribe_token(pid, None, None, address.channel.value)}"
             for pid in holders]
    subject, text = message(lang, address.channel, links)
    outcome = notify.send(settings, address.channel, to, subject, text)
    if not outcome.accepted:
        log.warning("opt-out link to a %s address not accepted: %s", address.channel.value,
                    outcome.detail)
    return outcome.accepted


def message(lang: str, channel: Channel, links: list[str]) -> tuple[str, str]:
    """Subject and text of the message with the link(s)."""
    subject = gettext(lang, "Your link to stop our messages")
    if channel is Channel.SMS:
        return subject, gettext(lang, "To stop our messages, open: %(links)s",
                                links=" ".join(links))
    lines = [gettext(lang, "Hello,"), "",
             gettext(lang, "someone, probably you, asked on our website for a link to stop "
                           "the messages we send to this address."), ""]
    if len(links) == 1:
        lines += [gettext(lang, "Open this link to choose what to stop:"), links[0]]
    else:
        lines += [gettext(lang, "This address belongs to several profiles with us. Each link "
                                "below is for one of them; on any of them, “Stop everything "
                                "sent to this address” covers them all."), ""]
        lines += [gettext(lang, "Profile %(number)s: %(link)s", number=i, link=link)
                  for i, link in enumerate(links, start=1)]
    lines += ["", gettext(lang, "If you did not ask for this, ignore this message: nothing "
                                "changes."), ""]
    return subject, "\n".join(lines)


class LinkSender:
    """Runs send_links in its own threads, independent of the request that asked for it."""

    def __init__(self, settings: Settings, engine: sa.Engine, signer: Signer) -> None:
        self.settings, self.engine, self.signer = settings, engine, signer
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="consentry-optout")
        self._pending: set[Future[bool]] = set()
        self._lock = threading.Lock()

    def submit(self, address: Address, lang: str) -> None:
        future = self._pool.submit(self._run, address, lang)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)

    def _run(self, address: Address, lang: str) -> bool:
        try:
            return send_links(self.settings, self.engine, self.signer, address, lang)
        except Exception:  # the answer is long gone: log, never raise into the pool
            log.exception("sending an opt-out link failed")
            return False

    def _forget(self, future: Future[bool]) -> None:
        with self._lock:
            self._pending.discard(future)

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until everything submitted so far is done (tests, shutdown)."""
        with self._lock:
            pending = set(self._pending)
        wait(pending, timeout=timeout)


class _Parts:
    def __init__(self, sender: LinkSender, per_ip: RateLimiter, per_address: RateLimiter):
        self.sender, self.per_ip, self.per_address = sender, per_ip, per_address


_CREATE = threading.Lock()


def parts(request: Request) -> _Parts:
    """This app's sender and rate limiters, made on first use."""
    existing = getattr(request.app.state, "consentry_optout", None)
    if existing is not None:
        return existing  # type: ignore[no-any-return]
    with _CREATE:
        existing = getattr(request.app.state, "consentry_optout", None)
        if existing is None:
            app = state(request)
            web = app.settings.web
            existing = _Parts(LinkSender(app.settings, app.engine, app.signer),
                              RateLimiter(web.form_limit_per_ip, web.form_limit_window),
                              RateLimiter(web.form_limit_per_address, web.form_limit_window))
            request.app.state.consentry_optout = existing
    return existing


def sender(app: object) -> LinkSender:
    """The link sender of a FastAPI app (for tests: `sender(app).drain()`)."""
    found = getattr(app.state, "consentry_optout", None)  # type: ignore[attr-defined]
    if found is None:
        raise LookupError("no opt-out request has been made on this app yet")
    return found.sender  # type: ignore[no-any-return]


# --- pages ---------------------------------------------------------------------------------


def _form(request: Request, lang: str, status: int = 200, value: str = "",
          error: str | None = None) -> Response:
    return page(request, "optout.html", lang, status, value=value, error=error)


def _message(request: Request, lang: str, status: int, title: str, text: str) -> Response:
    return page(request, "message.html", lang, status, title=gettext(lang, title),
                paragraphs=[gettext(lang, text)], resend_action=None)


def _too_many(request: Request, lang: str) -> Response:
    return _message(request, lang, 429, N_("Too many requests"),
                    N_("Please wait a few minutes before you try again."))


def _answer(request: Request, lang: str) -> Response:
    """The one answer every accepted request gets, known address or not."""
    return page(request, "optout_sent.html", lang)


@router.get("/optout")
def show(request: Request) -> Response:
    return _form(request, language(request))


@router.post("/optout")
def post(request: Request,
         address: Annotated[str, Form()] = "",
         csrf: Annotated[str | None, Form(alias=CSRF_FIELD)] = None,
         honeypot: Annotated[str | None, Form(alias=HONEYPOT_FIELD)] = None) -> Response:
    lang = language(request)
    if not csrf_ok(request, csrf):
        return _message(request, lang, 403, N_("Please try again"),
                        N_("The form was open for too long or came from another site. Please "
                           "reload the page and send it again."))
    limits = parts(request)
    if not limits.per_ip.allow(client_ip(request) or "unknown"):
        return _too_many(request, lang)
    if is_bot(honeypot):
        return _answer(request, lang)
    text = address.strip()[:320]
    try:
        channel = guess_channel(text)
        if channel is Channel.PUSH:
            raise InvalidAddress("push", text, "not an email address or phone number")
        normalized = normalize(channel, text, state(request).settings.default_region)
    except InvalidAddress:
        return _form(request, lang, 400, value=text, error=gettext(
            lang, "Please enter an email address (name@example.com) or a mobile number "
                  "with its country code (+49 151 23456789)."))
    if not limits.per_address.allow(f"{normalized.channel.value}:{normalized.key}"):
        return _too_many(request, lang)
    limits.sender.submit(normalized, lang)
    return _answer(request, lang)
