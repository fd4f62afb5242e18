"""RFC 8058 one-click unsubscriptions, answered before the web framework's routing.

Mail providers POST `List-Unsubscribe=One-Click` to the List-Unsubscribe URL of every message a
recipient unsubscribes from, in bursts after a large send. The request needs no session, no
form parsing beyond one field and no dependency injection, and the framework's own per-request
work cost more than the database's: this middleware answers exactly that request (a
form-urlencoded body of that one field, on /u/{token}) itself, with the same function the
/u route uses (unsubscribe.one_click_answer). Anything else (a GET, the page's own form, a
multipart one-click, an oversized body) goes on to the app unchanged.
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import parse_qsl, unquote

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consentry.tokens import InvalidToken
from consentry.web import i18n
from consentry.web.unsubscribe import (
    ONE_CLICK_FIELD,
    ONE_CLICK_VALUE,
    invalid_one_click,
    one_click_answer,
    read_link,
)

_PATH = re.compile(r"/u/([^/]{1,2048})")
_MAX_BODY = 1024  # "List-Unsubscribe=One-Click" is 26 bytes
_EXPECTED = [(ONE_CLICK_FIELD, ONE_CLICK_VALUE)]
# Threads running one-click transactions at once: a few keep the database busy; more only
# fight over the interpreter lock (measured: 8 threads cost more CPU per request than 4).
_THREADS = 4


class OneClickFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _PATH.fullmatch(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or scope["method"] != "POST" or not _urlencoded(scope):
            await self.app(scope, receive, send)
            return
        received: list[Message] = []
        body = b""
        while True:
            message = await receive()
            received.append(message)
            body += message.get("body", b"")
            if not message.get("more_body") or len(body) > _MAX_BODY:
                break
        if len(body) > _MAX_BODY or _fields(body) != _EXPECTED:
            await self.app(scope, _replay(received, receive), send)
            return
        await self._answer(scope, unquote(match.group(1)), send)

    async def _answer(self, scope: Scope, token: str, send: Send) -> None:
        app_state = scope["app"].state.consentry
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        lang = i18n.choose(query.get("lang"), None, headers.get("accept-language"))
        path = scope["path"]
        try:
            link = read_link(app_state, token)
        except InvalidToken:
            status, html = 400, invalid_one_click(lang, path)
        else:
            client = scope.get("client")
            status, html = await anyio.to_thread.run_sync(
                one_click_answer, app_state, link, client[0] if client else None,
                headers.get("user-agent"), lang, path, limiter=_limiter())
        payload = html.encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(payload)).encode()),
            (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": payload})


_LIMITERS: dict[int, anyio.CapacityLimiter] = {}


def _limiter() -> anyio.CapacityLimiter:
    """One limiter per event loop (a CapacityLimiter belongs to the loop it was made in)."""
    key = id(asyncio.get_running_loop())
    if key not in _LIMITERS:
        _LIMITERS[key] = anyio.CapacityLimiter(_THREADS)
    return _LIMITERS[key]


def _urlencoded(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-type":
            return value.split(b";")[0].strip().lower() == b"application/x-www-form-urlencoded"
    return False


def _fields(body: bytes) -> list[tuple[str, str]]:
    try:
        return [(k, v.strip()) for k, v in parse_qsl(body.decode("utf-8"),
                                                      keep_blank_values=True)]
    except UnicodeDecodeError:
        return []


def _replay(received: list[Message], receive: Receive) -> Receive:
    """A receive that hands over what was read already, then the rest."""
    pending = list(received)

    async def again() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return again
