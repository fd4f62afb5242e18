"""Push over HTTP, shaped like FCM HTTP v1 (one request per message).

POST {push_url} with {"message": {"token", "notification": {"title", "body"}}} and
`Authorization: Bearer {push_token}`; 200 answers {"name": "projects/.../messages/..."}.
Connection reuse, concurrency, rate and retries come from `HttpTransport` (sms_transport.py).

A token the provider says is gone (FCM UNREGISTERED, APNs Unregistered / BadDeviceToken, or
410 Gone) fails hard `user_unknown`: the sending loop quarantines it (domain.md section 5).
Only an explicit answer does so; a bare 404 (a wrong push_url answers that for every token)
is `not_defined`, so a configuration mistake never quarantines a whole audience at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from consentry.delivery.sms_transport import (
    DEFAULT_MAX_RETRY_AFTER,
    DEFAULT_RETRY_DELAYS,
    DEFAULT_TIMEOUT,
    HttpTransport,
    Verdict,
    accepted,
    body_snippet,
    credentials_refused,
    failed,
    http_url,
    json_body,
    transient,
)
from consentry.delivery.transport import Outgoing
from consentry.domain.errors import ConsentryError
from consentry.settings import SendingSettings, Settings

# APNs `reason` values (also accepted in an FCM-shaped error) that mean the token is dead.
APNS_GONE = frozenset({"unregistered", "baddevicetoken", "expiredtoken"})
# FCM errorCode / google.rpc status values.
FCM_RETRY = frozenset({"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL", "RESOURCE_EXHAUSTED"})
FCM_AUTH = frozenset({"THIRD_PARTY_AUTH_ERROR", "UNAUTHENTICATED", "PERMISSION_DENIED"})


def _fcm_error(body: Any) -> tuple[str, str, str, str]:
    """(status, errorCode, APNs reason, message) from an FCM v1 or APNs-style error body."""
    if not isinstance(body, dict):
        return "", "", "", ""
    error = body.get("error")
    reason = str(body.get("reason") or "")
    if not isinstance(error, dict):
        return "", str(error or ""), reason, str(body.get("message") or "")
    status = str(error.get("status") or "")
    message = str(error.get("message") or "")
    reason = reason or str(error.get("reason") or "")
    code = ""
    for item in error.get("details") or ():
        if isinstance(item, dict) and item.get("errorCode"):
            code = str(item["errorCode"])
            break
        if isinstance(item, dict) and item.get("reason") and not reason:
            reason = str(item["reason"])
    return status, code, reason, message


class FcmPushTransport(HttpTransport):
    channel = "push"
    credentials_setting = "CONSENTRY_PUSH_TOKEN"

    def __init__(self, url: str, token: str | None, sending: SendingSettings,
                 **options: Any) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        super().__init__(sending, headers=headers, **options)
        self.url = url

    def build(self, client: httpx.AsyncClient, message: Outgoing) -> httpx.Request:
        return client.build_request("POST", self.url, json={"message": {
            "token": message.address,
            "notification": {"title": message.subject, "body": message.text}}})

    def judge(self, response: httpx.Response) -> Verdict:
        status = response.status_code
        body = json_body(response)
        if 200 <= status < 300:
            name = body.get("name") if isinstance(body, dict) else None
            return accepted(f"HTTP {status}", None if name is None else str(name))
        rpc_status, code, reason, message = _fcm_error(body)
        what = " ".join(p for p in (rpc_status, code, reason) if p)
        what = f"{what}: {message}" if what and message else what or message
        detail = f"HTTP {status}: " + (what or body_snippet(response) or "no details")

        if (code.upper() == "UNREGISTERED" or reason.lower() in APNS_GONE or status == 410
                or (rpc_status == "INVALID_ARGUMENT" and "registration token" in message.lower())):
            return failed("user_unknown", detail)
        if status in (408, 429) or status >= 500 or code in FCM_RETRY or rpc_status in FCM_RETRY:
            return transient(detail)
        if code == "SENDER_ID_MISMATCH" or reason == "DeviceTokenNotForTopic":
            # The token belongs to another app/project: refused for this token only.
            return failed("refused", detail)
        if status in (401, 403) or code in FCM_AUTH or rpc_status in FCM_AUTH:
            return credentials_refused(detail, self.credentials_setting)
        if status == 413 or reason == "PayloadTooLarge" or rpc_status == "INVALID_ARGUMENT":
            return failed("message_invalid", detail)  # our payload, not the token
        return failed("not_defined", detail)


def push_transport(settings: Settings, *, retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
                   max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
                   timeout: float = DEFAULT_TIMEOUT) -> HttpTransport:
    """The push transport the settings describe (push_url, push_token)."""
    if not settings.push_url:
        raise ConsentryError("no push provider configured (CONSENTRY_PUSH_URL)")
    url = http_url(settings.push_url, "CONSENTRY_PUSH_URL")
    return FcmPushTransport(url, settings.push_token or None, settings.sending,
                            retry_delays=retry_delays, max_retry_after=max_retry_after,
                            timeout=timeout)
