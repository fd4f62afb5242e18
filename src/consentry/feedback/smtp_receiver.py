"""The inbound SMTP receiver: bounces, complaints and mailto unsubscribes arrive here.

`consentry serve --feedback-smtp-port Q` runs it (aiosmtpd, in its own thread and event loop).
It is the MX of the bounce domain, not a relay: a recipient is accepted only at
`settings.bounce_domain` or one of `settings.feedback.domains` (anything else gets
550 5.7.1), there is no AUTH, messages larger than `feedback.max_message_bytes` get 552 and a
transaction takes at most MAX_RECIPIENTS recipients.

Each message is classified and applied (feedback.service) in a worker thread, in a transaction of
its own, and answered 250 only once it is stored, so a message is never lost: one nothing can be
read from is kept for review, and a database error answers 451 4.3.0 so that the sender tries
again later (it is counted once when it comes back: its dedupe key is unique).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from consentry.domain.feedback import Kind, Report
from consentry.feedback.service import Applied, Incoming, apply_batch, incoming_message, message_key
from consentry.settings import Settings
from consentry.tokens import Signer

log = logging.getLogger("consentry.feedback.smtp")

MAX_RECIPIENTS = 100  # per transaction; a bounce has one, a relay attempt many
IDLE_TIMEOUT = 120.0  # seconds a client may stay silent before it is disconnected
WORKERS = 4  # messages applied at once (each in its own transaction)
KEEP_RECEIVED = 100  # the last messages taken in, kept in memory for logs and tests

RELAY_DENIED = "550 5.7.1 relaying denied"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TRY_LATER = "451 4.3.0 Temporary failure storing the message, try again later"


def accepted_domains(settings: Settings) -> frozenset[str]:
    """The domains mail is accepted for, lowercased: the bounce domain and feedback.domains."""
    names = [settings.bounce_domain, *settings.feedback.domains]
    return frozenset(d for d in (_domain(n) for n in names) if d)


def _domain(name: str) -> str:
    return name.strip().lstrip("@").rstrip(".").lower()


@dataclass
class Received:
    """One message taken in (kept by the handler for logs and tests)."""

    peer: str | None
    rcpt_tos: list[str]
    results: list[Applied]


class FeedbackHandler:
    """aiosmtpd handler: RCPT checks the domain, DATA applies the message."""

    def __init__(self, settings: Settings, engine: sa.Engine, signer: Signer,
                 executor: ThreadPoolExecutor) -> None:
        self.settings = settings
        self.engine = engine
        self.signer = signer
        self.executor = executor
        self.domains = accepted_domains(settings)
        self.received: deque[Received] = deque(maxlen=KEEP_RECEIVED)

    def accepts(self, address: str) -> bool:
        local, at, domain = address.strip().strip("<>").rpartition("@")
        if not at:
            # RFC 5321 4.5.1: "postmaster" without a domain must be accepted.
            return domain.lower() == "postmaster"
        return bool(local) and _domain(domain) in self.domains

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if not self.accepts(address):
            log.info("refused RCPT %r from %s: not one of our domains", address, _peer(session))
            return RELAY_DENIED
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):  # only with decode_data=True, which the receiver does not set
            raw = raw.encode("utf-8", "surrogateescape")
        peer = _peer(session)
        rcpt_tos = list(envelope.rcpt_tos)
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.executor, self.store, raw, peer, rcpt_tos)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("message from %s not stored, answered 451: %s", peer, exc)
            return TRY_LATER
        except Exception:
            log.exception("message from %s not stored, answered 451", peer)
            return TRY_LATER
        self.received.append(Received(peer, rcpt_tos, results))
        statuses = ", ".join(sorted({r.status for r in results})) or "stored"
        return f"250 2.0.0 OK: {statuses}"

    def store(self, raw: bytes, peer: str | None, rcpt_tos: Sequence[str]) -> list[Applied]:
        """Classify and apply one message in a transaction of its own (a worker thread)."""
        item = _incoming(raw, peer, rcpt_tos)
        with self.engine.begin() as conn:
            results = apply_batch(conn, self.settings, self.signer, [item])
        for result in results:
            log.info("message from %s to %s: %s %s", peer, ", ".join(rcpt_tos), result.kind,
                     result.status)
        return results


def _incoming(raw: bytes, peer: str | None, rcpt_tos: Sequence[str]) -> Incoming:
    try:
        return incoming_message(raw, via="smtp", source=peer, envelope_to=rcpt_tos)
    except Exception:
        # A message the classifier trips over is still kept (for review), never lost.
        log.exception("message from %s could not be classified: kept for review", peer)
        report = Report(Kind.UNKNOWN, envelope_to=tuple(rcpt_tos))
        return Incoming(report, message_key(raw, report), "smtp", peer, raw)


def _peer(session: Session) -> str | None:
    peer: Any = session.peer
    if isinstance(peer, tuple | list) and peer:
        return str(peer[0])
    return str(peer) if peer else None


class _Controller(Controller):
    """aiosmtpd's threaded controller on a socket bound beforehand, so that a port already
    taken fails at once and port 0 is known before the first connection."""

    def __init__(self, handler: Any, sock: socket.socket, **kwargs: Any) -> None:
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, **kwargs)
        self._sock = sock

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock)


class FeedbackReceiver:
    """The receiver on host:port (port 0: a free one, readable as `.port` after start())."""

    def __init__(self, settings: Settings, engine: sa.Engine, *, host: str = "127.0.0.1",
                 port: int = 25, signer: Signer | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.host = host
        self._port = port
        self._signer = signer
        self._executor: ThreadPoolExecutor | None = None
        self._controller: _Controller | None = None
        self.handler: FeedbackHandler | None = None

    @property
    def port(self) -> int:
        return self._controller.port if self._controller is not None else self._port

    def start(self) -> FeedbackReceiver:
        if self._controller is not None:
            raise RuntimeError("the feedback receiver is running already")
        if self._signer is None:
            with self.engine.begin() as conn:
                self._signer = Signer.for_database(conn, self.settings)
        # Bound here, so that a port already taken fails at once.
        sock = socket.create_server((self.host, self._port), family=(
            socket.AF_INET6 if ":" in self.host else socket.AF_INET))
        self._executor = ThreadPoolExecutor(max_workers=WORKERS,
                                            thread_name_prefix="feedback-smtp")
        self.handler = FeedbackHandler(self.settings, self.engine, self._signer, self._executor)
        controller = _Controller(
            self.handler, sock,
            server_hostname=_domain(self.settings.bounce_domain) or "localhost",
            ident="Consentry feedback receiver",
            data_size_limit=self.settings.feedback.max_message_bytes,
            timeout=IDLE_TIMEOUT, enable_SMTPUTF8=True, decode_data=False)
        try:
            controller.start()
        except BaseException:
            controller.stop(no_assert=True)
            if not controller.loop.is_closed():  # it never ran
                controller.loop.close()
            sock.close()
            self._executor.shutdown(wait=True)
            self._executor = None
            raise
        self._controller = controller
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)  # messages being stored finish first
            self._executor = None

    def __enter__(self) -> FeedbackReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

