"""Subscription form /s/{service} and double opt-in confirmation /c/{token} (domain.md 6, 8).

/s/{service}: an address of the service's channel, an optional name and a consent checkbox
whose wording is versioned; the version goes into the ledger event's `wording`, the exact text
shown (in the page's language) into its evidence with the page, with IP and user agent. A
double opt-in service keeps the subscription pending and sends the confirmation message
(consent.confirmation); the answer never says whether the address was known, subscribed
already, quarantined or denylisted.

/c/{token}: GET shows one button and changes nothing (link scanners follow every GET); the
POST confirms and answers with the final page itself. A forged or changed link gets 400, an
expired one 410 with a form that sends a new link while the request is still pending.
"""

from __future__ import annotations

import threading
import unicodedata
from dataclasses import dataclass

import phonenumbers
import sqlalchemy as sa
from fastapi import APIRouter, Form, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import Response

from consentry.consent import confirmation
from consentry.consent import service as consent
from consentry.consent import sql as consent_sql
from consentry.consent.service import Service
from consentry.domain.addresses import Address, normalize_email, normalize_phone
from consentry.domain.channels import Channel
from consentry.domain.consent import SubscriptionState
from consentry.domain.errors import ConsentryError, NotFound
from consentry.domain.ledger import Origin, Source
from consentry.profiles import service as profiles
from consentry.profiles import sql as profiles_sql
from consentry.tokens import ExpiredToken, InvalidToken
from consentry.web.deps import AppState, client_ip, state
from consentry.web.render import gettext, language, page
from consentry.web.security import (
    CSRF_FIELD,
    HONEYPOT_FIELD,
    RateLimiter,
    csrf_ok,
    is_bot,
    private_page,
)

router = APIRouter()

# The consent wordings, by version. A version's text never changes: a new text is a new
# version (the ledger names the version; the evidence holds the text as shown, translated).
WORDINGS = {
    "subscribe-v1": "Yes, I want to receive %(service)s. I can withdraw my consent at any "
                    "time, free of charge, with effect for the future.",
    "confirm-v1": "Please confirm that you want to receive %(service)s.",
}
SUBSCRIBE_WORDING = "subscribe-v1"
CONFIRM_WORDING = "confirm-v1"

NAME_MAX = 255  # the profile's column


def wording_text(lang: str, version: str, service: Service) -> str:
    return gettext(lang, WORDINGS[version], service=service.label)


# --- rate limits: per client IP and per address, one pair per app --------------------------

_limits_lock = threading.Lock()


def _limiters(request: Request) -> tuple[RateLimiter, RateLimiter]:
    app_state = request.app.state
    limits: tuple[RateLimiter, RateLimiter] | None = getattr(app_state, "subscribe_limits", None)
    if limits is None:
        with _limits_lock:
            limits = getattr(app_state, "subscribe_limits", None)
            if limits is None:
                web = state(request).settings.web
                limits = (RateLimiter(web.form_limit_per_ip, web.form_limit_window),
                          RateLimiter(web.form_limit_per_address, web.form_limit_window))
                app_state.subscribe_limits = limits
    return limits


def _allowed(request: Request, channel: Channel, address_key: str) -> bool:
    per_ip, per_address = _limiters(request)
    return (per_ip.allow(f"ip:{client_ip(request)}")
            and per_address.allow(f"{channel.value}:{address_key}"))


# --- shared answers ------------------------------------------------------------------------


def _message(request: Request, lang: str, status: int, title: str, *paragraphs: str,
             resend_action: str | None = None) -> Response:
    return page(request, "message.html", lang, status, title=gettext(lang, title),
                paragraphs=list(paragraphs), resend_action=resend_action)


def _forbidden(request: Request, lang: str) -> Response:
    return _message(request, lang, 403, "Please try again", gettext(
        lang, "The form was open for too long or came from another site. Please reload the "
              "page and send it again."))


def _too_many(request: Request, lang: str) -> Response:
    return _message(request, lang, 429, "Too many requests",
                    gettext(lang, "Please wait a few minutes before you try again."))


def _subscribed(request: Request, lang: str, service: Service) -> Response:
    return _message(request, lang, 200, "You are subscribed", gettext(
        lang, "You will receive %(service)s from now on. You can unsubscribe at any time.",
        service=service.label))


def _check_inbox(request: Request, lang: str, service: Service) -> Response:
    s = state(request).settings
    if service.channel is Channel.SMS:
        title, sent = "Check your messages", gettext(
            lang, "We are sending a text message to the number you entered. Please open the "
                  "link in it to confirm your subscription to %(service)s.",
            service=service.label)
    else:
        title, sent = "Check your inbox", gettext(
            lang, "We are sending a message to the address you entered. Please open the link "
                  "in it to confirm your subscription to %(service)s.", service=service.label)
    return _message(request, lang, 200, title, sent, gettext(
        lang, "You are not subscribed until you confirm. The link is valid for %(hours)s "
              "hours.", hours=confirmation.hours_text(s)))


def _answer(request: Request, lang: str, service: Service) -> Response:
    """What the form answers, whatever the address's state was."""
    if service.double_opt_in:
        return _check_inbox(request, lang, service)
    return _subscribed(request, lang, service)


# --- /s/{service} --------------------------------------------------------------------------


def _public_service(st: AppState, slug: str) -> Service:
    with st.engine.connect() as conn:
        try:
            service = consent.get_service(conn, slug)
        except NotFound:
            raise HTTPException(404) from None
    if not service.public or service.channel is Channel.PUSH:
        raise HTTPException(404)
    return service


def _phone_example(region: str) -> str:
    number = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    if number is None:
        return "+49 151 23456789"
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def _form(request: Request, lang: str, service: Service, status: int = 200,
          values: dict[str, str] | None = None,
          errors: dict[str, str] | None = None) -> Response:
    return page(request, "subscribe.html", lang, status, service=service,
                email=service.channel is Channel.EMAIL,
                values=values or {"address": "", "first_name": "", "last_name": ""},
                errors=errors or {}, wording_version=SUBSCRIBE_WORDING,
                wording=wording_text(lang, SUBSCRIBE_WORDING, service),
                phone_example=_phone_example(state(request).settings.default_region))


@router.get("/s/{slug}")
def subscription_form(request: Request, slug: str) -> Response:
    service = _public_service(state(request), slug)
    return _form(request, language(request), service)


def _clean_name(value: str) -> str:
    text = "".join(c for c in value if unicodedata.category(c)[0] != "C")
    return " ".join(text.split())[:NAME_MAX]


def _find_or_create(conn: sa.Connection, st: AppState, address: Address, first_name: str,
                    last_name: str, lang: str, origin: Origin) -> int:
    """The oldest profile holding the address, or a new one. An existing profile's data is
    never changed from this form: anyone can type anyone's address into it."""
    if address.channel is Channel.EMAIL:
        found = conn.execute(profiles_sql.BY_EMAIL_KEY, {"key": address.key}).scalars().first()
    else:
        found = conn.execute(profiles_sql.BY_PHONE, {"phone": address.value}).scalars().first()
    if found is not None:
        return int(found)
    new = profiles.NewProfile(email=address.value if address.channel is Channel.EMAIL else None,
                              phone=address.value if address.channel is Channel.SMS else None,
                              first_name=first_name or None, last_name=last_name or None,
                              locale=lang)
    return profiles.create(conn, st.settings, new, origin)


@router.post("/s/{slug}")
def subscribe(request: Request, slug: str, address: str = Form(""),
              first_name: str = Form(""), last_name: str = Form(""),
              agreed: str = Form("", alias="consent"), wording: str = Form(""),
              csrf: str = Form("", alias=CSRF_FIELD),
              honeypot: str = Form("", alias=HONEYPOT_FIELD)) -> Response:
    st = state(request)
    service = _public_service(st, slug)
    lang = language(request)
    if not csrf_ok(request, csrf):
        return _forbidden(request, lang)
    if is_bot(honeypot):
        return _answer(request, lang, service)  # the usual answer; nothing stored or sent
    values = {"address": address.strip()[:320], "first_name": _clean_name(first_name),
              "last_name": _clean_name(last_name)}
    errors: dict[str, str] = {}
    normalized: Address | None = None
    try:
        normalized = (normalize_email(address) if service.channel is Channel.EMAIL
                      else normalize_phone(address, st.settings.default_region))
    except ConsentryError:
        errors["address"] = gettext(lang, "Please enter a valid email address."
                                    if service.channel is Channel.EMAIL
                                    else "Please enter a valid mobile number.")
    if not agreed or wording not in WORDINGS or not wording.startswith("subscribe-"):
        errors["consent"] = gettext(lang, "Please tick the box to give your consent.")
    if errors or normalized is None:
        return _form(request, lang, service, 400, values, errors)
    if not _allowed(request, service.channel, normalized.key):
        return _too_many(request, lang)
    origin = Origin(source=Source.LANDING_PAGE, actor="public", ip=client_ip(request),
                    user_agent=request.headers.get("user-agent"), wording=wording,
                    evidence={"page": f"/s/{service.slug}", "lang": lang,
                              "text": wording_text(lang, wording, service)})
    with st.engine.begin() as conn:
        pid = _find_or_create(conn, st, normalized, values["first_name"], values["last_name"],
                              lang, origin)
        result = consent.subscribe(conn, pid, service, origin)
    if result.state is SubscriptionState.PENDING:
        # A new request, or one still pending whose message went astray: a fresh link.
        confirmation.send_confirmation(st.engine, st.settings, st.signer, pid, service,
                                       lang=lang)
    return _answer(request, lang, service)


# --- /c/{token} ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    """The subscription a confirmation link names, as it stands."""

    profile_id: int
    locale: str | None
    address: Address | None
    service: Service
    state: SubscriptionState | None


def _lookup(st: AppState, profile_id: int, slug: str) -> _Request | None:
    with st.engine.connect() as conn:
        try:
            profile = profiles.get(conn, profile_id)
            service = consent.get_service(conn, slug)
        except NotFound:
            return None  # erased, or the service is gone
        current = next((s["state"] for s in consent.subscriptions_of(conn, profile_id)
                        if s["service"] == slug), None)
        address = next((a for a in profiles.addresses_of(conn, profile)
                        if a.channel is service.channel), None)
    return _Request(profile_id, profile["locale"], address, service,
                    SubscriptionState(current) if current else None)


def _max_age(st: AppState) -> float:
    return st.settings.web.confirm_hours * 3600


def _invalid(request: Request) -> Response:
    lang = language(request)
    return private_page(_message(request, lang, 400, "This link is not valid", gettext(
        lang, "The link is incomplete or was changed. Please use the link from the message "
              "exactly as you received it.")))


def _gone(request: Request, lang: str) -> Response:
    """A genuine link to a request that is no longer pending (purged, withdrawn, erased)."""
    return private_page(_message(request, lang, 410, "This link has expired", gettext(
        lang, "This request is no longer open. Please subscribe again.")))


def _read(request: Request, token: str) -> tuple[_Request | None, bool] | Response:
    """(the request, whether the link expired), or the error page of a bad link."""
    st = state(request)
    try:
        profile_id, slug = st.signer.read_confirmation_token(token, _max_age(st))
        expired = False
    except ExpiredToken as exc:
        profile_id, slug, expired = exc.profile_id, exc.service_slug, True
    except InvalidToken:
        return _invalid(request)
    return _lookup(st, profile_id, slug), expired


def _expired(request: Request, lang: str, token: str) -> Response:
    return private_page(_message(
        request, lang, 410, "This link has expired",
        gettext(lang, "Confirmation links are valid for %(hours)s hours. We can send you a "
                      "new one.", hours=confirmation.hours_text(state(request).settings)),
        resend_action=f"/c/{token}/resend?lang={lang}"))


def _confirm_page(request: Request, lang: str, found: _Request) -> Response:
    return private_page(page(request, "confirm.html", lang, 200, service=found.service,
                             wording_version=CONFIRM_WORDING,
                             wording=wording_text(lang, CONFIRM_WORDING, found.service)))


@router.get("/c/{token}")
def confirmation_page(request: Request, token: str) -> Response:
    """One button; nothing changes on a GET."""
    checked = _checked(request, token, None)
    if isinstance(checked, Response):
        return checked
    found, expired, lang = checked
    if expired:
        return _expired(request, lang, token)
    return _confirm_page(request, lang, found)


def _checked(request: Request, token: str,
             csrf: str | None) -> tuple[_Request, bool, str] | Response:
    """What a confirmation link's page starts with: the link read, for a POST (csrf given)
    the CSRF value checked, an already confirmed request answered, one no longer pending
    refused. (pending request, expired, language) or the answer."""
    read = _read(request, token)
    if isinstance(read, Response):
        return read
    found, expired = read
    if found is None:
        return _gone(request, language(request))
    lang = language(request, found.locale)
    if csrf is not None and not csrf_ok(request, csrf):
        return private_page(_forbidden(request, lang))
    if found.state is SubscriptionState.SUBSCRIBED:
        return private_page(_subscribed(request, lang, found.service))
    if found.state is not SubscriptionState.PENDING:
        return _gone(request, lang)
    return found, expired, lang


@router.post("/c/{token}")
def confirm(request: Request, token: str, csrf: str = Form("", alias=CSRF_FIELD),
            honeypot: str = Form("", alias=HONEYPOT_FIELD)) -> Response:
    """Confirm a pending subscription and answer with the final page."""
    checked = _checked(request, token, csrf)
    if isinstance(checked, Response):
        return checked
    found, expired, lang = checked
    if expired:
        return _expired(request, lang, token)
    if is_bot(honeypot):
        return _confirm_page(request, lang, found)
    st = state(request)
    service = found.service
    origin = Origin(source=Source.LANDING_PAGE, actor=f"profile:{found.profile_id}",
                    ip=client_ip(request), user_agent=request.headers.get("user-agent"),
                    wording=CONFIRM_WORDING,
                    evidence={"page": "/c", "lang": lang,
                              "text": wording_text(lang, CONFIRM_WORDING, service)})
    with st.engine.begin() as conn:
        try:
            consent.lock_profile(conn, found.profile_id)
        except NotFound:
            return _gone(request, lang)
        # Only a request still pending is confirmed: an old link must not undo a later
        # unsubscribe, nor revive a purged request.
        row = conn.execute(consent_sql.SUBSCRIPTION, {"profile_id": found.profile_id,
                                                      "service_id": service.id}).first()
        current = row.state if row else None
        if current == SubscriptionState.PENDING:
            consent.subscribe(conn, found.profile_id, service, origin, confirmed=True)
        elif current != SubscriptionState.SUBSCRIBED:
            return _gone(request, lang)
    return private_page(_subscribed(request, lang, service))


@router.post("/c/{token}/resend")
def resend(request: Request, token: str, csrf: str = Form("", alias=CSRF_FIELD)) -> Response:
    """A new link for a request still pending (the expired page's form)."""
    checked = _checked(request, token, csrf)
    if isinstance(checked, Response):
        return checked
    found, _expired_link, lang = checked
    if found.address is None:
        return _gone(request, lang)
    if not _allowed(request, found.service.channel, found.address.key):
        return private_page(_too_many(request, lang))
    st = state(request)
    confirmation.send_confirmation(st.engine, st.settings, st.signer, found.profile_id,
                                   found.service, lang=lang)
    return private_page(_check_inbox(request, lang, found.service))
