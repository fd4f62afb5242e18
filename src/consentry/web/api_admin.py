"""The REST API's admin part: operators, API keys, outbound webhook endpoints with their
delivery log, and the audit log. Every route needs an API key with the admin role; every
change is recorded in the audit log (the service functions do it, in the change's
transaction).

Secrets (a new API key, a new webhook endpoint's signing secret) are in the creating answer
only: they are never listed again, and these POSTs take no Idempotency-Key (a replayed answer
would have to keep the secret).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field

from consentry.auth import service as auth
from consentry.auth import sql as auth_sql
from consentry.domain.errors import ConsentryError
from consentry.store.schema import api_keys, operators
from consentry.web.api_common import (
    PROBLEM_RESPONSES,
    Admin,
    Cursor,
    Limit,
    Problem,
    decode_cursor,
    from_domain,
    page,
)
from consentry.web.deps import state
from consentry.webhooks import service as webhooks

router = APIRouter(responses=PROBLEM_RESPONSES)

RoleName = Literal["admin", "operator", "viewer"]
Id = Annotated[int, Path(ge=1, le=2**62)]


# --- models ----------------------------------------------------------------------------------

class OperatorIn(BaseModel):
    login: str = Field(min_length=1, max_length=255, description="No spaces.")
    password: str = Field(min_length=auth.MIN_PASSWORD, max_length=1024)
    role: RoleName


class Operator(BaseModel):
    id: int
    login: str
    role: RoleName
    created_at: datetime
    disabled_at: datetime | None = None
    last_login_at: datetime | None = None


class OperatorList(BaseModel):
    items: list[Operator]
    next_cursor: str | None = None


class ApiKeyIn(BaseModel):
    name: str = Field(min_length=1, max_length=255)
    role: RoleName


class ApiKey(BaseModel):
    id: int
    name: str
    prefix: str
    role: RoleName
    created_at: datetime
    created_by: str | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The key itself: shown this once, only its hash is kept.")


class ApiKeyList(BaseModel):
    items: list[ApiKey]
    next_cursor: str | None = None


WebhookEvent = Literal["*", "opt_out", "opt_in", "subscription", "quarantine", "suppression",
                       "erasure"]


class WebhookIn(BaseModel):
    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://[^\s/?#]+[^\s]*$",
                     description="http:// or https://", examples=["https://crm.example/consent"])
    events: list[WebhookEvent] = Field(
        min_length=1, max_length=16,
        description="Event kinds to send, or [\"*\"] for all of them.")
    active: bool = True


class WebhookPatch(BaseModel):
    url: str | None = Field(default=None, min_length=1, max_length=2048,
                            pattern=r"^https?://[^\s/?#]+[^\s]*$")
    events: list[WebhookEvent] | None = Field(default=None, min_length=1, max_length=16)
    active: bool | None = None


class DeliveryCounts(BaseModel):
    pending: int
    delivered: int
    failed: int


class Webhook(BaseModel):
    id: int
    url: str
    events: list[str]
    active: bool
    created_at: datetime
    deliveries: DeliveryCounts


class WebhookCreated(Webhook):
    secret: str = Field(description="The HMAC-SHA256 signing key: shown this once.")


class WebhookList(BaseModel):
    items: list[Webhook]
    next_cursor: str | None = None


class WebhookDelivery(BaseModel):
    id: int
    endpoint_id: int
    event_id: str | None
    type: str | None
    payload: dict[str, Any]
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime
    last_status: int | None = None
    last_error: str | None = None
    created_at: datetime
    delivered_at: datetime | None = None


class WebhookDeliveryList(BaseModel):
    items: list[WebhookDelivery]
    next_cursor: str | None = None


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None = None
    detail: dict[str, Any] | None = None
    ip: str | None = None


class AuditList(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None = None


# --- helpers ---------------------------------------------------------------------------------

def _before(cursor: str | None) -> int | None:
    value = decode_cursor(cursor)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 2**62:
        raise Problem(400, "Bad request", "this cursor is not one of ours", "cursor")
    return value


def _api_key(conn: sa.Connection, key_id: int) -> dict[str, Any]:
    row = conn.execute(auth_sql.LIST_KEYS.where(api_keys.c.id == key_id)).mappings().first()
    if row is None:
        raise Problem(404, "Not found", f"no API key {key_id}")
    return dict(row)


# --- operators -------------------------------------------------------------------------------

@router.get("/operators", response_model=OperatorList, tags=["admin"],
            summary="List operators")
def list_operators(request: Request, principal: Admin) -> dict[str, Any]:
    with state(request).engine.connect() as conn:
        return {"items": auth.list_operators(conn), "next_cursor": None}


@router.post("/operators", response_model=Operator, status_code=201, tags=["admin"],
             summary="Create an operator (a console login)")
def create_operator(request: Request, principal: Admin, body: OperatorIn) -> dict[str, Any]:
    login = body.login.strip()
    with state(request).engine.begin() as conn:
        if conn.execute(auth_sql.OPERATOR_BY_LOGIN, {"login": login}).first() is not None:
            raise Problem(409, "Conflict", f"an operator {login!r} exists already", "login")
        try:
            operator_id = auth.create_operator(conn, login, body.password, body.role,
                                               principal.actor)
        except ConsentryError as exc:
            raise from_domain(exc) from None
        row = conn.execute(auth_sql.LIST_OPERATORS.where(operators.c.id == operator_id)
                           ).mappings().one()
    return dict(row)


# --- API keys --------------------------------------------------------------------------------

@router.get("/api-keys", response_model=ApiKeyList, tags=["admin"], summary="List API keys")
def list_api_keys(request: Request, principal: Admin) -> dict[str, Any]:
    with state(request).engine.connect() as conn:
        return {"items": auth.list_api_keys(conn), "next_cursor": None}


@router.post("/api-keys", response_model=ApiKeyCreated, status_code=201, tags=["admin"],
             summary="Create an API key (the key is in this answer only)")
def create_api_key(request: Request, principal: Admin, body: ApiKeyIn) -> dict[str, Any]:
    with state(request).engine.begin() as conn:
        try:
            key_id, key = auth.create_api_key(conn, body.name, body.role, principal.actor)
        except ConsentryError as exc:
            raise from_domain(exc) from None
        return {**_api_key(conn, key_id), "key": key}


@router.get("/api-keys/{key_id}", response_model=ApiKey, tags=["admin"],
            summary="One API key")
def get_api_key(request: Request, principal: Admin, key_id: Id) -> dict[str, Any]:
    with state(request).engine.connect() as conn:
        return _api_key(conn, key_id)


def _revoke(request: Request, principal: Admin, key_id: int) -> dict[str, Any]:
    with state(request).engine.begin() as conn:
        _api_key(conn, key_id)
        if principal.kind == "apikey" and principal.id == key_id:
            raise Problem(409, "Conflict", "this is the key making the request: revoke it "
                                           "with another admin key, or from the command line")
        auth.revoke_api_key(conn, key_id, principal.actor)  # a second revoke changes nothing
        return _api_key(conn, key_id)


@router.delete("/api-keys/{key_id}", response_model=ApiKey, tags=["admin"],
               summary="Revoke an API key (it is kept, marked revoked)")
def delete_api_key(request: Request, principal: Admin, key_id: Id) -> dict[str, Any]:
    return _revoke(request, principal, key_id)


@router.post("/api-keys/{key_id}/revoke", response_model=ApiKey, tags=["admin"],
             summary="Revoke an API key")
def revoke_api_key(request: Request, principal: Admin, key_id: Id) -> dict[str, Any]:
    return _revoke(request, principal, key_id)


# --- webhooks --------------------------------------------------------------------------------

@router.get("/webhooks", response_model=WebhookList, tags=["admin"],
            summary="List outbound webhook endpoints")
def list_webhooks(request: Request, principal: Admin) -> dict[str, Any]:
    with state(request).engine.connect() as conn:
        return {"items": webhooks.list_endpoints(conn), "next_cursor": None}


@router.post("/webhooks", response_model=WebhookCreated, status_code=201, tags=["admin"],
             summary="Add an endpoint (its signing secret is in this answer only)")
def create_webhook(request: Request, principal: Admin, body: WebhookIn) -> dict[str, Any]:
    with state(request).engine.begin() as conn:
        try:
            endpoint_id, secret = webhooks.create_endpoint(conn, body.url, body.events,
                                                           principal.actor, active=body.active)
        except ConsentryError as exc:
            raise from_domain(exc, "url" if "URL" in str(exc) else "events") from None
        return {**webhooks.get_endpoint(conn, endpoint_id), "secret": secret}


@router.get("/webhooks/{endpoint_id}", response_model=Webhook, tags=["admin"],
            summary="One endpoint with its delivery counts")
def get_webhook(request: Request, principal: Admin, endpoint_id: Id) -> dict[str, Any]:
    with state(request).engine.connect() as conn:
        try:
            return webhooks.get_endpoint(conn, endpoint_id)
        except ConsentryError as exc:
            raise from_domain(exc) from None


@router.patch("/webhooks/{endpoint_id}", response_model=Webhook, tags=["admin"],
              summary="Change an endpoint's URL, events or active flag")
def update_webhook(request: Request, principal: Admin, endpoint_id: Id,
                   body: WebhookPatch) -> dict[str, Any]:
    with state(request).engine.begin() as conn:
        try:
            return webhooks.update_endpoint(conn, endpoint_id, principal.actor,
                                            active=body.active, events=body.events,
                                            url=body.url)
        except ConsentryError as exc:
            raise from_domain(exc) from None


@router.delete("/webhooks/{endpoint_id}", status_code=204, tags=["admin"],
               summary="Delete an endpoint and its delivery log")
def delete_webhook(request: Request, principal: Admin, endpoint_id: Id) -> Response:
    with state(request).engine.begin() as conn:
        try:
            webhooks.delete_endpoint(conn, endpoint_id, principal.actor)
        except ConsentryError as exc:
            raise from_domain(exc) from None
    return Response(status_code=204)


@router.get("/webhooks/{endpoint_id}/deliveries", response_model=WebhookDeliveryList,
            tags=["admin"], summary="An endpoint's delivery log, newest first")
def webhook_deliveries(
        request: Request, principal: Admin, endpoint_id: Id, limit: Limit = 50,
        cursor: Cursor = None,
        state_filter: Annotated[Literal["pending", "delivered", "failed"] | None, Query(
            alias="state", description="Only deliveries in this state.")] = None,
) -> dict[str, Any]:
    with state(request).engine.connect() as conn:
        try:
            rows = webhooks.deliveries(conn, endpoint_id, before=_before(cursor),
                                       limit=limit + 1, state=state_filter)
        except ConsentryError as exc:
            raise from_domain(exc) from None
    return page(rows, limit, lambda r: r["id"])


@router.post("/webhooks/{endpoint_id}/deliveries/{delivery_id}/retry",
             response_model=WebhookDelivery, tags=["admin"],
             summary="Send a delivery again soon (a failed one gets a new round of attempts)")
def retry_webhook_delivery(request: Request, principal: Admin, endpoint_id: Id,
                           delivery_id: Id) -> dict[str, Any]:
    with state(request).engine.begin() as conn:
        try:
            return webhooks.retry(conn, endpoint_id, delivery_id, principal.actor)
        except ConsentryError as exc:
            raise from_domain(exc) from None


# --- audit log -------------------------------------------------------------------------------

@router.get("/audit", response_model=AuditList, tags=["admin"],
            summary="The audit log, newest first")
def audit_log(request: Request, principal: Admin, limit: Limit = 50,
              cursor: Cursor = None) -> dict[str, Any]:
    with state(request).engine.connect() as conn:
        rows = auth.audit_page(conn, _before(cursor), limit + 1)
    return page(rows, limit, lambda r: r["id"])
