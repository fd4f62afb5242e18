"""Inbound-SMS webhooks: POST /hooks/sms/twilio and POST /hooks/sms/generic.

Twilio (and Twilio-compatible providers) POST application/x-www-form-urlencoded From, To, Body,
MessageSid, signed with X-Twilio-Signature: base64(HMAC-SHA1(auth token, the full URL followed
by each POST parameter's name and value, sorted by name)). The key is hooks.twilio_auth_token,
else the token of sms_token ("ACCOUNT_SID:AUTH_TOKEN") when sms_provider is twilio. Proxies
change the host the app sees, so the URL is checked as base_url + path (+ query) and as the
request arrived. The answer is TwiML: <Response><Message>reply</Message></Response>, or an
empty <Response/> when there is nothing to say.

The generic hook takes JSON {"id", "from", "to", "text"} with X-Consentry-Timestamp (unix
seconds) and X-Consentry-Signature: "sha256=" + hex HMAC-SHA256(hooks.sms_secret,
timestamp + "." + raw body); timestamps further than hooks.max_age_seconds from now are refused
as replays. It answers {"action", "reply", "duplicate"}.

Nothing is stored for a request that does not verify: 403 for a missing or forged signature and
for a hook that is not configured, 401 for a missing or stale timestamp. Provider ids are kept
as "twilio:SID" / "generic:ID", so a replayed message counts once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit
from xml.sax.saxutils import escape

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from consentry.settings import Settings
from consentry.sms.service import InboundResult, handle_inbound
from consentry.web.deps import client_ip, raw_body, state

router = APIRouter()

MAX_BODY = 64 * 1024  # an inbound SMS webhook is a few hundred bytes


RawBody = Annotated[bytes, Depends(raw_body)]




# --- Twilio ----------------------------------------------------------------------------------


def twilio_auth_token(settings: Settings) -> str | None:
    if settings.hooks.twilio_auth_token:
        return settings.hooks.twilio_auth_token
    if (settings.sms_provider or "").strip().lower() == "twilio" and settings.sms_token:
        token = settings.sms_token.partition(":")[2].strip()
        return token or None
    return None


def twilio_signature(token: str, url: str, params: list[tuple[str, str]]) -> str:
    """Twilio's request signature (as its own RequestValidator computes it)."""
    values: dict[str, set[str]] = {}
    for name, value in params:
        values.setdefault(name, set()).add(value)
    data = url + "".join(name + value for name in sorted(values)
                         for value in sorted(values[name]))
    digest = hmac.new(token.encode(), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _url_variants(url: str) -> set[str]:
    """The URL with and without its default port (Twilio signs what it was configured with)."""
    parts = urlsplit(url)
    variants = {url}
    default = {"https": 443, "http": 80}.get(parts.scheme)
    host = parts.hostname or ""
    if parts.port is not None and parts.port == default:
        variants.add(urlunsplit(parts._replace(netloc=host)))
    elif parts.port is None and default is not None and host:
        variants.add(urlunsplit(parts._replace(netloc=f"{host}:{default}")))
    return variants


def _candidate_urls(request: Request, settings: Settings) -> set[str]:
    query = request.url.query
    public = settings.base_url.rstrip("/") + request.url.path + (f"?{query}" if query else "")
    return _url_variants(public) | _url_variants(str(request.url))


def _twiml(reply: str | None) -> Response:
    body = (f"<Response><Message>{escape(reply)}</Message></Response>" if reply
            else "<Response/>")
    return Response('<?xml version="1.0" encoding="UTF-8"?>' + body,
                    media_type="application/xml")


def _refuse(status: int, why: str) -> JSONResponse:
    return JSONResponse({"error": why}, status_code=status)


@router.post("/hooks/sms/twilio")
def twilio_inbound(request: Request, body: RawBody) -> Response:
    app = state(request)
    token = twilio_auth_token(app.settings)
    if token is None:
        return _refuse(403, "the Twilio hook is not configured (hooks.twilio_auth_token)")
    signature = request.headers.get("x-twilio-signature", "")
    if not signature:
        return _refuse(403, "missing X-Twilio-Signature")
    if len(body) > MAX_BODY:
        return _refuse(413, "request too large")
    try:
        params = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        return _refuse(403, "the signature does not match")
    if not any(hmac.compare_digest(twilio_signature(token, url, params), signature)
               for url in _candidate_urls(request, app.settings)):
        return _refuse(403, "the signature does not match")
    form = dict(params)
    sender, to, sid = form.get("From", ""), form.get("To", ""), (
        form.get("MessageSid") or form.get("SmsMessageSid") or form.get("SmsSid") or "")
    if not sender or not to:
        return _refuse(400, "From and To are required")
    with app.engine.begin() as conn:
        result = handle_inbound(conn, app.settings, from_number=sender, to_number=to,
                                text=form.get("Body", ""), via="twilio",
                                provider_id=f"twilio:{sid}" if sid else None,
                                origin_ip=client_ip(request))
    return _twiml(result.reply)


# --- generic JSON ----------------------------------------------------------------------------


def generic_signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def _field(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int):
        return str(value)
    return None


@router.post("/hooks/sms/generic")
def generic_inbound(request: Request, body: RawBody) -> Response:
    app = state(request)
    secret = app.settings.hooks.sms_secret
    if not secret:
        return _refuse(403, "the generic SMS hook is not configured (hooks.sms_secret)")
    timestamp = request.headers.get("x-consentry-timestamp", "").strip()
    signature = request.headers.get("x-consentry-signature", "").strip()
    if not timestamp or not signature:
        return _refuse(401, "X-Consentry-Timestamp and X-Consentry-Signature are required")
    try:
        sent_at = int(timestamp)
    except ValueError:
        return _refuse(401, "X-Consentry-Timestamp must be unix seconds")
    if abs(time.time() - sent_at) > app.settings.hooks.max_age_seconds:
        return _refuse(401, "stale timestamp")
    if len(body) > MAX_BODY:
        return _refuse(413, "request too large")
    if not hmac.compare_digest(generic_signature(secret, timestamp, body).encode(),
                               signature.encode()):
        return _refuse(403, "the signature does not match")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _refuse(400, "the body is not JSON")
    if not isinstance(data, dict):
        return _refuse(400, 'expected a JSON object {"id", "from", "to", "text"}')
    sender, to, text, ident = (_field(data, "from"), _field(data, "to"),
                               data.get("text", ""), _field(data, "id"))
    if not sender or not to or not isinstance(text, str):
        return _refuse(400, '"from" and "to" are required, "text" must be a string')
    with app.engine.begin() as conn:
        result = handle_inbound(conn, app.settings, from_number=sender, to_number=to,
                                text=text, via="generic",
                                provider_id=f"generic:{ident}" if ident else None,
                                origin_ip=client_ip(request))
    return JSONResponse(_json(result))


def _json(result: InboundResult) -> dict[str, Any]:
    return {"action": result.action.value, "reply": result.reply,
            "duplicate": result.duplicate}
