"""REST API for the operations side: the platform-wide quarantine (suppression list), deliveries
(create, analyse, send, pause, resume, report, exclusion log) and the alerting figures (bounce
and complaint rates per delivery and per day against the thresholds).

Every rule lives in the service layer (quarantine.service, delivery.service, delivery.sending,
feedback.rates); these handlers translate HTTP to it. Quarantine changes are recorded in the
ledger with the API key as actor (source "api"); delivery actions in the audit log.

Sending is asynchronous: POST /deliveries/{id}/send marks the delivery `sending` and answers
202; the background work of `consentry serve` (or a `consentry worker`) sends it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from consentry.auth.service import Principal, audit
from consentry.delivery import sending
from consentry.delivery import service as deliveries
from consentry.delivery.content import Content, ContentError
from consentry.delivery.content import check as check_content
from consentry.domain import quarantine as rules
from consentry.domain.addresses import Address, guess_channel, normalize
from consentry.domain.channels import Channel
from consentry.domain.errors import ConsentryError, InvalidAddress, NotFound
from consentry.domain.ledger import Origin, Source
from consentry.feedback import rates
from consentry.quarantine import service as quarantine
from consentry.quarantine import sql as quarantine_sql
from consentry.store.schema import deliveries as deliveries_table
from consentry.store.schema import quarantine as quarantine_table
from consentry.store.schema import services as services_table
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
from consentry.web.deps import AppState, client_ip, state

router = APIRouter()

QUARANTINE = ["quarantine"]
DELIVERIES = ["deliveries"]
RATES = ["rates"]

# PostgreSQL refuses NUL in text: such input is refused as invalid instead of failing later.
_NO_NUL = r"^[^\x00]*$"
MAX_ID = 2**31 - 1  # a delivery's target ids are delivery_id * 2^32 + n, kept in a BIGINT


def _text(max_length: int, min_length: int = 0) -> Any:
    return StringConstraints(min_length=min_length, max_length=max_length, pattern=_NO_NUL)


ChannelName = Literal["email", "sms", "push"]
StatusName = Literal["valid", "erroneous", "quarantined", "denylisted", "allowlisted"]
SettableStatus = Literal["quarantined", "denylisted", "allowlisted"]
DeliveryState = Literal["draft", "analyzed", "sending", "paused", "done"]
Kind = Literal["marketing", "transactional"]
Audience = Literal["service", "all", "filter", "proof"]
Reason = Annotated[str, _text(32, 1)]
FilterField = Annotated[str, StringConstraints(
    pattern=r"^(locale|first_name|last_name|external_id|attr\.[A-Za-z0-9_-]{1,64})$")]


def _iso_only(value: Any) -> Any:
    if not isinstance(value, str | datetime):
        raise ValueError("expected an ISO 8601 date-time")
    return value


# A date-time as the schema says (a string), not a number of seconds.
Timestamp = Annotated[datetime, BeforeValidator(_iso_only)]

DeliveryId = Annotated[int, Path(ge=1, le=MAX_ID, description="The delivery's id.")]
AddressParam = Annotated[str, Path(min_length=1, max_length=1024, pattern=_NO_NUL,
                                   description="Email address, phone number or push token "
                                               "(URL-encoded).")]
ChannelQuery = Annotated[ChannelName | None, Query(
    description="The address's channel (default: guessed from the address).")]


# --- models ----------------------------------------------------------------------------------

class Strict(BaseModel):
    # Unknown fields are refused; numbers and booleans are strict where they are declared
    # (Field(strict=True)): "5" for 5 or 0 for false is refused, as the schema says.
    model_config = ConfigDict(extra="forbid")


class QuarantineEntry(BaseModel):
    """An address's platform-wide state; `valid` (and nulls) for an address never seen."""

    address: str
    channel: ChannelName
    status: StatusName
    reason: str | None
    error_count: int
    first_error_at: datetime | None
    last_error_at: datetime | None
    status_at: datetime | None
    source: str | None
    note: str | None
    updated_at: datetime | None


class QuarantineChange(QuarantineEntry):
    changed: bool = Field(description="Whether the request changed the address's state.")


class QuarantinePage(BaseModel):
    items: list[QuarantineEntry]
    next_cursor: str | None


class QuarantineUpdate(Strict):
    status: SettableStatus
    reason: Reason | None = Field(None, description="Default: manual.")
    note: Annotated[str, _text(10_000)] | None = None
    channel: ChannelName | None = Field(None, description="Default: guessed from the address.")


class ReleaseRequest(Strict):
    note: Annotated[str, _text(10_000)] | None = None
    channel: ChannelName | None = Field(None, description="Default: guessed from the address.")


class BulkRelease(Strict):
    """Blocking entries matching every filter given go back to valid (the outage case)."""

    reason: Reason | None = None
    domain: Annotated[str, _text(255, 1)] | None = None
    since: Timestamp | None = Field(None, description="Status set at or after (UTC if naive).")
    until: Timestamp | None = Field(None, description="Status set before (UTC if naive).")
    channel: ChannelName | None = None
    dry_run: bool = Field(False, strict=True,
                          description="Only count what would be released.")
    note: Annotated[str, _text(10_000)] | None = None


class BulkReleaseResult(BaseModel):
    count: int = Field(description="Released, or with dry_run, that would be released.")
    dry_run: bool


class DeliveryCreate(Strict):
    name: Annotated[str, _text(255, 1)]
    channel: ChannelName
    service: Annotated[str, _text(64, 1)] | None = Field(
        None, description="Target this service's subscribers.")
    audience: Audience | None = Field(
        None, description="Default: proof with `proof`, filter with `where` and no service, "
                          "service with `service`, else all.")
    where: dict[FilterField, Annotated[str, _text(1024)]] | None = Field(
        None, description="Profile filters: locale, first_name, last_name, external_id or "
                          "attr.NAME to a value.")
    proof: list[Annotated[str, _text(1024, 1)]] | None = Field(
        None, max_length=100, description="Seed/test addresses: a proof delivery.")
    kind: Kind = "marketing"
    subject: Annotated[str, _text(2_000)] | None = Field(
        None, description="Email subject or push title (a template).")
    text: Annotated[str, _text(1_000_000)] | None = Field(
        None, description="Email text part, SMS text or push body (a template).")
    html: Annotated[str, _text(2_000_000)] | None = Field(
        None, description="Email HTML part (a template).")
    limit: int | None = Field(None, ge=1, le=MAX_ID, strict=True,
                              description="Random cap on recipients.")
    fatigue_max: int | None = Field(None, ge=1, le=1_000_000, strict=True)
    fatigue_days: int | None = Field(None, ge=1, le=3_650, strict=True)


class SmsInfo(BaseModel):
    encoding: str
    units: int
    segments: int


class Delivery(BaseModel):
    id: int
    name: str
    channel: ChannelName
    kind: Kind
    audience: Audience
    service: str | None
    where: dict[str, str]
    proof: list[str]
    limit: int | None
    fatigue_max: int | None
    fatigue_days: int | None
    subject: str | None
    text: str | None
    html: str | None
    state: DeliveryState
    created_at: datetime
    created_by: str | None
    analyzed_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class DeliveryCreated(Delivery):
    sms: SmsInfo | None = Field(None, description="Size of an SMS text.")


class DeliveryPage(BaseModel):
    items: list[Delivery]
    next_cursor: str | None


class Analysis(BaseModel):
    delivery: int
    audience: int
    excluded: dict[str, int] = Field(description="Exclusion causes in rule order.")
    to_send: int


class Throughput(BaseModel):
    sent: int
    seconds: float
    per_second: float | None


class Alert(BaseModel):
    metric: Literal["bounce_rate", "complaint_rate"]
    value: float
    threshold: float
    level: Literal["warning", "alert"]


class Rates(BaseModel):
    attempted: int
    sent: int
    bounces: int
    hard_bounces: int
    complaints: int
    bounce_rate: float
    complaint_rate: float
    alerts: list[Alert]


class Thresholds(BaseModel):
    bounce_rate_alert: float
    complaint_rate_warn: float
    complaint_rate_alert: float


class DeliveryRates(Rates):
    delivery: int
    thresholds: Thresholds


class DayRates(BaseModel):
    day: date
    attempted: int
    sent: int
    bounces: int
    complaints: int
    bounce_rate: float
    complaint_rate: float
    alerts: list[Alert]


class DailyRates(BaseModel):
    days: list[DayRates] = Field(description="Oldest first; days without traffic left out.")
    thresholds: Thresholds


class Report(BaseModel):
    delivery: int
    name: str
    channel: ChannelName
    kind: Kind
    state: DeliveryState
    states: dict[str, int]
    excluded: dict[str, int]
    excluded_at_send: dict[str, int]
    failures: dict[str, int]
    throughput: Throughput
    feedback: Rates
    analyzed_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class Exclusion(BaseModel):
    id: int
    profile_id: int | None
    address: str | None
    state: Literal["excluded", "excluded_at_send"]
    reason: str | None


class ExclusionPage(BaseModel):
    items: list[Exclusion]
    next_cursor: str | None


class RuleCheck(BaseModel):
    rule: str
    passed: bool | None = Field(description="null: decided by the analysis, not run yet.")


class Analysed(BaseModel):
    state: str
    reason: str | None


class Explanation(BaseModel):
    profile: int
    delivery: int
    channel: ChannelName
    address: str | None
    rules: list[RuleCheck]
    verdict: Literal["send", "excluded"]
    reason: str | None
    analysed: Analysed | None


# --- helpers ---------------------------------------------------------------------------------

def _origin(request: Request, principal: Principal, note: str | None = None) -> Origin:
    return Origin(source=Source.API, actor=principal.actor, ip=client_ip(request),
                  user_agent=request.headers.get("user-agent"), note=note)


def _address(st: AppState, raw: str, channel: str | None) -> Address:
    try:
        chosen = Channel(channel) if channel else guess_channel(raw)
        return normalize(chosen, raw, st.settings.default_region)
    except ConsentryError as exc:
        raise from_domain(exc, "address") from None


def _json(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """`data` checked against its documented model, as JSON (for stored idempotent answers)."""
    return model.model_validate(data).model_dump(mode="json")


def _post(request: Request, st: AppState, principal: Principal, key: str | None,
          body: BaseModel | None, run: Any) -> JSONResponse:
    return idempotent(st, principal, key, body.model_dump(mode="json") if body else None,
                      f"POST {request.url.path}", run)


def _utc(value: datetime | None, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except (OverflowError, ValueError):
        raise Problem(400, "Bad request", "this time is out of range", field) from None


def _cursor_int(cursor: str | None) -> int | None:
    value = decode_cursor(cursor)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise Problem(400, "Bad request", "this cursor is not one of ours", "cursor")
    return value


# --- quarantine ------------------------------------------------------------------------------

@router.get("/quarantine", tags=QUARANTINE, response_model=QuarantinePage,
            responses=PROBLEM_RESPONSES, summary="List quarantine entries")
def list_quarantine(
    request: Request, principal: Reader, limit: Limit = 50, cursor: Cursor = None,
    status: Annotated[StatusName | None, Query(
        description="Default: every status but valid.")] = None,
    reason: Annotated[str | None, Query(max_length=32, pattern=_NO_NUL)] = None,
    channel: Annotated[ChannelName | None, Query()] = None,
    domain: Annotated[str | None, Query(max_length=255, pattern=_NO_NUL,
                                        description="Email domain.")] = None,
) -> dict[str, Any]:
    """Entries newest change first, filtered by status, reason, channel and email domain."""
    st = state(request)
    stmt = quarantine_sql.listing(status=status, reason=reason, channel=channel, domain=domain)
    after = decode_cursor(cursor)
    if after is not None:
        try:
            at, entry_id = datetime.fromisoformat(after[0]).astimezone(UTC), after[1]
            if not isinstance(entry_id, int) or isinstance(entry_id, bool) \
                    or not 0 <= entry_id < 2**63:
                raise ValueError
        except (TypeError, ValueError, IndexError, KeyError, OverflowError):
            raise Problem(400, "Bad request", "this cursor is not one of ours",
                          "cursor") from None
        q = quarantine_table
        stmt = stmt.where(sa.or_(q.c.updated_at < at,
                                 sa.and_(q.c.updated_at == at, q.c.id < entry_id)))
    with st.engine.connect() as conn:
        rows = list(conn.execute(stmt.limit(limit + 1)).mappings())
    result = page(rows, limit, lambda r: [r["updated_at"].isoformat(), r["id"]])
    result["items"] = [quarantine.row_json(r) for r in result["items"]]
    return result


@router.post("/quarantine/release", tags=QUARANTINE, response_model=BulkReleaseResult,
             responses=PROBLEM_RESPONSES, summary="Release addresses in bulk")
def bulk_release(request: Request, body: BulkRelease, principal: Writer,
                 idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Blocking entries (quarantined, denylisted, erroneous) matching every filter given go
    back to valid: the outage case (reason user_unknown, domain gmail.com, a window of status
    changes). With dry_run only the count. At least one filter is needed."""
    st = state(request)
    since, until = _utc(body.since, "since"), _utc(body.until, "until")
    if not any((body.reason, body.domain, since, until, body.channel)):
        raise Problem(400, "Bad request", "a bulk release needs at least one of reason, "
                      "domain, since, until, channel", "reason")

    def run() -> tuple[int, Any]:
        with st.engine.begin() as conn:
            count = quarantine.bulk_release(
                conn, _origin(request, principal, body.note), st.settings.quarantine,
                reason=body.reason, domain=body.domain, since=since, until=until,
                channel=body.channel, dry_run=body.dry_run)
            if not body.dry_run:
                audit(conn, principal.actor, "quarantine.bulk_release", None,
                      {**body.model_dump(mode="json", exclude_none=True), "count": count},
                      client_ip(request))
        return 200, _json(BulkReleaseResult, {"count": count, "dry_run": body.dry_run})

    return _post(request, st, principal, idempotency_key, body, run)


@router.get("/quarantine/{address}", tags=QUARANTINE, response_model=QuarantineEntry,
            responses=PROBLEM_RESPONSES, summary="Show an address's state")
def show_quarantine(request: Request, address: AddressParam, principal: Reader,
                    channel: ChannelQuery = None) -> dict[str, Any]:
    """The address's state; status `valid` when it is not known."""
    st = state(request)
    addr = _address(st, address, channel)
    with st.engine.connect() as conn:
        return quarantine.show(conn, addr, st.settings.quarantine)


@router.put("/quarantine/{address}", tags=QUARANTINE, response_model=QuarantineChange,
            responses=PROBLEM_RESPONSES, summary="Quarantine, denylist or allowlist an address")
def put_quarantine(request: Request, address: AddressParam, body: QuarantineUpdate,
                   principal: Writer) -> dict[str, Any]:
    """Set an address's platform-wide status (recorded in the ledger with the API key)."""
    st = state(request)
    addr = _address(st, address, body.channel)
    with st.engine.begin() as conn:
        try:
            change = quarantine.set_status(conn, addr, rules.Status(body.status), body.reason,
                                           _origin(request, principal, body.note),
                                           st.settings.quarantine)
        except ConsentryError as exc:
            raise from_domain(exc, "reason") from None
        return {**quarantine.show(conn, addr, st.settings.quarantine), "changed": change.changed}


@router.post("/quarantine/{address}/release", tags=QUARANTINE, response_model=QuarantineChange,
             responses=PROBLEM_RESPONSES, summary="Release one address")
def release_quarantine(request: Request, address: AddressParam, principal: Writer,
                       body: ReleaseRequest | None = None,
                       idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Back to valid (recorded in the ledger); `changed` false when it was valid already."""
    st = state(request)
    addr = _address(st, address, body.channel if body else None)

    def run() -> tuple[int, Any]:
        with st.engine.begin() as conn:
            change = quarantine.release(conn, addr,
                                        _origin(request, principal, body.note if body else None),
                                        st.settings.quarantine)
            data = {**quarantine.show(conn, addr, st.settings.quarantine),
                    "changed": change.changed}
        return 200, _json(QuarantineChange, data)

    return _post(request, st, principal, idempotency_key, body, run)


# --- deliveries ------------------------------------------------------------------------------

def _delivery_select() -> sa.Select:
    d, s = deliveries_table, services_table
    return sa.select(d, s.c.slug.label("service_slug")).select_from(
        d.outerjoin(s, s.c.id == d.c.service_id))


def _delivery_json(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"], "name": row["name"], "channel": row["channel"], "kind": row["kind"],
        "audience": row["audience"], "service": row["service_slug"],
        "where": {k: v for k, v in row["audience_filter"] or ()},
        "proof": list(row["proof_addresses"] or ()), "limit": row["target_limit"],
        "fatigue_max": row["fatigue_max"], "fatigue_days": row["fatigue_days"],
        "subject": row["subject"], "text": row["text_body"], "html": row["html_body"],
        "state": row["state"], "created_at": row["created_at"], "created_by": row["created_by"],
        "analyzed_at": row["analyzed_at"], "started_at": row["started_at"],
        "finished_at": row["finished_at"],
    }


def _load(conn: sa.Connection, delivery_id: int) -> dict[str, Any]:
    row = conn.execute(_delivery_select().where(
        deliveries_table.c.id == delivery_id)).mappings().first()
    if row is None:
        raise Problem(404, "Not found", f"no delivery {delivery_id}")
    return _delivery_json(row)


def _state_of(conn: sa.Connection, delivery_id: int) -> str:
    try:
        return str(deliveries.get(conn, delivery_id, for_update=True)["state"])
    except NotFound as exc:
        raise from_domain(exc) from None


def _conflict(delivery_id: int, state_now: str, wanted: str) -> Problem:
    return Problem(409, "Conflict", f"delivery {delivery_id} is {state_now}: {wanted}")


# Which request field a delivery's creation error is about (the service speaks CLI options):
# the first of these words in the message, before any quoted value.
_CREATE_FIELDS = (("subject", "subject"), ("html", "html"), ("text", "text"),
                  ("service", "service"), ("audience", "audience"), ("proof", "proof"),
                  ("--limit", "limit"), ("fatigue", "fatigue_max"), ("filter", "where"),
                  ("name", "name"))


def _create_field(exc: ConsentryError) -> str | None:
    if isinstance(exc, InvalidAddress):
        return "proof"
    message = str(exc)
    head = message.split(":", 1)[0]
    if head in ("subject", "text", "html"):  # a template error: "text: line 2: ..."
        return head
    if "unsubscribe link" in message:  # "... in its text and html parts" / "in its html part"
        return "text" if "text" in message.rpartition(" in its ")[2] else "html"
    unquoted = message.split("'", 1)[0]
    return next((field for word, field in _CREATE_FIELDS if word in unquoted), None)


def _new_delivery(st: AppState, body: DeliveryCreate) -> deliveries.NewDelivery:
    filters = tuple((body.where or {}).items())
    audience = body.audience or ("proof" if body.proof else "filter" if filters
                                 and not body.service else "service" if body.service else "all")
    return deliveries.NewDelivery(
        name=body.name, channel=Channel(body.channel), kind=body.kind, service=body.service,
        audience=audience, audience_filter=filters, proof_addresses=tuple(body.proof or ()),
        target_limit=body.limit, fatigue_max=body.fatigue_max, fatigue_days=body.fatigue_days,
        content=Content(subject=body.subject, text=body.text, html=body.html))


@router.get("/deliveries", tags=DELIVERIES, response_model=DeliveryPage,
            responses=PROBLEM_RESPONSES, summary="List deliveries")
def list_deliveries(
    request: Request, principal: Reader, limit: Limit = 50, cursor: Cursor = None,
    state_: Annotated[DeliveryState | None, Query(alias="state")] = None,
    channel: Annotated[ChannelName | None, Query()] = None,
) -> dict[str, Any]:
    """Newest first, filtered by state and channel."""
    st = state(request)
    d = deliveries_table
    stmt = _delivery_select().order_by(d.c.id.desc()).limit(limit + 1)
    before = _cursor_int(cursor)
    if before is not None:
        stmt = stmt.where(d.c.id < before)
    if state_:
        stmt = stmt.where(d.c.state == state_)
    if channel:
        stmt = stmt.where(d.c.channel == channel)
    with st.engine.connect() as conn:
        items = [_delivery_json(r) for r in conn.execute(stmt).mappings()]
    return page(items, limit, lambda item: item["id"])


@router.post("/deliveries", tags=DELIVERIES, status_code=201, response_model=DeliveryCreated,
             responses=PROBLEM_RESPONSES, summary="Create a delivery")
def create_delivery(request: Request, body: DeliveryCreate, principal: Writer,
                    idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """A draft delivery; its content is checked at once (a problem names the field at fault).
    Templates may use {{ profile.first_name }}, {{ unsubscribe_url }}, {{ preferences_url }}.
    A marketing email needs {{ unsubscribe_url }} in each of its parts."""
    st = state(request)
    new = _new_delivery(st, body)

    def run() -> tuple[int, Any]:
        with st.engine.begin() as conn:
            try:
                delivery_id = deliveries.create(conn, st.settings, new, principal.actor)
                checked = check_content(new.content, channel=body.channel,
                                        marketing=new.kind == "marketing"
                                        and new.audience != "proof")
            except NotFound as exc:
                raise Problem(400, "Bad request", str(exc), "service") from None
            except ConsentryError as exc:
                raise Problem(400, "Bad request", str(exc), _create_field(exc)) from None
            audit(conn, principal.actor, "delivery.create", f"delivery:{delivery_id}",
                  {"name": new.name, "channel": body.channel, "kind": new.kind,
                   "audience": new.audience, "service": new.service}, client_ip(request))
            data = _load(conn, delivery_id)
        sms = checked.sms
        data["sms"] = ({"encoding": sms.encoding, "units": sms.units,
                        "segments": sms.segments} if sms else None)
        return 201, _json(DeliveryCreated, data)

    return _post(request, st, principal, idempotency_key, body, run)


@router.get("/deliveries/{delivery_id}", tags=DELIVERIES, response_model=Delivery,
            responses=PROBLEM_RESPONSES, summary="Show a delivery")
def show_delivery(request: Request, delivery_id: DeliveryId,
                  principal: Reader) -> dict[str, Any]:
    st = state(request)
    with st.engine.connect() as conn:
        return _load(conn, delivery_id)


@router.post("/deliveries/{delivery_id}/analyze", tags=DELIVERIES, response_model=Analysis,
             responses=PROBLEM_RESPONSES, summary="Analyse a delivery")
def analyze_delivery(request: Request, delivery_id: DeliveryId, principal: Writer,
                     idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Build the target: the audience, each exclusion cause in rule order with its count, and
    what is left to send. Only a draft or an analysed delivery can be (re-)analysed."""
    st = state(request)

    def run() -> tuple[int, Any]:
        with st.engine.begin() as conn:
            current = _state_of(conn, delivery_id)
        if current not in ("draft", "analyzed"):
            raise _conflict(delivery_id, current, "sending has started")
        try:
            result = deliveries.analyze(st.engine, st.settings, delivery_id)
        except ContentError as exc:
            raise Problem(400, "Bad request", str(exc), _create_field(exc)) from None
        except ConsentryError as exc:
            raise from_domain(exc) from None
        with st.engine.begin() as conn:
            audit(conn, principal.actor, "delivery.analyze", f"delivery:{delivery_id}",
                  {"audience": result["audience"], "to_send": result["to_send"]},
                  client_ip(request))
        return 200, _json(Analysis, result)

    return _post(request, st, principal, idempotency_key, None, run)


@router.post("/deliveries/{delivery_id}/send", tags=DELIVERIES, status_code=202,
             response_model=Delivery, responses=PROBLEM_RESPONSES, summary="Send a delivery")
def send_delivery(request: Request, delivery_id: DeliveryId, principal: Writer,
                  idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Mark an analysed (or paused) delivery as sending and answer at once: the background
    work of `consentry serve`, or a `consentry worker`, sends it. A delivery already sending
    or done is answered as it is."""
    st = state(request)

    def run() -> tuple[int, Any]:
        with st.engine.begin() as conn:
            current = _state_of(conn, delivery_id)
            if current == "draft":
                raise _conflict(delivery_id, current, "analyse it first")
            sending.start(conn, delivery_id)
            if current != "sending" and current != "done":
                audit(conn, principal.actor, "delivery.send", f"delivery:{delivery_id}",
                      {"from": current}, client_ip(request))
            data = _load(conn, delivery_id)
        return 202, _json(Delivery, data)

    return _post(request, st, principal, idempotency_key, None, run)


@router.post("/deliveries/{delivery_id}/pause", tags=DELIVERIES, response_model=Delivery,
             responses=PROBLEM_RESPONSES, summary="Pause a delivery")
def pause_delivery(request: Request, delivery_id: DeliveryId, principal: Writer,
                   idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """A sending delivery stops after the batches already handed to the transport; resume
    continues where it stopped. Pausing a paused delivery changes nothing."""
    st = state(request)

    def run() -> tuple[int, Any]:
        with st.engine.begin() as conn:
            current = _state_of(conn, delivery_id)
            if current not in ("sending", "paused"):
                raise _conflict(delivery_id, current, "only a sending delivery can be paused")
            if sending.pause(conn, delivery_id):
                audit(conn, principal.actor, "delivery.pause", f"delivery:{delivery_id}",
                      None, client_ip(request))
            data = _load(conn, delivery_id)
        return 200, _json(Delivery, data)

    return _post(request, st, principal, idempotency_key, None, run)


@router.post("/deliveries/{delivery_id}/resume", tags=DELIVERIES, response_model=Delivery,
             responses=PROBLEM_RESPONSES, summary="Resume a paused delivery")
def resume_delivery(request: Request, delivery_id: DeliveryId, principal: Writer,
                    idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Back to sending; resuming a sending delivery changes nothing."""
    st = state(request)

    def run() -> tuple[int, Any]:
        with st.engine.begin() as conn:
            current = _state_of(conn, delivery_id)
            if current not in ("sending", "paused"):
                raise _conflict(delivery_id, current, "only a paused delivery can be resumed")
            if current == "paused":
                sending.start(conn, delivery_id)
                audit(conn, principal.actor, "delivery.resume", f"delivery:{delivery_id}",
                      None, client_ip(request))
            data = _load(conn, delivery_id)
        return 200, _json(Delivery, data)

    return _post(request, st, principal, idempotency_key, None, run)


@router.get("/deliveries/{delivery_id}/report", tags=DELIVERIES, response_model=Report,
            responses=PROBLEM_RESPONSES, summary="A delivery's report")
def delivery_report(request: Request, delivery_id: DeliveryId,
                    principal: Reader) -> dict[str, Any]:
    """Counts by state, exclusion causes, failures by reason, throughput, and the bounce and
    complaint rates with the alerts they raise."""
    st = state(request)
    with st.engine.connect() as conn:
        try:
            return deliveries.report(conn, delivery_id, st.settings.feedback)
        except NotFound as exc:
            raise from_domain(exc) from None


@router.get("/deliveries/{delivery_id}/rates", tags=DELIVERIES + RATES,
            response_model=DeliveryRates, responses=PROBLEM_RESPONSES,
            summary="A delivery's bounce and complaint rates")
def delivery_rates(request: Request, delivery_id: DeliveryId,
                   principal: Reader) -> dict[str, Any]:
    """Synchronous failures and feedback (bounces, complaints) against the alert
    thresholds."""
    st = state(request)
    thresholds = st.settings.feedback
    with st.engine.connect() as conn:
        try:
            deliveries.get(conn, delivery_id)
        except NotFound as exc:
            raise from_domain(exc) from None
        figures = rates.for_delivery(conn, delivery_id).to_json(thresholds)
    return {"delivery": delivery_id, **figures,
            "thresholds": rates.thresholds_json(thresholds)}


@router.get("/deliveries/{delivery_id}/exclusions", tags=DELIVERIES,
            response_model=ExclusionPage, responses=PROBLEM_RESPONSES,
            summary="A delivery's exclusion log")
def delivery_exclusions(
    request: Request, delivery_id: DeliveryId, principal: Reader, limit: Limit = 50,
    cursor: Cursor = None,
    reason: Annotated[str | None, Query(max_length=64, pattern=_NO_NUL)] = None,
) -> dict[str, Any]:
    """One row per recipient excluded at analysis or at send time, with the reason."""
    st = state(request)
    after = _cursor_int(cursor) or 0
    with st.engine.connect() as conn:
        try:
            rows = deliveries.exclusion_log(conn, delivery_id, reason=reason, after_id=after,
                                            limit=limit + 1)
        except NotFound as exc:
            raise from_domain(exc) from None
    return page(rows, limit, lambda row: row["id"])


@router.get("/deliveries/{delivery_id}/explain", tags=DELIVERIES, response_model=Explanation,
            responses=PROBLEM_RESPONSES, summary="Why a profile gets a delivery or not")
def explain_delivery(request: Request, delivery_id: DeliveryId, principal: Reader,
                     profile: Annotated[int, Query(ge=1, le=2**63 - 1,
                                                   description="The profile's id.")]
                     ) -> dict[str, Any]:
    """Each rule in order for one profile, whether it passed, and the verdict."""
    st = state(request)
    with st.engine.connect() as conn:
        try:
            return deliveries.explain(conn, st.settings, profile, delivery_id)
        except ConsentryError as exc:
            raise from_domain(exc) from None


# --- alerting figures ------------------------------------------------------------------------

@router.get("/rates/daily", tags=RATES, response_model=DailyRates, responses=PROBLEM_RESPONSES,
            summary="Bounce and complaint rates per day")
def daily_rates(request: Request, principal: Reader,
                days: Annotated[int, Query(ge=1, le=366, description="The last N UTC days.")]
                = 14) -> dict[str, Any]:
    """Per UTC day over all deliveries: attempts, bounces, complaints, the rates and the
    alerts they raise (bounce rate over 5%; complaint rate at 0.1% warns, at 0.3% alerts)."""
    st = state(request)
    thresholds = st.settings.feedback
    with st.engine.connect() as conn:
        rows = rates.per_day(conn, days)
    return {"days": rates.per_day_json(rows, thresholds),
            "thresholds": rates.thresholds_json(thresholds)}
