"""What every REST API route shares: authentication by API key with a role, errors as RFC 9457
problem+json, cursor pagination and idempotency keys on POST.

- `Authorization: Bearer csk_...` on every request; a missing, unknown or revoked key answers
  401, a key whose role lacks the permission 403.
- Errors: `application/problem+json` with type, title, status, detail and, for a field at
  fault, `errors: [{"field", "detail"}]`.
- Lists: `?limit=` (1-500, default 50) and `?cursor=` (opaque); answers
  `{"items": [...], "next_cursor": str | null}`.
- `Idempotency-Key` on a POST: the first answer is kept (per key and API key) and replayed for
  the same request; the same key with a different request answers 422.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from consentry.auth import service as auth
from consentry.auth.service import Principal
from consentry.domain.errors import Conflict, ConsentryError, NotFound
from consentry.domain.roles import Permission, can
from consentry.store.schema import idempotency_keys
from consentry.store.types import utcnow
from consentry.web.deps import AppState, state

PROBLEM = "application/problem+json"


class Problem(Exception):
    """An error answered as problem+json."""

    def __init__(self, status: int, title: str, detail: str | None = None,
                 field: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.field, self.headers = field, headers

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"type": "about:blank", "title": self.title,
                                "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if self.field:
            body["errors"] = [{"field": self.field, "detail": self.detail or self.title}]
        return JSONResponse(body, status_code=self.status, media_type=PROBLEM,
                            headers=self.headers)


class ProblemModel(BaseModel):
    """RFC 9457 problem details (for the OpenAPI document)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[dict[str, str]] | None = None


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text,
           "content": {PROBLEM: {"schema": ProblemModel.model_json_schema()}}}
    for code, text in ((400, "Bad request"), (401, "Not authenticated"),
                       (403, "Not allowed"), (404, "Not found"), (409, "Conflict"),
                       (422, "Unprocessable"))}


def from_domain(exc: ConsentryError, field: str | None = None) -> Problem:
    """A service-layer error as a problem: not found 404, a conflict 409, else 400."""
    if isinstance(exc, NotFound):
        return Problem(404, "Not found", str(exc), field)
    if isinstance(exc, Conflict):
        return Problem(409, "Conflict", str(exc), field)
    return Problem(400, "Bad request", str(exc), field)


def _principal(request: Request, authorization: str | None) -> Principal:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Problem(401, "Not authenticated", "send Authorization: Bearer <API key>",
                      headers={"WWW-Authenticate": "Bearer"})
    st = state(request)
    with st.engine.connect() as conn:
        principal = auth.authenticate_key(conn, authorization[7:])
    if principal is None:
        raise Problem(401, "Not authenticated", "unknown or revoked API key",
                      headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return principal


def require(permission: Permission) -> Callable[..., Principal]:
    """A dependency: the API key's principal, whose role must grant `permission`."""

    def dependency(request: Request, authorization: Annotated[
            str | None, Header(description="Bearer API key")] = None) -> Principal:
        principal = _principal(request, authorization)
        if not can(principal.role, permission):
            raise Problem(403, "Not allowed",
                          f"the role {principal.role.value} may not {permission.value}")
        return principal

    return dependency


Reader = Annotated[Principal, Depends(require(Permission.READ))]
Writer = Annotated[Principal, Depends(require(Permission.WRITE))]
Admin = Annotated[Principal, Depends(require(Permission.ADMIN))]


# --- pagination ------------------------------------------------------------------------------

Limit = Annotated[int, Query(ge=1, le=500, description="At most this many items.")]
Cursor = Annotated[str | None, Query(description="From a previous answer's next_cursor.")]


def encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Any:
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError):
        raise Problem(400, "Bad request", "this cursor is not one of ours",
                      "cursor") from None


def page(items: list[Any], limit: int, key: Callable[[Any], Any]) -> dict[str, Any]:
    """`items` fetched with limit + 1: the answer and the cursor of the next page."""
    more = len(items) > limit
    items = items[:limit]
    return {"items": items, "next_cursor": encode_cursor(key(items[-1])) if more else None}


# --- idempotency -----------------------------------------------------------------------------

def idempotent(st: AppState, principal: Principal, key: str | None, request_body: Any,
               method_path: str, run: Callable[[], tuple[int, Any]]) -> JSONResponse:
    """Run a POST once per Idempotency-Key: later calls with the same key replay its answer."""
    if not key:
        status, body = run()
        return JSONResponse(body, status_code=status)
    if len(key) > 255:
        raise Problem(400, "Bad request", "Idempotency-Key is too long", "Idempotency-Key")
    digest = hashlib.sha256(json.dumps([method_path, request_body], sort_keys=True,
                                       default=str).encode()).hexdigest()
    t = idempotency_keys
    with st.engine.connect() as conn:
        row = conn.execute(t.select().where(t.c.principal == principal.actor,
                                            t.c.key == key)).mappings().first()
    if row is not None:
        if row["request_hash"] != digest:
            raise Problem(422, "Idempotency-Key reused",
                          "this key was used for a different request", "Idempotency-Key")
        return JSONResponse(row["body"], status_code=row["status_code"],
                            headers={"Idempotent-Replayed": "true"})
    status, body = run()
    if status < 500:
        try:
            with st.engine.begin() as conn:
                conn.execute(t.insert(), {"principal": principal.actor, "key": key,
                                          "request_hash": digest, "status_code": status,
                                          "body": body, "created_at": utcnow()})
        except sa.exc.IntegrityError:
            pass  # a concurrent twin with the same key stored its answer first
    return JSONResponse(body, status_code=status)


IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key",
                                              description="Replay-safe POST")]
