"""What keeps the public pages safe: security headers, CSRF tokens, a honeypot field, and rate
limits on the forms that send messages.

- Headers on every answer: a strict Content-Security-Policy (our own styles, no scripts, no
  framing), nosniff. Pages behind a token also get `Referrer-Policy: no-referrer` and
  `Cache-Control: no-store`, so the token leaks neither to other sites nor into caches.
- CSRF: double submit. A random value in a SameSite=Strict, HttpOnly cookie and the same value
  in a hidden field of every form; a POST whose field does not match its cookie is refused. The
  RFC 8058 one-click POST is the exception: mail providers send it without cookies, and the
  unguessable token in its URL is what protects it.
- Honeypot: a field people never see (and screen readers skip); a form that fills it in is a bot
  and gets the normal answer while nothing happens.
- Rate limits: a sliding window per client IP and per address, in this process's memory.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque

from fastapi import Request, Response
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSRF_COOKIE = "consentry_csrf"
CSRF_FIELD = "csrf_token"
HONEYPOT_FIELD = "website"

CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self'; "
                           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


_HEADERS = (("Content-Security-Policy", CONTENT_SECURITY_POLICY),
            ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "same-origin"))


class SecurityHeaders:
    """The headers on every answer, unless the handler set its own. Plain ASGI middleware:
    Starlette's BaseHTTPMiddleware costs a task and a stream per request, which the one-click
    endpoint, answering hundreds of requests a second, cannot spare."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS:
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def private_page(response: Response) -> Response:
    """A page behind a token: never cached, never named in a Referer."""
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def csrf_token(request: Request) -> str:
    """The request's CSRF value: the cookie's, or a new one (set it with `remember_csrf`)."""
    existing = request.cookies.get(CSRF_COOKIE)
    if existing and len(existing) == 43:
        return existing
    cached = getattr(request.state, "new_csrf", None)
    if cached is None:
        cached = secrets.token_urlsafe(32)
        request.state.new_csrf = cached
    return str(cached)


def remember_csrf(request: Request, response: Response) -> Response:
    new = getattr(request.state, "new_csrf", None)
    if new is not None:
        response.set_cookie(CSRF_COOKIE, new, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
    return response


def csrf_ok(request: Request, submitted: str | None) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE)
    return bool(cookie and submitted and hmac.compare_digest(cookie, submitted))


def is_bot(honeypot: str | None) -> bool:
    return bool(honeypot and honeypot.strip())


class RateLimiter:
    """At most `limit` events per `window` seconds per key (thread-safe, in memory)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - self.window:
                events.popleft()
            if len(events) >= self.limit:
                return False
            events.append(now)
            if len(self._events) > 100_000:  # forget idle keys instead of growing forever
                for idle in [k for k, v in self._events.items() if not v]:
                    del self._events[idle]
            return True
