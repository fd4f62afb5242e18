"""The preference center, GET/POST /p/{token}: every channel of the profile and every public
service of those channels, with the current state prefilled; saving applies exactly what the
person changed and says what that was.

- The token (tokens.Signer.preferences_token) names the profile; a forged or altered one gets
  the "link not valid" page (400) and nothing else. Every answer here is a private page.
- What the form shows: a "receive messages by ..." box per channel the profile has an address
  on (or has opted out of), the global "nothing at all from us" box, and a box per public
  service of those channels (plus any service the profile is subscribed to or pending on, so
  that it can always be left). Opting back in is the same click as opting out (GDPR 7(3)).
- The exact difference: the form carries, in hidden fields, what it showed and what was ticked
  when it was shown; a POST applies only the boxes the person changed, each against the state
  in the database at that moment, and lists what actually changed ("nothing changed" when so).
  A form left open while something else changed therefore does not undo that other change.
- Each change is one ledger event (the consent service writes it) with source landing_page,
  actor "profile:<id>", the client's IP and user agent, the wording version and the evidence
  {"page": "/p", "lang": ...}.
- Ticking a service subscribes at once, also for a double opt-in service: the token in the
  link is the person's proof of identity (it reached them at their own address), which is what
  the confirmation message would otherwise establish. The ledger note says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from consentry.consent import service as consent
from consentry.consent import sql as consent_sql
from consentry.domain.channels import ALL_CHANNELS, Channel
from consentry.domain.consent import SubscriptionState
from consentry.domain.errors import NotFound
from consentry.domain.ledger import Origin, Source
from consentry.profiles import service as profiles
from consentry.tokens import InvalidToken
from consentry.web.deps import client_ip, state
from consentry.web.render import gettext, language, page
from consentry.web.security import CSRF_FIELD, csrf_ok, private_page

router = APIRouter()

# The version of the page's wording, recorded with every change made on it. Change it whenever
# the texts people agree to on this page change.
WORDING = "preferences-v1"
SUBSCRIBE_NOTE = "confirmed by the preference-center link (the token identifies the person)"

# The keys of the boxes: "channel:<channel>", "all" and "service:<slug>".
GLOBAL = ALL_CHANNELS
_ACTIVE = (SubscriptionState.SUBSCRIBED.value, SubscriptionState.PENDING.value)

# Translated in the templates and in `_describe`; listed here so that the catalog has them.
CHANNEL_TEXT = {
    Channel.EMAIL: "Receive messages by email",
    Channel.SMS: "Receive text messages (SMS)",
    Channel.PUSH: "Receive push notifications in our app",
}

CHANNEL_CHANGE = {
    (Channel.EMAIL, True): "You receive messages by email again.",
    (Channel.EMAIL, False): "You no longer receive messages by email.",
    (Channel.SMS, True): "You receive text messages again.",
    (Channel.SMS, False): "You no longer receive text messages.",
    (Channel.PUSH, True): "You receive push notifications again.",
    (Channel.PUSH, False): "You no longer receive push notifications.",
}


@dataclass(frozen=True)
class Box:
    key: str
    label: str  # English source text (channels) or the service's own label
    checked: bool
    hint: str | None = None  # English source text, translated in the template
    service: consent.Service | None = None


@dataclass(frozen=True)
class Page:
    profile: dict[str, Any]
    channels: list[Box]
    nothing: Box
    services: list[Box]

    @property
    def boxes(self) -> list[Box]:
        return [*self.channels, self.nothing, *self.services]


def _profile_id(request: Request, token: str) -> int | None:
    try:
        return state(request).signer.read_preferences_token(token)
    except InvalidToken:
        return None


def _invalid(request: Request) -> Response:
    lang = language(request)
    return private_page(page(
        request, "message.html", lang, 400, title=gettext(lang, "This link is not valid"),
        paragraphs=[gettext(lang, "The link is incomplete or was changed. Please use the link "
                                  "from the message exactly as you received it.")],
        resend_action=None))


def _services(conn: sa.Connection) -> list[consent.Service]:
    return [consent.Service(r["id"], r["slug"], r["label"], Channel(r["channel"]),
                            r["double_opt_in"], r["validity_days"], r["public"])
            for r in conn.execute(consent_sql.ALL_SERVICES).mappings()]


def _read(conn: sa.Connection, profile_id: int) -> Page:
    """What the page shows for a profile, as it stands now."""
    profile = profiles.get(conn, profile_id)
    optouts = consent.optouts(conn, profile_id).scopes
    subscriptions = {s["service"]: s["state"] for s in consent.subscriptions_of(conn, profile_id)}
    have = {a.channel for a in profiles.addresses_of(conn, profile)}
    channels = [c for c in Channel if c in have or c.value in optouts]
    boxes = [Box(f"channel:{c.value}", CHANNEL_TEXT[c], c.value not in optouts)
             for c in channels]
    nothing = Box(GLOBAL, "Nothing at all from us, on any channel", GLOBAL in optouts,
                  "While this is ticked we send you nothing, whatever else is ticked.")
    services = []
    for service in _services(conn):
        current = subscriptions.get(service.slug)
        if not ((service.public and service.channel in channels) or current in _ACTIVE):
            continue
        hint = None
        if current == SubscriptionState.PENDING.value:
            hint = "You asked for this and have not confirmed it yet."
        elif service.channel.value in optouts:
            hint = "You opted out of this channel: nothing arrives while that is so."
        services.append(Box(f"service:{service.slug}", service.label, current in _ACTIVE,
                            hint, service))
    return Page(profile, boxes, nothing, services)


def _mask_email(email: str) -> str:
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}•••@{domain}" if local else email


def _mask_phone(phone: str) -> str:
    return f"{phone[:3]}•••{phone[-2:]}" if len(phone) > 6 else "•••"


def _show(request: Request, token: str, form: Page, lang: str, status_code: int = 200,
          error: str | None = None) -> HTMLResponse:
    profile = form.profile
    who = [_mask_email(profile["email"])] if profile["email"] else []
    if profile["phone"]:
        who.append(_mask_phone(profile["phone"]))
    return private_page(page(  # type: ignore[return-value]
        request, "preferences.html", lang, status_code, form=form, who=who, error=error,
        action=f"/p/{token}?lang={lang}",
        shown=[b.key for b in form.boxes], was=[b.key for b in form.boxes if b.checked]))


@router.get("/p/{token}", response_class=HTMLResponse)
def show_preferences(request: Request, token: str) -> Response:
    profile_id = _profile_id(request, token)
    if profile_id is None:
        return _invalid(request)
    try:
        with state(request).engine.connect() as conn:
            form = _read(conn, profile_id)
    except NotFound:  # erased since the link was sent
        return _invalid(request)
    return _show(request, token, form, language(request, form.profile["locale"]))


def _describe(lang: str, key: str, on: bool, form: Page) -> str:
    if key == GLOBAL:
        return gettext(lang, "You will get nothing at all from us." if on else
                       "We may contact you again on the channels you allow.")
    kind, _, name = key.partition(":")
    if kind == "channel":
        return gettext(lang, CHANNEL_CHANGE[Channel(name), on])
    label = next(b.label for b in form.services if b.key == key)
    return gettext(lang, "You subscribed to “%(service)s”." if on else
                   "You unsubscribed from “%(service)s”.", service=label)


@router.post("/p/{token}", response_class=HTMLResponse)
def save_preferences(
        request: Request, token: str,
        csrf: Annotated[str, Form(alias=CSRF_FIELD)] = "",
        ticked: Annotated[list[str] | None, Form(alias="on")] = None,
        shown: Annotated[list[str] | None, Form()] = None,
        was: Annotated[list[str] | None, Form()] = None) -> Response:
    profile_id = _profile_id(request, token)
    if profile_id is None:
        return _invalid(request)
    st = state(request)
    try:
        with st.engine.connect() as conn:
            profile = profiles.get(conn, profile_id)
    except NotFound:
        return _invalid(request)
    lang = language(request, profile["locale"])
    if not csrf_ok(request, csrf):
        return private_page(page(
            request, "message.html", lang, 403, title=gettext(lang, "Please try again"),
            paragraphs=[gettext(lang, "The form was open for too long or came from another "
                                      "site. Please reload the page and send it again.")],
            resend_action=None))
    on, before, displayed = set(ticked or ()), set(was or ()), set(shown or ())
    origin = Origin(source=Source.LANDING_PAGE, actor=f"profile:{profile_id}",
                    ip=client_ip(request), user_agent=request.headers.get("user-agent"),
                    wording=WORDING, evidence={"page": "/p", "lang": lang})
    changes: list[str] = []
    with st.engine.begin() as conn:
        try:
            consent.lock_profile(conn, profile_id)  # one save at a time per profile
        except NotFound:
            return _invalid(request)
        form = _read(conn, profile_id)
        # Only boxes the page showed, still offers, and the person changed: the global box
        # first, then the channels, then the services (the order of `form.boxes`).
        toggled = [b.key for b in form.boxes
                   if b.key in displayed and (b.key in on) != (b.key in before)]
        for key in sorted(toggled, key=lambda k: (k != GLOBAL, not k.startswith("channel:"))):
            wanted = key in on
            if _apply(conn, profile_id, key, wanted, form, origin):
                changes.append(_describe(lang, key, wanted, form))
    return private_page(page(
        request, "preferences_saved.html", lang, changes=changes,
        back=f"/p/{token}?lang={lang}"))


def _apply(conn: sa.Connection, profile_id: int, key: str, wanted: bool, form: Page,
           origin: Origin) -> bool:
    """Make box `key` ticked (`wanted`) or not; True if that changed something."""
    if key == GLOBAL:
        change = consent.opt_out if wanted else consent.opt_in
        return change(conn, profile_id, None, origin)
    kind, _, name = key.partition(":")
    if kind == "channel":  # ticked means "receive": the opposite of an opt-out
        change = consent.opt_in if wanted else consent.opt_out
        return change(conn, profile_id, Channel(name), origin)
    service = next(b.service for b in form.services if b.key == key)
    assert service is not None
    if wanted:
        # Confirmed: the token identifies the person (see the module's docstring).
        return consent.subscribe(conn, profile_id, service, replace(origin, note=SUBSCRIBE_NOTE),
                                 confirmed=True).changed
    return consent.unsubscribe(conn, profile_id, service, origin).changed
