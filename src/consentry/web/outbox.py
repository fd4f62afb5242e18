"""The demo's outbox: a local SMTP server that keeps every message the demo sends, and the
pages that show them (/demo/outbox, /demo/outbox/{n}).

`consentry demo` points the web app's relay (settings.smtp_url) at it, so a new user can
subscribe, read the confirmation and click through without any mail setup. It listens on
127.0.0.1 only, keeps messages in memory (the newest `keep`), and its pages exist only in the
app the demo builds (`add_outbox`): `consentry serve` never shows them.
"""

from __future__ import annotations

import re
import socket
import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from functools import cached_property
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from consentry.web.render import environment, language
from consentry.web.security import CSRF_FIELD, HONEYPOT_FIELD, csrf_token, private_page

_URL = re.compile(r"https?://[^\s<>\"]+")


@dataclass(frozen=True)
class Kept:
    number: int
    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    received_at: datetime

    @cached_property
    def message(self) -> EmailMessage:
        return BytesParser(policy=policy.default).parsebytes(self.raw)  # type: ignore[return-value]

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", "") or "")

    @property
    def to(self) -> str:
        return str(self.message.get("To", "") or ", ".join(self.rcpt_tos))

    def text(self) -> str:
        """The plain-text body (or the HTML one's source if there is no plain text)."""
        body = self.message.get_body(preferencelist=("plain", "html"))
        if body is None:
            return ""
        return str(body.get_content())  # type: ignore[attr-defined]

    def links(self) -> list[str]:
        return [u.rstrip(".,);") for u in _URL.findall(self.text())]


class _Handler:
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        number = self.outbox._keep(str(envelope.mail_from), list(envelope.rcpt_tos),
                                   bytes(envelope.original_content or b""))
        return f"250 2.0.0 Ok: kept in the demo outbox as {number}"


class Outbox:
    """An SMTP server on a loopback address that keeps what it receives, in memory."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, keep: int = 1000) -> None:
        self.host = host
        self.port = port or _free_port(host)
        self._messages: deque[Kept] = deque(maxlen=keep)
        self._count = 0
        self._lock = threading.Lock()
        self._controller = Controller(_Handler(self), hostname=host, port=self.port,
                                      enable_SMTPUTF8=True)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def start(self) -> Outbox:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> Outbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _keep(self, mail_from: str, rcpt_tos: list[str], raw: bytes) -> int:
        with self._lock:
            self._count += 1
            self._messages.append(Kept(self._count, mail_from, tuple(rcpt_tos), raw,
                                       datetime.now(UTC)))
            return self._count

    def messages(self) -> list[Kept]:
        """Oldest first."""
        with self._lock:
            return list(self._messages)

    def get(self, number: int) -> Kept | None:
        return next((m for m in self.messages() if m.number == number), None)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# The pages: inline templates on the public pages' frame (base.html), in English and German.

LIST_PAGE = """{% extends "base.html" %}
{% block title %}{{ _("Demo outbox") }}{% endblock %}
{% block content %}
<h1>{{ _("Demo outbox") }}</h1>
<p>{{ _("Every message the demo sends lands here instead of in a real mailbox.") }}</p>
<p><a href="{{ subscribe_url }}">{{ _("Try it: subscribe to the newsletter") }}</a></p>
{% if messages %}
<ol class="outbox" reversed>
  {% for m in messages %}
  <li><a href="/demo/outbox/{{ m.number }}?lang={{ lang }}">
      {{- m.subject or _("(no subject)") }}</a><br>
    <span class="hint">{{ _("To") }}: {{ m.to }} ·
      {{ m.received_at.strftime("%Y-%m-%d %H:%M:%S") }} UTC</span></li>
  {% endfor %}
</ol>
{% else %}
<p class="notice">{{ _("No messages yet.") }}</p>
{% endif %}
{% endblock %}
"""

MESSAGE_PAGE = """{% extends "base.html" %}
{% block title %}{{ subject or _("(no subject)") }}{% endblock %}
{% block content %}
<p><a href="/demo/outbox?lang={{ lang }}">{{ _("Back to the outbox") }}</a></p>
<h1>{{ subject or _("(no subject)") }}</h1>
<dl class="headers">
  <dt>{{ _("From") }}</dt><dd>{{ mail_from }}</dd>
  <dt>{{ _("To") }}</dt><dd>{{ to }}</dd>
  <dt>{{ _("Received") }}</dt><dd>{{ received }} UTC</dd>
</dl>
<div class="mail">
{% for paragraph in paragraphs %}<p>
  {%- for line in paragraph %}{% if not loop.first %}<br>{% endif %}
    {%- for text, link in line %}
      {%- if link %}<a href="{{ text }}">{{ text }}</a>{% else %}{{ text }}{% endif %}
    {%- endfor %}
  {%- endfor %}</p>
{% endfor %}
</div>
{% endblock %}
"""


def _render(request: Request, source: str, **context: Any) -> HTMLResponse:
    lang = language(request)
    html = environment(lang).from_string(source).render(
        lang=lang, csrf_field=CSRF_FIELD, csrf_token=csrf_token(request),
        honeypot_field=HONEYPOT_FIELD, path=request.url.path, **context)
    # The messages hold personal links (tokens): never cached, never in a Referer.
    return private_page(HTMLResponse(html))  # type: ignore[return-value]


def _paragraphs(text: str) -> list[list[list[tuple[str, bool]]]]:
    """Paragraphs of lines of (text, is_link) pieces, for the template to escape and link."""
    result = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").strip()):
        lines = []
        for line in block.split("\n"):
            pieces: list[tuple[str, bool]] = []
            last = 0
            for match in _URL.finditer(line):
                url = match.group(0).rstrip(".,);")
                pieces.append((line[last:match.start()], False))
                pieces.append((url, True))
                last = match.start() + len(url)
            pieces.append((line[last:], False))
            lines.append([p for p in pieces if p[0]])
        result.append(lines)
    return result


def add_outbox(app: FastAPI, outbox: Outbox, subscribe_url: str = "/s/newsletter") -> None:
    """Show `outbox` at /demo/outbox in `app` (the demo's app only)."""
    router = APIRouter(prefix="/demo")

    @router.get("/outbox", response_class=HTMLResponse)
    def outbox_list(request: Request) -> Response:
        return _render(request, LIST_PAGE, messages=list(reversed(outbox.messages())),
                       subscribe_url=subscribe_url)

    @router.get("/outbox/{number}", response_class=HTMLResponse)
    def outbox_message(request: Request, number: int) -> Response:
        kept = outbox.get(number)
        if kept is None:
            raise HTTPException(404)
        return _render(request, MESSAGE_PAGE, subject=kept.subject,
                       mail_from=str(kept.message.get("From", "") or kept.mail_from),
                       to=kept.to, received=kept.received_at.strftime("%Y-%m-%d %H:%M:%S"),
                       paragraphs=_paragraphs(kept.text()))

    app.include_router(router)
