"""REST API: profiles, their consent (opt-out, opt-in, subscriptions), services, the consent
ledger of a profile, explain and privacy export/erasure.

Every change goes through the service layer (`profiles`, `consent`, `privacy`) and so lands in
the ledger with `Origin(source="api", actor="apikey:NAME", ip, user_agent, note)`. Viewers read;
operators and admins change. Lists are cursor-paginated (`{"items", "next_cursor"}`), errors are
RFC 9457 problem+json naming the field at fault, and every POST takes an `Idempotency-Key`.

Subscriptions are exposed both ways, as Adobe Campaign does: from the profile
(`/profiles/{id}/subscriptions`) and from the service (`/services/{id}/subscriptions`).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

import sqlalchemy as sa
from fastapi import APIRouter, Body, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from consentry.auth.service import Principal
from consentry.consent import confirmation
from consentry.consent import service as consent
from consentry.delivery import service as delivery
from consentry.domain import consent as consent_rules
from consentry.domain.addresses import normalize_email, normalize_phone
from consentry.domain.channels import Channel
from consentry.domain.consent import SubscriptionState
from consentry.domain.errors import ConsentryError, InvalidAddress, NotFound
from consentry.domain.ledger import Origin, Source
from consentry.domain.quarantine import Status
from consentry.domain.reachability import Exclusion
from consentry.ledger import service as ledger
from consentry.ledger import sql as ledger_sql
from consentry.privacy import service as privacy
from consentry.profiles import service as profiles
from consentry.settings import Settings
from consentry.store.schema import opt_outs, services, subscriptions
from consentry.store.schema import profiles as profiles_table
from consentry.store.types import utcnow
from consentry.web.api_common import (
    PROBLEM_RESPONSES,
    Cursor,
    IdempotencyKey,
    Limit,
    Problem,
    Reader,
    Writer,
    decode_cursor,
    from_domain,
    idempotent,
    page,
)
from consentry.web.deps import client_ip, state

router = APIRouter()

T = TypeVar("T")
MAX_ID = 2**63 - 1
_NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL


def _text(max_length: int) -> Any:
    return StringConstraints(max_length=max_length, pattern=_NO_NUL)


Note = Annotated[str, _text(2000)]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
ProfileId = Annotated[int, Path(ge=1, le=MAX_ID, description="The profile's numeric id.")]
ServiceRef = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
                                 description="The service's numeric id or its slug.")]


# --- models ----------------------------------------------------------------------------------

class Page(BaseModel, Generic[T]):
    """One page of a list; pass next_cursor as ?cursor= for the next (null: the last page)."""

    items: list[T]
    next_cursor: str | None


class PushTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: Annotated[str, StringConstraints(min_length=8, max_length=1024,
                                            pattern=r"^[\x21-\x7e]+$")]
    app_id: Annotated[str, _text(255)] = ""
    platform: Annotated[str, _text(16)] = ""


class ProfileIn(BaseModel):
    """A new profile. An address that was erased while suppressed comes back suppressed."""

    model_config = ConfigDict(extra="forbid")
    email: Annotated[str, _text(254)] | None = None
    phone: Annotated[str, _text(64)] | None = None
    first_name: Annotated[str, _text(255)] | None = None
    last_name: Annotated[str, _text(255)] | None = None
    locale: Annotated[str, _text(35)] | None = Field(None, examples=["de", "en-GB"])
    external_id: Annotated[str, _text(255)] | None = None
    attributes: dict[str, Any] | None = None
    push_tokens: list[PushTokenIn] = Field(default_factory=list, max_length=20)


class ProfilePatch(BaseModel):
    """Fields to change; a field sent as null is cleared, a field left out stays. A new address
    has the suppression of an erased address re-applied, as on creation."""

    model_config = ConfigDict(extra="forbid")
    email: Annotated[str, _text(254)] | None = None
    phone: Annotated[str, _text(64)] | None = None
    first_name: Annotated[str, _text(255)] | None = None
    last_name: Annotated[str, _text(255)] | None = None
    locale: Annotated[str, _text(35)] | None = None
    external_id: Annotated[str, _text(255)] | None = None
    attributes: dict[str, Any] | None = Field(None, description="Replaces all attributes.")


class ProfileSummary(BaseModel):
    id: int
    external_id: str | None
    email: str | None
    phone: str | None
    first_name: str | None
    last_name: str | None
    locale: str | None
    created_at: datetime
    updated_at: datetime


class PushTokenOut(BaseModel):
    token: str
    app_id: str
    platform: str


class OptOutDetail(BaseModel):
    at: datetime
    source: str
    actor: str | None
    note: str | None


class ChannelConsent(BaseModel):
    opted_out: bool
    detail: OptOutDetail | None


class Channels(BaseModel):
    email: ChannelConsent
    sms: ChannelConsent
    push: ChannelConsent


class SubscriptionOut(BaseModel):
    service: str
    channel: Channel
    state: SubscriptionState
    state_at: datetime
    subscribed_at: datetime | None
    expires_at: datetime | None


class AddressOut(BaseModel):
    address: str
    channel: Channel
    status: Status
    reason: str | None
    reachable: bool
    excluded_by: Exclusion | None
    shared_with: list[int] = Field(description="Other profiles holding this address.")


class Profile(BaseModel):
    id: int
    external_id: str | None
    email: str | None
    phone: str | None
    first_name: str | None
    last_name: str | None
    locale: str | None
    attributes: dict[str, Any]
    push_tokens: list[PushTokenOut]
    opted_out: bool = Field(description="Opted out of everything.")
    opted_out_detail: OptOutDetail | None
    channels: Channels
    subscriptions: list[SubscriptionOut]
    addresses: list[AddressOut]
    created_at: datetime
    updated_at: datetime


class ConsentChange(BaseModel):
    """Opt out of (or back in to) everything (channel null) or one channel."""

    model_config = ConfigDict(extra="forbid")
    channel: Channel | None = None
    note: Note | None = Field(None, description="Why; kept in the ledger.")


class ConsentResult(BaseModel):
    profile: int
    scope: Literal["all", "email", "sms", "push"]
    opted_out: bool = Field(description="Whether the profile is now opted out of this scope.")
    changed: bool = Field(description="False when it already was.")


class SubscribeProfile(BaseModel):
    """Subscribe this profile to a service (its slug or numeric id)."""

    model_config = ConfigDict(extra="forbid")
    service: Slug
    confirmed: bool = Field(False, description="Consent was confirmed already: skip double "
                                               "opt-in.")
    note: Note | None = None


class SubscribeToService(BaseModel):
    """Subscribe a profile to this service."""

    model_config = ConfigDict(extra="forbid")
    profile_id: Annotated[int, Field(ge=1, le=MAX_ID)]
    confirmed: bool = False
    note: Note | None = None


class SubscriptionResult(BaseModel):
    profile: int
    service: str
    state: SubscriptionState
    changed: bool
    needs_confirmation: bool
    confirmation_sent: bool | None = Field(
        None, description="For a pending double opt-in: whether the confirmation went out.")


class ServiceSubscriber(BaseModel):
    profile_id: int
    state: SubscriptionState
    state_at: datetime
    subscribed_at: datetime | None
    expires_at: datetime | None


class ServiceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slug: Annotated[str, StringConstraints(max_length=64, pattern=_NO_NUL)]
    channel: Channel
    label: Annotated[str, _text(255)]
    double_opt_in: bool = False
    validity_days: Annotated[int, Field(ge=1, le=36500)] | None = None
    public: bool = True


class SubscriptionCounts(BaseModel):
    pending: int
    subscribed: int
    unsubscribed: int
    expired: int


class ServiceOut(BaseModel):
    id: int
    slug: str
    label: str
    channel: Channel
    double_opt_in: bool
    validity_days: int | None
    public: bool
    subscriptions: SubscriptionCounts


class LedgerEvent(BaseModel):
    id: int
    at: datetime
    kind: str
    source: str
    actor: str | None
    profile_id: int | None
    channel: str | None
    service: str | None
    address: str | None
    old_state: str | None
    new_state: str | None
    wording: str | None
    ip: str | None
    user_agent: str | None
    note: str | None
    evidence: dict[str, Any] | None
    redacted: bool
    hash: str


class Export(BaseModel):
    """Everything kept about a profile (GDPR Art. 15/20)."""

    profile: Profile
    ledger: list[LedgerEvent]
    exported_at: datetime


class RuleResult(BaseModel):
    rule: Exclusion
    passed: bool | None = Field(description="null: decided by the delivery's analysis, "
                                            "which has not run yet.")


class Analysed(BaseModel):
    state: str
    reason: str | None


class Explanation(BaseModel):
    profile: int
    delivery: int
    channel: Channel
    address: str | None
    rules: list[RuleResult]
    verdict: Literal["send", "excluded"]
    reason: Exclusion | None
    analysed: Analysed | None


class OptOutScope(StrEnum):
    ALL = "all"
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"


# --- helpers ---------------------------------------------------------------------------------

def _origin(request: Request, principal: Principal, note: str | None = None) -> Origin:
    return Origin(source=Source.API, actor=principal.actor, ip=client_ip(request),
                  user_agent=request.headers.get("user-agent"), note=note)


_ADDRESS_FIELDS = {"email": "email", "sms": "phone", "push": "push_tokens"}


def _problem(exc: ConsentryError, field: str | None = None) -> Problem:
    """A service-layer error: conflicts 409, not found 404, the rest 400, with the field."""
    if isinstance(exc, InvalidAddress):
        field = field or _ADDRESS_FIELDS.get(exc.channel)
    elif field is None and "locale" in str(exc):
        field = "locale"
    elif field is None and "external id" in str(exc):
        field = "external_id"
    return from_domain(exc, field)


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def _profile(conn: sa.Connection, settings: Settings, profile_id: int) -> Profile:
    return Profile.model_validate(profiles.show(conn, settings, profile_id))


def _service(conn: sa.Connection, ref: str) -> consent.Service:
    """A service by slug, else by numeric id."""
    try:
        return consent.get_service(conn, ref)
    except NotFound:
        if ref.isdigit() and int(ref) <= MAX_ID:
            slug = conn.execute(sa.select(services.c.slug).where(
                services.c.id == int(ref))).scalar()
            if slug is not None:
                return consent.get_service(conn, slug)
        raise


def _service_out(conn: sa.Connection, service: consent.Service) -> ServiceOut:
    row = next(r for r in consent.list_services(conn) if r["id"] == service.id)
    return ServiceOut.model_validate(row)


def _cursor_of(cursor: str | None, kind: type) -> Any:
    value = decode_cursor(cursor)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, int) and not 0 <= value <= MAX_ID):
        raise Problem(400, "Bad request", "this cursor is not one of ours", "cursor")
    return value


def _in_memory_page(items: list[dict[str, Any]], key: str, limit: int,
                    cursor: str | None) -> dict[str, Any]:
    """A page of a short list the service layer returns whole, ordered by `key`."""
    after = _cursor_of(cursor, str)
    rest = [i for i in items if after is None or i[key] > after]
    return page(rest[:limit + 1], limit, lambda i: i[key])


# --- profiles --------------------------------------------------------------------------------

_SUMMARY = [profiles_table.c[n] for n in ProfileSummary.model_fields]
SearchText = Annotated[str | None, Query(max_length=320, pattern=_NO_NUL)]


@router.get("/profiles", tags=["profiles"], operation_id="listProfiles",
            summary="List and search profiles", response_model=Page[ProfileSummary],
            responses=PROBLEM_RESPONSES)
def list_profiles(
    request: Request, principal: Reader, limit: Limit = 50, cursor: Cursor = None,
    q: Annotated[SearchText, Query(description="Part of the name, email address, phone "
                                               "number or external id.")] = None,
    email: Annotated[SearchText, Query(description="Exactly this email address "
                                                   "(matched as addresses are).")] = None,
    phone: Annotated[SearchText, Query(description="Exactly this phone number.")] = None,
    external_id: Annotated[SearchText, Query(description="Exactly this external id.")] = None,
    opted_out: Annotated[OptOutScope | None, Query(
        description="Only profiles opted out of everything (all) or of this channel.")] = None,
) -> dict[str, Any]:
    st = state(request)
    p = profiles_table
    stmt = sa.select(*_SUMMARY).order_by(p.c.id).limit(limit + 1)
    after = _cursor_of(cursor, int)
    if after is not None:
        stmt = stmt.where(p.c.id > after)
    if q and q.strip():
        text = q.strip()
        name = sa.func.coalesce(p.c.first_name, "") + " " + sa.func.coalesce(p.c.last_name, "")
        stmt = stmt.where(sa.or_(name.icontains(text, autoescape=True),
                                 p.c.email_key.icontains(text, autoescape=True),
                                 p.c.phone.icontains(text, autoescape=True),
                                 p.c.external_id.icontains(text, autoescape=True)))
    try:
        if email is not None:
            stmt = stmt.where(p.c.email_key == normalize_email(email).key)
        if phone is not None:
            stmt = stmt.where(p.c.phone == normalize_phone(phone, st.settings.default_region)
                              .value)
    except InvalidAddress as exc:
        raise _problem(exc) from None
    if external_id is not None:
        stmt = stmt.where(p.c.external_id == external_id.strip())
    if opted_out is not None:
        stmt = stmt.where(p.c.id.in_(sa.select(opt_outs.c.profile_id).where(
            opt_outs.c.scope == opted_out.value)))
    with st.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(stmt).mappings()]
    return page(rows, limit, lambda r: r["id"])


@router.post("/profiles", tags=["profiles"], operation_id="createProfile",
             summary="Create a profile", status_code=201, response_model=Profile,
             responses=PROBLEM_RESPONSES)
def create_profile(request: Request, principal: Writer, body: ProfileIn,
                   idempotency_key: IdempotencyKey = None) -> Response:
    st = state(request)

    def run() -> tuple[int, Any]:
        new = profiles.NewProfile(
            email=body.email, phone=body.phone, first_name=body.first_name,
            last_name=body.last_name, locale=body.locale, external_id=body.external_id,
            attributes=body.attributes,
            push_tokens=tuple(profiles.PushToken(t.token, t.app_id, t.platform.lower())
                              for t in body.push_tokens))
        try:
            with st.engine.begin() as conn:
                pid = profiles.create(conn, st.settings, new, _origin(request, principal))
                return 201, _dump(_profile(conn, st.settings, pid))
        except ConsentryError as exc:
            raise _problem(exc) from None

    return idempotent(st, principal, idempotency_key, _dump(body), "POST /profiles", run)


@router.get("/profiles/{profile_id}", tags=["profiles"], operation_id="getProfile",
            summary="A profile with its consent, subscriptions and addresses",
            response_model=Profile, responses=PROBLEM_RESPONSES)
def get_profile(request: Request, principal: Reader, profile_id: ProfileId) -> Profile:
    st = state(request)
    try:
        with st.engine.connect() as conn:
            return _profile(conn, st.settings, profile_id)
    except ConsentryError as exc:
        raise _problem(exc) from None


@router.patch("/profiles/{profile_id}", tags=["profiles"], operation_id="updateProfile",
              summary="Change a profile's fields", response_model=Profile,
              responses=PROBLEM_RESPONSES)
def patch_profile(request: Request, principal: Writer, profile_id: ProfileId,
                  body: ProfilePatch) -> Profile:
    st = state(request)
    changes = body.model_dump(include=body.model_fields_set)
    try:
        with st.engine.begin() as conn:
            profiles.update(conn, st.settings, profile_id, changes, _origin(request, principal))
            return _profile(conn, st.settings, profile_id)
    except ConsentryError as exc:
        raise _problem(exc) from None


@router.delete("/profiles/{profile_id}", tags=["privacy"], operation_id="eraseProfile",
               summary="Erase a profile (GDPR Art. 17)", status_code=204,
               response_class=Response, responses=PROBLEM_RESPONSES,
               description="Deletes the profile's personal data; its addresses stay "
                           "suppressed as keyed hashes and its ledger events are redacted.")
def erase_profile(request: Request, principal: Writer, profile_id: ProfileId,
                  note: Annotated[str | None, Query(max_length=2000, pattern=_NO_NUL,
                                                    description="Why; kept in the ledger.")]
                  = None) -> Response:
    st = state(request)
    try:
        with st.engine.begin() as conn:
            privacy.erase(conn, st.settings, profile_id, _origin(request, principal, note))
    except ConsentryError as exc:
        raise _problem(exc) from None
    return Response(status_code=204)


# --- opt-out and opt-in ----------------------------------------------------------------------

def _consent_change(request: Request, principal: Principal, profile_id: int,
                    body: ConsentChange | None, key: str | None, *, opt_out: bool) -> Response:
    st = state(request)
    body = body or ConsentChange()
    change = consent.opt_out if opt_out else consent.opt_in

    def run() -> tuple[int, Any]:
        try:
            with st.engine.begin() as conn:
                changed = change(conn, profile_id, body.channel,
                                 _origin(request, principal, body.note))
        except ConsentryError as exc:
            raise _problem(exc) from None
        scope = body.channel.value if body.channel else "all"
        return 200, _dump(ConsentResult(profile=profile_id, scope=scope, opted_out=opt_out,
                                        changed=changed))

    path = f"POST /profiles/{profile_id}/{'optout' if opt_out else 'optin'}"
    return idempotent(st, principal, key, _dump(body), path, run)


@router.post("/profiles/{profile_id}/optout", tags=["consent"], operation_id="optOut",
             summary="Opt a profile out of everything or of one channel",
             response_model=ConsentResult, responses=PROBLEM_RESPONSES)
def opt_out(request: Request, principal: Writer, profile_id: ProfileId,
            body: Annotated[ConsentChange | None, Body()] = None,
            idempotency_key: IdempotencyKey = None) -> Response:
    return _consent_change(request, principal, profile_id, body, idempotency_key,
                           opt_out=True)


@router.post("/profiles/{profile_id}/optin", tags=["consent"], operation_id="optIn",
             summary="Undo an opt-out of everything or of one channel",
             response_model=ConsentResult, responses=PROBLEM_RESPONSES)
def opt_in(request: Request, principal: Writer, profile_id: ProfileId,
           body: Annotated[ConsentChange | None, Body()] = None,
           idempotency_key: IdempotencyKey = None) -> Response:
    return _consent_change(request, principal, profile_id, body, idempotency_key,
                           opt_out=False)


# --- subscriptions ---------------------------------------------------------------------------

def _subscribe(request: Request, principal: Principal, profile_id: int, service_ref: str,
               confirmed: bool, note: str | None) -> tuple[int, Any]:
    st = state(request)
    try:
        with st.engine.begin() as conn:
            service = _service(conn, service_ref)
            result = consent.subscribe(conn, profile_id, service,
                                       _origin(request, principal, note), confirmed=confirmed)
    except ConsentryError as exc:
        raise _problem(exc, "service" if isinstance(exc, NotFound) and "service" in str(exc)
                       else None) from None
    sent = None
    if result.state is SubscriptionState.PENDING:
        # After the commit: no row stays locked while the relay answers.
        sent = confirmation.send_confirmation(st.engine, st.settings, st.signer, profile_id,
                                              service).sent
    return 200, _dump(SubscriptionResult(
        profile=profile_id, service=service.slug, state=result.state, changed=result.changed,
        needs_confirmation=result.needs_confirmation, confirmation_sent=sent))


def _unsubscribe(request: Request, principal: Principal, profile_id: int,
                 service_ref: str) -> Response:
    st = state(request)
    try:
        with st.engine.begin() as conn:
            service = _service(conn, service_ref)
            consent.unsubscribe(conn, profile_id, service, _origin(request, principal))
    except ConsentryError as exc:
        raise _problem(exc) from None
    return Response(status_code=204)


@router.get("/profiles/{profile_id}/subscriptions", tags=["subscriptions"],
            operation_id="listProfileSubscriptions", summary="A profile's subscriptions",
            response_model=Page[SubscriptionOut], responses=PROBLEM_RESPONSES)
def profile_subscriptions(
    request: Request, principal: Reader, profile_id: ProfileId, limit: Limit = 50,
    cursor: Cursor = None,
    status: Annotated[SubscriptionState | None, Query(description="Only this state.")] = None,
    channel: Annotated[Channel | None, Query(description="Only this channel.")] = None,
) -> dict[str, Any]:
    st = state(request)
    try:
        with st.engine.connect() as conn:
            profiles.get(conn, profile_id)
            items = consent.subscriptions_of(conn, profile_id)
    except ConsentryError as exc:
        raise _problem(exc) from None
    items = [i for i in items if (status is None or i["state"] == status.value)
             and (channel is None or i["channel"] == channel.value)]
    return _in_memory_page(items, "service", limit, cursor)


@router.post("/profiles/{profile_id}/subscriptions", tags=["subscriptions"],
             operation_id="subscribeProfile", summary="Subscribe a profile to a service",
             response_model=SubscriptionResult, responses=PROBLEM_RESPONSES,
             description="A double opt-in service leaves the subscription pending and sends "
                         "the confirmation, unless `confirmed` is true.")
def subscribe_profile(request: Request, principal: Writer, profile_id: ProfileId,
                      body: SubscribeProfile, idempotency_key: IdempotencyKey = None
                      ) -> Response:
    return idempotent(
        state(request), principal, idempotency_key, _dump(body),
        f"POST /profiles/{profile_id}/subscriptions",
        lambda: _subscribe(request, principal, profile_id, body.service, body.confirmed,
                           body.note))


@router.delete("/profiles/{profile_id}/subscriptions/{service}", tags=["subscriptions"],
               operation_id="unsubscribeProfile",
               summary="Unsubscribe a profile from a service", status_code=204,
               response_class=Response, responses=PROBLEM_RESPONSES)
def unsubscribe_profile(request: Request, principal: Writer, profile_id: ProfileId,
                        service: ServiceRef) -> Response:
    return _unsubscribe(request, principal, profile_id, service)


# --- services --------------------------------------------------------------------------------

@router.get("/services", tags=["services"], operation_id="listServices",
            summary="Services with their subscription counts",
            response_model=Page[ServiceOut], responses=PROBLEM_RESPONSES)
def list_services(request: Request, principal: Reader, limit: Limit = 50,
                  cursor: Cursor = None,
                  channel: Annotated[Channel | None, Query(description="Only this channel.")]
                  = None) -> dict[str, Any]:
    with state(request).engine.connect() as conn:
        items = consent.list_services(conn)
    items = [i for i in items if channel is None or i["channel"] == channel.value]
    return _in_memory_page(items, "slug", limit, cursor)


@router.post("/services", tags=["services"], operation_id="createService",
             summary="Create a service", status_code=201, response_model=ServiceOut,
             responses=PROBLEM_RESPONSES)
def create_service(request: Request, principal: Writer, body: ServiceIn,
                   idempotency_key: IdempotencyKey = None) -> Response:
    st = state(request)

    def run() -> tuple[int, Any]:
        try:
            with st.engine.begin() as conn:
                service = consent.create_service(
                    conn, body.slug, body.channel, body.label,
                    double_opt_in=body.double_opt_in, validity_days=body.validity_days,
                    public=body.public)
                return 201, _dump(_service_out(conn, service))
        except ConsentryError as exc:
            text = str(exc)
            field = ("label" if "label" in text else "validity_days" if "validity" in text
                     else "slug")
            raise _problem(exc, field) from None

    return idempotent(st, principal, idempotency_key, _dump(body), "POST /services", run)


@router.get("/services/{service}", tags=["services"], operation_id="getService",
            summary="A service by id or slug", response_model=ServiceOut,
            responses=PROBLEM_RESPONSES)
def get_service(request: Request, principal: Reader, service: ServiceRef) -> ServiceOut:
    try:
        with state(request).engine.connect() as conn:
            return _service_out(conn, _service(conn, service))
    except ConsentryError as exc:
        raise _problem(exc) from None


@router.get("/services/{service}/subscriptions", tags=["subscriptions"],
            operation_id="listServiceSubscriptions", summary="A service's subscribers",
            response_model=Page[ServiceSubscriber], responses=PROBLEM_RESPONSES)
def service_subscriptions(
    request: Request, principal: Reader, service: ServiceRef, limit: Limit = 50,
    cursor: Cursor = None,
    status: Annotated[SubscriptionState | None, Query(description="Only this state.")] = None,
) -> dict[str, Any]:
    now = utcnow()
    s = subscriptions
    after = _cursor_of(cursor, int)
    try:
        with state(request).engine.connect() as conn:
            found = _service(conn, service)
            stmt = (sa.select(s.c.profile_id, s.c.state, s.c.state_at, s.c.subscribed_at,
                              s.c.expires_at)
                    .where(s.c.service_id == found.id).order_by(s.c.profile_id)
                    .limit(limit + 1))
            if after is not None:
                stmt = stmt.where(s.c.profile_id > after)
            # A subscription whose validity ended reads as expired before the periodic task
            # records it, as consent.subscriptions_of shows it.
            lapsed = sa.and_(s.c.state == "subscribed", s.c.expires_at.is_not(None),
                             s.c.expires_at <= now)
            if status is SubscriptionState.EXPIRED:
                stmt = stmt.where(sa.or_(s.c.state == "expired", lapsed))
            elif status is SubscriptionState.SUBSCRIBED:
                stmt = stmt.where(s.c.state == "subscribed", sa.not_(lapsed))
            elif status is not None:
                stmt = stmt.where(s.c.state == status.value)
            rows = [dict(r) for r in conn.execute(stmt).mappings()]
    except ConsentryError as exc:
        raise _problem(exc) from None
    for row in rows:
        if consent_rules.expired(SubscriptionState(row["state"]), row["expires_at"], now):
            row["state"] = SubscriptionState.EXPIRED.value
    return page(rows, limit, lambda r: r["profile_id"])


@router.post("/services/{service}/subscriptions", tags=["subscriptions"],
             operation_id="subscribeToService", summary="Subscribe a profile to this service",
             response_model=SubscriptionResult, responses=PROBLEM_RESPONSES)
def subscribe_to_service(request: Request, principal: Writer, service: ServiceRef,
                         body: SubscribeToService, idempotency_key: IdempotencyKey = None
                         ) -> Response:
    return idempotent(
        state(request), principal, idempotency_key, _dump(body),
        f"POST /services/{service}/subscriptions",
        lambda: _subscribe(request, principal, body.profile_id, service, body.confirmed,
                           body.note))


@router.delete("/services/{service}/subscriptions/{profile_id}", tags=["subscriptions"],
               operation_id="unsubscribeFromService",
               summary="Unsubscribe a profile from this service", status_code=204,
               response_class=Response, responses=PROBLEM_RESPONSES)
def unsubscribe_from_service(request: Request, principal: Writer, service: ServiceRef,
                             profile_id: ProfileId) -> Response:
    return _unsubscribe(request, principal, profile_id, service)


# --- ledger, explain, export -----------------------------------------------------------------

@router.get("/profiles/{profile_id}/ledger", tags=["ledger"], operation_id="profileLedger",
            summary="A profile's consent history, oldest first",
            response_model=Page[LedgerEvent], responses=PROBLEM_RESPONSES)
def profile_ledger(
    request: Request, principal: Reader, profile_id: ProfileId, limit: Limit = 50,
    cursor: Cursor = None,
    kind: Annotated[str | None, Query(max_length=32, pattern=_NO_NUL,
                                      description="Only this kind (opt_out, opt_in, "
                                                  "subscription, quarantine, ...).")] = None,
    channel: Annotated[OptOutScope | None, Query(description="Only this channel "
                                                            "(all: global opt-outs).")] = None,
    source: Annotated[str | None, Query(max_length=32, pattern=_NO_NUL,
                                        description="Only this source (api, cli, ...).")]
    = None,
) -> dict[str, Any]:
    ev = ledger_sql.ev
    after = _cursor_of(cursor, list)
    try:
        with state(request).engine.connect() as conn:
            profile = profiles.get(conn, profile_id)
            addresses = [a.key for a in profiles.addresses_of(conn, profile)]
            stmt = ledger_sql.profile_history(profile_id, addresses).limit(limit + 1)
            if after is not None:
                try:
                    at, event_id = datetime.fromisoformat(after[0]), int(after[1])
                    if at.tzinfo is None or not 0 <= event_id <= MAX_ID:
                        raise ValueError(after)
                except (ValueError, TypeError, IndexError):
                    raise Problem(400, "Bad request", "this cursor is not one of ours",
                                  "cursor") from None
                stmt = stmt.where(sa.or_(ev.c.at > at, sa.and_(ev.c.at == at,
                                                               ev.c.id > event_id)))
            for column, value in ((ev.c.kind, kind), (ev.c.source, source),
                                  (ev.c.channel, channel.value if channel else None)):
                if value is not None:
                    stmt = stmt.where(column == value)
            rows = [ledger.event_json(r._mapping) for r in conn.execute(stmt)]
    except ConsentryError as exc:
        raise _problem(exc) from None
    return page(rows, limit, lambda r: [r["at"], r["id"]])


@router.get("/profiles/{profile_id}/export", tags=["privacy"], operation_id="exportProfile",
            summary="Everything kept about a profile (GDPR Art. 15/20)",
            response_model=Export, responses=PROBLEM_RESPONSES)
def export_profile(request: Request, principal: Reader, profile_id: ProfileId) -> Export:
    st = state(request)
    try:
        with st.engine.connect() as conn:
            return Export.model_validate(privacy.export(conn, st.settings, profile_id))
    except ConsentryError as exc:
        raise _problem(exc) from None


@router.get("/profiles/{profile_id}/explain/{delivery_id}", tags=["profiles"],
            operation_id="explainDelivery",
            summary="Why a delivery would (not) reach this profile: each rule in order",
            response_model=Explanation, responses=PROBLEM_RESPONSES)
def explain(request: Request, principal: Reader, profile_id: ProfileId,
            delivery_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> Explanation:
    st = state(request)
    try:
        with st.engine.connect() as conn:
            return Explanation.model_validate(
                delivery.explain(conn, st.settings, profile_id, delivery_id))
    except ConsentryError as exc:
        raise _problem(exc) from None
