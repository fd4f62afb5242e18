"""`consentry serve`: the web app, the background work and (with --feedback-smtp-port) the inbound
SMTP receiver, in one process; and `consentry feedback poll-imap`.

serve migrates the database itself (contract: "serve and demo do it themselves"). The web app
runs under uvicorn in the main thread; the periodic maintenance (expired subscriptions, due
quarantine releases, as `consentry worker` does it) and, when feedback.imap_url is set, the
IMAP polling run in a background thread; the SMTP receiver runs in its own thread. Ctrl-C or
SIGTERM stops all of them: uvicorn finishes its requests, the receiver the messages it is
storing, the background thread its current step.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Annotated

import sqlalchemy as sa
import typer

from consentry import maintenance
from consentry.cli.common import Ctx, err_console
from consentry.domain.errors import ConsentryError
from consentry.feedback import imap_poll
from consentry.feedback.smtp_receiver import FeedbackReceiver, accepted_domains
from consentry.settings import Settings
from consentry.store.engine import upgrade
from consentry.tokens import Signer


class Background(threading.Thread):
    """Maintenance every maintenance.EVERY seconds; IMAP polling every feedback.imap_every
    seconds when feedback.imap_url is set. A failing step is reported and tried again next
    time; stop() ends the thread after its current step."""

    def __init__(self, settings: Settings, engine: sa.Engine, signer: Signer, *,
                 maintenance_every: float = maintenance.EVERY) -> None:
        super().__init__(name="consentry-background", daemon=False)
        self.settings = settings
        self.engine = engine
        self.signer = signer
        self.maintenance_every = max(maintenance_every, 1.0)
        self.imap_every = max(settings.feedback.imap_every, 1.0)
        self._stop_event = threading.Event()

    def run(self) -> None:
        next_maintenance = time.monotonic()
        next_poll = time.monotonic() if self.settings.feedback.imap_url else float("inf")
        while not self._stop_event.is_set():
            if time.monotonic() >= next_maintenance:
                self._step("maintenance", self._maintenance)
                next_maintenance = time.monotonic() + self.maintenance_every
            if self._stop_event.is_set():
                break
            if time.monotonic() >= next_poll:
                self._step("IMAP poll", self._poll)
                next_poll = time.monotonic() + self.imap_every
            self._stop_event.wait(max(0.0, min(next_maintenance, next_poll) - time.monotonic()))

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join()

    def _maintenance(self) -> None:
        expired, released = maintenance.run(self.engine, self.settings)
        if expired or released:
            err_console.print(f"{expired} subscriptions expired, {released} addresses released")

    def _poll(self) -> None:
        result = imap_poll.poll(self.settings, self.engine, self.signer)
        if result.fetched:
            err_console.print(f"IMAP: {describe_poll(result)}")

    @staticmethod
    def _step(name: str, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:
            err_console.print(f"{name} failed (tried again later): {exc}", highlight=False)


class _Terminated(Exception):
    """SIGTERM, turned into an exception so that everything stops in order."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def _log_to_stderr() -> None:
    logger = logging.getLogger("consentry")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def serve(ctx: Ctx,
          host: Annotated[str, typer.Option("--host", help="Address the web app listens on.")]
          = "127.0.0.1",
          port: Annotated[int, typer.Option("--port", help="Port of the web app.")] = 8000,
          feedback_smtp_port: Annotated[int | None, typer.Option(
              "--feedback-smtp-port",
              help="Also receive bounces, complaints and mailto unsubscribes by SMTP on this "
                   "port (mail only for the bounce domain and feedback.domains).")] = None,
          feedback_smtp_host: Annotated[str | None, typer.Option(
              "--feedback-smtp-host",
              help="Address the SMTP receiver listens on (default: --host).")] = None) -> None:
    """Web app (landing pages, console, API) and background work; with --feedback-smtp-port
    also the inbound SMTP receiver for bounces, complaints and mailto unsubscribes."""
    import uvicorn

    from consentry.web.app import create_app

    previous = signal.signal(signal.SIGTERM, _terminate)
    receiver: FeedbackReceiver | None = None
    background: Background | None = None
    try:
        upgrade(ctx.raw_engine())
        engine = ctx.engine
        _log_to_stderr()
        with engine.begin() as conn:
            signer = Signer.for_database(conn, ctx.settings)
        app = create_app(ctx.settings, engine)
        if feedback_smtp_port is not None:
            receiver = FeedbackReceiver(ctx.settings, engine, host=feedback_smtp_host or host,
                                        port=feedback_smtp_port, signer=signer)
            try:
                receiver.start()
            except OSError as exc:
                receiver = None
                raise ConsentryError(f"--feedback-smtp-port {feedback_smtp_port}: {exc}") from None
            domains = ", ".join(sorted(accepted_domains(ctx.settings)))
            err_console.print(f"feedback SMTP receiver listening on {receiver.host}:"
                              f"{receiver.port} (mail for {domains})", highlight=False)
        background = Background(ctx.settings, engine, signer)
        background.start()
        if ctx.settings.feedback.imap_url:
            where = imap_poll.parse_imap_url(ctx.settings.feedback.imap_url).describe()
            err_console.print(f"polling {where} every {background.imap_every:g} s",
                              highlight=False)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info"))
        server.run()  # until Ctrl-C or SIGTERM; then uvicorn re-raises the signal
    except (KeyboardInterrupt, _Terminated):
        pass
    finally:
        if background is not None:
            background.stop()
        if receiver is not None:
            receiver.stop()
        signal.signal(signal.SIGTERM, previous)
    err_console.print("stopped")


def describe_poll(result: imap_poll.PollResult) -> str:
    return (f"{result.fetched} fetched, {result.applied} applied, {result.duplicates} "
            f"duplicates, {result.review} for review, {result.failed} failed (left in place)")
