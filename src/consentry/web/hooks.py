"""Provider webhooks for bounces and complaints: POST /hooks/ses (Amazon SES through SNS),
/hooks/sendgrid, /hooks/postmark and /hooks/mailgun.

Every request is verified the way its provider signs it before the database is touched: a
missing signature answers 401, a forged one, a stale timestamp or a replayed Mailgun token 403,
a provider that is not configured 403, and nothing is written. Verified events become
`Incoming` items applied in one transaction (feedback.service.apply_batch); an event seen
before (same dedupe key) counts once. Success answers {"applied", "duplicates", "skipped"}.
"""

from __future__ import annotations

import threading
import time

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from consentry.feedback import providers
from consentry.feedback.providers import Parsed, Refused
from consentry.feedback.service import Incoming, apply_batch
from consentry.settings import HookSettings
from consentry.web.deps import AppState, raw_body
from consentry.web.deps import client_ip as _source
from consentry.web.deps import state as _state

router = APIRouter(prefix="/hooks")

_MAX_CERT_BYTES = 64 * 1024
_MAX_CACHED_CERTS = 64


def _refused(exc: Refused) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Basic realm="consentry"'} if exc.status == 401 else None
    return JSONResponse({"error": exc.error}, status_code=exc.status, headers=headers)


def _apply(st: AppState, via: str, source: str | None, parsed: list[Parsed], *,
           refuse_replay: bool = False) -> JSONResponse:
    """Apply the events we act on in one transaction; the rest are counted as skipped."""
    items = [Incoming(p.report, p.key, via, source, p.raw)
             for p in parsed if p.report is not None]
    results = []
    if items:
        with st.engine.begin() as conn:
            results = apply_batch(conn, st.settings, st.signer, items)
    duplicates = sum(r.status == "duplicate" for r in results)
    if refuse_replay and duplicates:
        # A duplicate changed nothing; saying so with 403 tells the sender it was a replay.
        return _refused(Refused(403, "replayed"))
    return JSONResponse({"applied": len(results) - duplicates, "duplicates": duplicates,
                         "skipped": len(parsed) - len(items)})


# --- Amazon SES through SNS -------------------------------------------------------------------

_certs: dict[str, bytes] = {}
_certs_lock = threading.Lock()


def _certificate(url: str) -> bytes:
    """The SNS signing certificate at `url` (already checked against the allowed pattern),
    fetched once per process."""
    with _certs_lock:
        cached = _certs.get(url)
    if cached is not None:
        return cached
    try:
        response = httpx.get(url, timeout=10.0, follow_redirects=False)
    except httpx.HTTPError:
        raise Refused(503, "signing certificate unavailable") from None
    pem = response.content
    if response.status_code != 200 or len(pem) > _MAX_CERT_BYTES or (
            b"-----BEGIN CERTIFICATE-----" not in pem):
        raise Refused(503, "signing certificate unavailable")
    with _certs_lock:
        if len(_certs) >= _MAX_CACHED_CERTS:
            _certs.clear()  # SNS uses a handful of certificates; anything more is noise
        _certs[url] = pem
    return pem


@router.post("/ses")
def ses(request: Request, body: bytes = Depends(raw_body)) -> JSONResponse:
    """SNS posts JSON (as text/plain): a SubscriptionConfirmation, then Notifications."""
    st = _state(request)
    hooks = st.settings.hooks
    try:
        message = providers.parse_json(body)
        url = providers.sns_check(message, hooks, time.time())
        header = request.headers.get("x-amz-sns-message-type")
        if header and header != message["Type"]:
            raise Refused(400, "message type header and body disagree")
        providers.sns_verify(message, _certificate(url), time.time())
        if message["Type"] == "SubscriptionConfirmation":
            return _confirm(str(message["SubscribeURL"]), hooks)
        if message["Type"] == "UnsubscribeConfirmation":
            return JSONResponse({"applied": 0, "duplicates": 0, "skipped": 1})
        parsed = providers.ses_events(message, body)
    except Refused as exc:
        return _refused(exc)
    return _apply(st, "ses", _source(request), parsed)


def _confirm(subscribe_url: str, hooks: HookSettings) -> JSONResponse:
    """Confirm the subscription by visiting its SubscribeURL, on an allowed SNS host only."""
    if not providers.sns_url_allowed(subscribe_url, hooks):
        return _refused(Refused(403, "SubscribeURL not allowed"))
    try:
        response = httpx.get(subscribe_url, timeout=10.0, follow_redirects=False)
    except httpx.HTTPError:
        return JSONResponse({"error": "subscription confirmation failed"}, status_code=502)
    if response.status_code != 200:
        return JSONResponse({"error": "subscription confirmation failed"}, status_code=502)
    return JSONResponse({"confirmed": True})


# --- SendGrid ---------------------------------------------------------------------------------

@router.post("/sendgrid")
def sendgrid(request: Request, body: bytes = Depends(raw_body)) -> JSONResponse:
    st = _state(request)
    hooks = st.settings.hooks
    if not hooks.sendgrid_public_key:
        return _refused(Refused(403, "not configured"))
    try:
        providers.sendgrid_verify(
            hooks.sendgrid_public_key,
            request.headers.get("x-twilio-email-event-webhook-signature"),
            request.headers.get("x-twilio-email-event-webhook-timestamp"),
            body, time.time(), hooks.max_age_seconds)
        parsed = providers.sendgrid_events(body)
    except Refused as exc:
        return _refused(exc)
    return _apply(st, "sendgrid", _source(request), parsed)


# --- Postmark ---------------------------------------------------------------------------------

@router.post("/postmark")
def postmark(request: Request, body: bytes = Depends(raw_body)) -> JSONResponse:
    st = _state(request)
    hooks = st.settings.hooks
    if not hooks.postmark_username or not hooks.postmark_password:
        return _refused(Refused(403, "not configured"))
    try:
        providers.postmark_check_auth(request.headers.get("authorization"),
                                      hooks.postmark_username, hooks.postmark_password)
        parsed = providers.postmark_events(body)
    except Refused as exc:
        return _refused(exc)
    return _apply(st, "postmark", _source(request), parsed)


# --- Mailgun ----------------------------------------------------------------------------------

@router.post("/mailgun")
def mailgun(request: Request, body: bytes = Depends(raw_body)) -> JSONResponse:
    st = _state(request)
    hooks = st.settings.hooks
    if not hooks.mailgun_signing_key:
        return _refused(Refused(403, "not configured"))
    try:
        payload = providers.parse_json(body)
        token = providers.mailgun_verify(hooks.mailgun_signing_key, payload, time.time(),
                                         hooks.max_age_seconds)
        parsed = providers.mailgun_events(payload, token, body)
    except Refused as exc:
        return _refused(exc)
    # The token is single-use: one already stored is a replay, refused (and changes nothing).
    return _apply(st, "mailgun", _source(request), parsed, refuse_replay=True)
