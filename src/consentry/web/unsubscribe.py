"""The unsubscribe page, GET/POST /u/{token}, and RFC 8058 one-click unsubscription.

- The token (tokens.Signer.unsubscribe_token) names the profile, the delivery (or None), the
  delivery's service (or None) and the channel. A forged, altered or foreign-key token gets the
  "link not valid" page (400) and nothing else; a genuine token whose profile was deleted or
  erased gets 410. Every answer here is a private page (no-referrer, no-store).
- GET only shows: what the link is about and three choices. Link scanners follow every GET, so
  nothing changes before a POST.
    1. leave this service, or stop this channel when the delivery had no service;
    2. stop every message from us (global opt-out of the profile);
    3. stop all mail to this address (denylist the address, platform-wide: it also covers other
       profiles holding the same address, the seed's two-profiles case). Offered for email and
       SMS; a push token belongs to a device the page cannot point at.
- A form POST (CSRF-checked, double submit) applies the choice in one transaction and answers
  200 with a page that says exactly what changed, or that nothing did.
- RFC 8058 one-click: a POST whose body (urlencoded or multipart) has
  `List-Unsubscribe=One-Click` needs no cookie and no CSRF value (mail providers send neither;
  the unguessable token protects it). It leaves the delivery's service, else opts out of the
  channel, and answers 200 with a short page: never a redirect. It is the lean path: verify
  the token, one short transaction (lock the profile, read the subscription, update it, append
  the ledger event).
- Every change is recorded in the ledger by the consent or quarantine service with source
  landing_page (form) or one_click, actor "profile:<id>", IP, user agent, the wording version
  and the evidence {"page": "/u", "lang", "delivery", "choice"}.
- The address is shown masked ("m***@example.com", "+49***89"): a forwarded message or a
  screenshot of the page shows which address it is about without giving it away. The masked
  form is enough for its owner to recognize it. The address used is the profile's current one
  on the link's channel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from consentry.consent import service as consent
from consentry.domain import quarantine as qrules
from consentry.domain.addresses import Address
from consentry.domain.channels import Channel
from consentry.domain.consent import SubscriptionState
from consentry.domain.errors import NotFound
from consentry.domain.ledger import Origin, Source
from consentry.profiles import service as profiles
from consentry.quarantine import service as quarantine
from consentry.tokens import InvalidToken
from consentry.web.deps import AppState, client_ip, state
from consentry.web.render import environment, gettext, language, page
from consentry.web.security import CSRF_FIELD, HONEYPOT_FIELD, csrf_ok, private_page

router = APIRouter()


def N_(message: str) -> str:
    """Marks a message for the catalog; it is translated where it is shown."""
    return message


# Versions of the wording people act on, recorded with every change. Change them whenever the
# texts of the page (or of the List-Unsubscribe offer, for one-click) change.
PAGE_WORDING = "unsubscribe-page-v1"
ONE_CLICK_WORDING = "list-unsubscribe-one-click-v1"

ONE_CLICK_FIELD = "List-Unsubscribe"
ONE_CLICK_VALUE = "One-Click"


class Choice(StrEnum):
    SERVICE = "service"  # leave the delivery's service
    CHANNEL = "channel"  # stop the link's channel (the delivery had no service)
    EVERYTHING = "all"  # global opt-out of the profile
    ADDRESS = "address"  # denylist the address for everyone


# Nouns for "we will send you no more ..." (translated through the catalog).
CHANNEL_NOUN = {Channel.EMAIL: N_("emails"), Channel.SMS: N_("text messages"),
                Channel.PUSH: N_("push notifications")}


@dataclass(frozen=True)
class Link:
    profile_id: int
    delivery_id: int | None
    service_slug: str | None
    channel: Channel


def read_link(app: AppState, token: str) -> Link:
    profile_id, delivery_id, slug, channel = app.signer.read_unsubscribe_token(token)
    try:
        return Link(profile_id, int(delivery_id) if delivery_id is not None else None,
                    str(slug) if slug is not None else None, Channel(channel))
    except (ValueError, TypeError):
        raise InvalidToken("this link is not valid") from None


def mask(address: Address | None) -> str | None:
    """The address with most of it hidden: m***@example.com, +49***89."""
    if address is None or address.channel is Channel.PUSH:
        return None
    if address.channel is Channel.EMAIL:
        local, _, domain = address.value.rpartition("@")
        return f"{local[:1]}***@{domain}"
    return f"{address.value[:3]}***{address.value[-2:]}"


def profile_address(profile: dict[str, Any], channel: Channel) -> Address | None:
    if channel is Channel.EMAIL and profile["email"]:
        return Address(Channel.EMAIL, profile["email"], profile["email_key"])
    if channel is Channel.SMS and profile["phone"]:
        return Address(Channel.SMS, profile["phone"], profile["phone"])
    return None


@dataclass(frozen=True)
class Situation:
    """What the page is about and how things stand, read in one transaction."""

    link: Link
    profile: dict[str, Any]
    service: consent.Service | None
    address: Address | None
    subscribed: bool
    channel_opted_out: bool
    all_opted_out: bool
    address_blocked: bool

    @property
    def choices(self) -> list[Choice]:
        first = Choice.SERVICE if self.service else Choice.CHANNEL
        return [first, Choice.EVERYTHING] + ([Choice.ADDRESS] if self.address else [])


def _service(conn: sa.Connection, slug: str | None) -> consent.Service | None:
    """The link's service; a service deleted since the mail went out falls back to the
    channel, which is what its recipient wanted to stop."""
    if slug is None:
        return None
    try:
        return consent.get_service(conn, slug)
    except NotFound:
        return None


# One-click traffic comes in bursts for the few services a delivery goes out for: their rows
# are kept for a few seconds, saving a query on the hot path. (A renamed label shows late on
# the one-click answer, which mail providers do not display; a service is never re-keyed.)
_SERVICE_TTL = 10.0
_services_lock = threading.Lock()
_CACHE_ATTRIBUTE = "unsubscribe_services"  # on the app's state: one cache per app


def _cached_service(app: AppState, conn: sa.Connection,
                    slug: str | None) -> consent.Service | None:
    if slug is None:
        return None
    now = time.monotonic()
    with _services_lock:
        cache: dict[str, tuple[float, consent.Service | None]] = app.__dict__.setdefault(
            _CACHE_ATTRIBUTE, {})
        found = cache.get(slug)
    if found is not None and found[0] > now:
        return found[1]
    service = _service(conn, slug)
    with _services_lock:
        if len(cache) > 1000:
            cache.clear()
        cache[slug] = (now + _SERVICE_TTL, service)
    return service


_SQLITE_WRITER = threading.Lock()


@contextmanager
def writing(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that writes. SQLite has one writer at a time: the threads of this process
    queue on a lock, which hands over at once, instead of polling SQLite's busy handler (its
    sleeps of up to 100 ms made a p99 of a second under one-click load)."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    with _SQLITE_WRITER, engine.begin() as conn:
        yield conn


def situation(conn: sa.Connection, app: AppState, link: Link) -> Situation:
    profile = profiles.get(conn, link.profile_id)  # NotFound: the profile is gone
    service = _service(conn, link.service_slug)
    subscribed = False
    if service is not None:
        subscribed = any(s["service"] == service.slug and s["state"] in (
            SubscriptionState.SUBSCRIBED.value, SubscriptionState.PENDING.value)
            for s in consent.subscriptions_of(conn, link.profile_id))
    scopes = consent.optouts(conn, link.profile_id).scopes
    address = profile_address(profile, link.channel)
    blocked = address is not None and quarantine.status_of(
        conn, address, app.settings.quarantine).status is qrules.Status.DENYLISTED
    return Situation(link, profile, service, address, subscribed,
                     link.channel.value in scopes, "all" in scopes, blocked)


@dataclass(frozen=True)
class Result:
    choice: Choice
    changed: bool
    service: consent.Service | None = None
    channel: Channel | None = None
    address: Address | None = None


def apply(conn: sa.Connection, app: AppState, link: Link, choice: Choice, origin: Origin,
          service: consent.Service | None = None, address: Address | None = None) -> Result:
    """Make the change `choice` names, in this transaction (consent and quarantine services
    write the ledger events). NotFound when the profile is gone."""
    if choice is Choice.SERVICE and service is not None:
        done = consent.unsubscribe(conn, link.profile_id, service, origin)
        return Result(choice, done.changed, service=service)
    if choice in (Choice.SERVICE, Choice.CHANNEL):
        changed = consent.opt_out(conn, link.profile_id, link.channel, origin)
        return Result(Choice.CHANNEL, changed, channel=link.channel)
    if choice is Choice.EVERYTHING:
        return Result(choice, consent.opt_out(conn, link.profile_id, None, origin))
    assert address is not None
    change = quarantine.set_status(conn, address, qrules.Status.DENYLISTED, "unsubscribe",
                                   origin, app.settings.quarantine)
    return Result(choice, change.changed, address=address)


def describe(result: Result, lang: str) -> tuple[str, list[str]]:
    """The title and the sentences saying exactly what changed."""
    if result.choice is Choice.SERVICE:
        assert result.service is not None
        label = result.service.label
        text = (gettext(lang, "You have left “%(service)s”: you will receive no more of it.",
                        service=label) if result.changed else
                gettext(lang, "You were not subscribed to “%(service)s”, so nothing changed.",
                        service=label))
    elif result.choice is Choice.CHANNEL:
        assert result.channel is not None
        noun = gettext(lang, CHANNEL_NOUN[result.channel])
        text = (gettext(lang, "We will send you no more %(channel)s.", channel=noun)
                if result.changed else
                gettext(lang, "You had already stopped our %(channel)s, so nothing changed.",
                        channel=noun))
    elif result.choice is Choice.EVERYTHING:
        text = (gettext(lang, "We will send you nothing more, by any channel.")
                if result.changed else
                gettext(lang, "You had already asked us to stop every message, so nothing "
                              "changed."))
    else:
        shown = mask(result.address)
        text = (gettext(lang, "%(address)s is now blocked: nothing more will be sent to it, "
                              "whichever of our profiles it belongs to.", address=shown)
                if result.changed else
                gettext(lang, "%(address)s was already blocked, so nothing changed.",
                        address=shown))
    title = gettext(lang, "Done") if result.changed else gettext(lang, "Nothing has changed")
    return title, [text]


# --- pages -------------------------------------------------------------------------------


def _message(request: Request, lang: str, status: int, title: str, text: str) -> Response:
    return private_page(page(request, "message.html", lang, status,
                             title=gettext(lang, title), paragraphs=[gettext(lang, text)],
                             resend_action=None))


INVALID = (N_("This link is not valid"),
           N_("The link is incomplete or was changed. Please use the link from the message "
              "exactly as you received it."))


def _invalid(request: Request, lang: str) -> Response:
    return _message(request, lang, 400, *INVALID)


GONE = (N_("This link is no longer valid"),
        N_("The profile this link was made for no longer exists with us, so there is nothing "
           "to unsubscribe. We send nothing to it."))


def _gone(request: Request, lang: str) -> Response:
    return _message(request, lang, 410, *GONE)


def _preferences_url(app: AppState, profile_id: int) -> str:
    return f"/p/{app.signer.preferences_token(profile_id)}"


@router.get("/u/{token}")
def show(request: Request, token: str) -> Response:
    app = state(request)
    try:
        link = read_link(app, token)
    except InvalidToken:
        return _invalid(request, language(request))
    try:
        with app.engine.connect() as conn:
            now = situation(conn, app, link)
    except NotFound:
        return _gone(request, language(request))
    lang = language(request, now.profile["locale"])
    return private_page(page(
        request, "unsubscribe.html", lang, situation=now, shown=mask(now.address),
        channel_noun=CHANNEL_NOUN[link.channel], choices=[c.value for c in now.choices],
        preferences_url=_preferences_url(app, link.profile_id)))


@router.post("/u/{token}")
def post(request: Request, token: str,
         one_click: Annotated[str | None, Form(alias=ONE_CLICK_FIELD)] = None,
         choice: Annotated[str | None, Form()] = None,
         csrf: Annotated[str | None, Form(alias=CSRF_FIELD)] = None) -> Response:
    app = state(request)
    is_one_click = one_click is not None and one_click.strip() == ONE_CLICK_VALUE
    try:
        link = read_link(app, token)
    except InvalidToken:
        if is_one_click:
            lang = language(request)
            return _bare(request, lang, "message.html", 400, resend_action=None,
                         title=gettext(lang, INVALID[0]), paragraphs=[gettext(lang, INVALID[1])])
        return _invalid(request, language(request))
    if is_one_click:
        return _one_click(request, app, link)
    if not csrf_ok(request, csrf):
        return _message(request, language(request), 403, N_("Please try again"),
                        N_("The form was open for too long or came from another site. Please "
                           "reload the page and send it again."))
    try:
        with writing(app.engine) as conn:
            now = situation(conn, app, link)
            lang = language(request, now.profile["locale"])
            offered = {c.value: c for c in now.choices}
            if choice not in offered:
                return _message(request, lang, 400, N_("Please try again"),
                                N_("Please choose one of the options on the page."))
            origin = Origin(
                source=Source.LANDING_PAGE, actor=f"profile:{link.profile_id}",
                ip=client_ip(request), user_agent=request.headers.get("user-agent"),
                wording=PAGE_WORDING, evidence={"page": "/u", "lang": lang,
                                                "delivery": link.delivery_id,
                                                "choice": choice})
            result = apply(conn, app, link, offered[choice], origin, now.service, now.address)
    except NotFound:
        return _gone(request, language(request))
    title, paragraphs = describe(result, lang)
    return private_page(page(request, "unsubscribe_done.html", lang, title=title,
                             paragraphs=paragraphs,
                             preferences_url=_preferences_url(app, link.profile_id)))


def _one_click(request: Request, app: AppState, link: Link) -> Response:
    """RFC 8058: leave the service (else the channel); 200, no redirect, no cookie set."""
    status, html = one_click_answer(app, link, client_ip(request),
                                    request.headers.get("user-agent"), language(request),
                                    request.url.path)
    return private_page(HTMLResponse(html, status_code=status))


def one_click_answer(app: AppState, link: Link, ip: str | None, user_agent: str | None,
                     lang: str, path: str) -> tuple[int, str]:
    """The one-click unsubscription itself, without the web framework (the route above and
    the fast path in one_click.py share it): (status, page). Mail providers do not read the
    answer, so the language is the request's, not the profile's (no extra query)."""
    choice = Choice.SERVICE if link.service_slug else Choice.CHANNEL
    origin = Origin(source=Source.ONE_CLICK, actor=f"profile:{link.profile_id}",
                    ip=ip, user_agent=user_agent, wording=ONE_CLICK_WORDING,
                    evidence={"page": "/u", "lang": lang, "delivery": link.delivery_id,
                              "choice": choice.value})
    try:
        with writing(app.engine) as conn:
            service = _cached_service(app, conn, link.service_slug)
            result = apply(conn, app, link, choice, origin, service)
    except NotFound:
        return 410, _bare_html(lang, path, "message.html", resend_action=None,
                               title=gettext(lang, GONE[0]), paragraphs=[gettext(lang, GONE[1])])
    title, paragraphs = describe(result, lang)
    return 200, _bare_html(lang, path, "unsubscribe_done.html", title=title,
                           paragraphs=paragraphs, preferences_url=None)


def invalid_one_click(lang: str, path: str) -> str:
    return _bare_html(lang, path, "message.html", resend_action=None,
                      title=gettext(lang, INVALID[0]), paragraphs=[gettext(lang, INVALID[1])])


def _bare_html(lang: str, path: str, template: str, **context: Any) -> str:
    return environment(lang).get_template(template).render(
        lang=lang, csrf_field=CSRF_FIELD, csrf_token="", honeypot_field=HONEYPOT_FIELD,
        path=path, **context)


def _bare(request: Request, lang: str, template: str, status: int,
          **context: Any) -> Response:
    """A page rendered without page(): it sets no CSRF cookie (one-click requests have none,
    and their answers carry no form)."""
    html = _bare_html(lang, request.url.path, template, **context)
    return private_page(HTMLResponse(html, status_code=status))
