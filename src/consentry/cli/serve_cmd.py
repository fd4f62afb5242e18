"""`consentry serve`: the web app, the background work and (with --feedback-smtp-port) the inbound
SMTP receiver, in one process; and `consentry feedback poll-imap`.

serve migrates the database itself (contract: "serve and demo do it themselves"). The web app
runs under uvicorn in the main thread; the periodic maintenance (expired subscriptions, due
quarantine releases, as `consentry worker` does it), the sending of deliveries in state
`sending` (POST /api/v1/deliveries/{id}/send only marks them; as `consentry worker` does it)
and, when feedback.imap_url is set, the IMAP polling run in a background thread; the SMTP
receiver runs in its own thread. Ctrl-C or SIGTERM stops all of them: uvicorn finishes its
requests, the receiver the messages it is storing, the background thread its current step.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Annotated, Any

import sqlalchemy as sa
import typer

from consentry import maintenance
from consentry.cli.common import Ctx, err_console
from consentry.delivery import sending
from consentry.delivery import service as deliveries
from consentry.delivery.transport import Transport
from consentry.delivery.transports import transport_for
from consentry.domain.errors import ConsentryError
from consentry.feedback import imap_poll
from consentry.feedback.smtp_receiver import FeedbackReceiver, accepted_domains
from consentry.settings import Settings
from consentry.store.engine import upgrade
from consentry.tokens import Signer
from consentry.webhooks import dispatch as webhooks_dispatch

SEND_EVERY = 2.0  # seconds between looks for deliveries to send


class DeliverySender:
    """One step of a sending worker, shared by `consentry serve` and `consentry worker`: every
    delivery in state `sending` with rows left is sent from this process, one after the other.

    A delivery that fails (no SMTP relay configured, a transport error) is reported and tried
    again later, with a growing delay (`retry_after` doubling up to `retry_max`), while the
    others still go. sending.send resumes where a failed attempt stopped."""

    def __init__(self, engine: sa.Engine, settings: Settings, *,
                 transport: Callable[[str, Settings], Transport] = transport_for,
                 report: Callable[[str], None] | None = None,
                 retry_after: float = 30.0, retry_max: float = 600.0) -> None:
        self.engine = engine
        self.settings = settings
        self.transport = transport
        self.report = report or (lambda text: err_console.print(text, highlight=False))
        self.retry_after = retry_after
        self.retry_max = retry_max
        self._failing: dict[int, tuple[float, float]] = {}  # id -> (next attempt, delay)

    def step(self) -> list[int]:
        """Send what is due; returns the ids of the deliveries attempted."""
        with self.engine.begin() as conn:
            ids = sending.sendable(conn)
        now = time.monotonic()
        for gone in set(self._failing) - set(ids):  # paused, done or sent by another worker
            del self._failing[gone]
        due = [i for i in ids if self._failing.get(i, (0.0, 0.0))[0] <= now]
        for delivery_id in due:
            self._send(delivery_id)
        return due

    def _send(self, delivery_id: int) -> None:
        try:
            with self.engine.begin() as conn:
                channel = deliveries.get(conn, delivery_id)["channel"]
            stats = sending.send(self.engine, self.settings, delivery_id,
                                 self.transport(channel, self.settings), resume_paused=False)
        except Exception as exc:
            previous = self._failing.get(delivery_id)
            delay = self.retry_after if previous is None else min(self.retry_max,
                                                                  previous[1] * 2)
            self._failing[delivery_id] = (time.monotonic() + delay, delay)
            self.report(f"delivery {delivery_id} failed (tried again in {delay:g} s): {exc}")
            return
        self._failing.pop(delivery_id, None)
        self.report(f"delivery {delivery_id}: {stats.sent} sent, {stats.failed} failed, "
                    f"{stats.excluded_at_send} excluded at send"
                    + (f", {stats.unknown} of unknown fate after an earlier crash"
                       if stats.unknown else ""))


class Background(threading.Thread):
    """Maintenance every maintenance.EVERY seconds; deliveries in state `sending` sent every
    `send_every` seconds (DeliverySender); due outbound webhooks every `webhook_every` seconds;
    IMAP polling every feedback.imap_every seconds when feedback.imap_url is set. A failing
    step is reported and tried again next time; stop() ends the thread after its current step
    (a delivery being sent is finished first)."""

    def __init__(self, settings: Settings, engine: sa.Engine, signer: Signer, *,
                 maintenance_every: float = maintenance.EVERY,
                 send_every: float = SEND_EVERY,
                 webhook_every: float = webhooks_dispatch.EVERY,
                 sender: DeliverySender | None = None) -> None:
        super().__init__(name="consentry-background", daemon=False)
        self.settings = settings
        self.engine = engine
        self.signer = signer
        self.maintenance_every = max(maintenance_every, 1.0)
        self.send_every = max(send_every, 0.1)
        self.webhook_every = max(webhook_every, 0.1)
        self.imap_every = max(settings.feedback.imap_every, 1.0)
        self.sender = sender or DeliverySender(engine, settings)
        self._stop_event = threading.Event()

    def run(self) -> None:
        next_maintenance = next_send = next_webhooks = time.monotonic()
        next_poll = time.monotonic() if self.settings.feedback.imap_url else float("inf")
        while not self._stop_event.is_set():
            if time.monotonic() >= next_maintenance:
                self._step("maintenance", self._maintenance)
                next_maintenance = time.monotonic() + self.maintenance_every
            if self._stop_event.is_set():
                break
            if time.monotonic() >= next_send:
                self._step("sending", self.send_deliveries)
                next_send = time.monotonic() + self.send_every
            if self._stop_event.is_set():
                break
            if time.monotonic() >= next_webhooks:
                self._step("webhook dispatch", self.dispatch_webhooks)
                next_webhooks = time.monotonic() + self.webhook_every
            if self._stop_event.is_set():
                break
            if time.monotonic() >= next_poll:
                self._step("IMAP poll", self._poll)
                next_poll = time.monotonic() + self.imap_every
            self._stop_event.wait(max(0.0, min(next_maintenance, next_send, next_webhooks,
                                               next_poll) - time.monotonic()))

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join()

    def _maintenance(self) -> None:
        expired, released = maintenance.run(self.engine, self.settings)
        if expired or released:
            err_console.print(f"{expired} subscriptions expired, {released} addresses released")

    def send_deliveries(self) -> None:
        """The sending step: deliveries in state `sending` (a failing one is reported and
        retried later, the others still go)."""
        self.sender.step()

    def dispatch_webhooks(self) -> None:
        """The outbound webhooks step: send the due deliveries (webhooks/dispatch.py)."""
        report_webhooks(webhooks_dispatch.step(self.engine))

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


@contextlib.contextmanager
def until_stopped() -> Iterator[contextlib.ExitStack]:
    """Run the body until Ctrl-C or SIGTERM (both end it quietly); what the body registers on
    the stack is stopped afterwards, the last registered first."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        # The interruption is swallowed first; then the stack stops what was started.
        with contextlib.ExitStack() as stack, contextlib.suppress(KeyboardInterrupt, _Terminated):
            yield stack
    finally:
        signal.signal(signal.SIGTERM, previous)


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

    from consentry.web.app import create_app

    with until_stopped() as stack:
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
                raise ConsentryError(f"--feedback-smtp-port {feedback_smtp_port}: {exc}") from None
            stack.callback(receiver.stop)
            domains = ", ".join(sorted(accepted_domains(ctx.settings)))
            err_console.print(f"feedback SMTP receiver listening on {receiver.host}:"
                              f"{receiver.port} (mail for {domains})", highlight=False)
        background = Background(ctx.settings, engine, signer)
        background.start()
        stack.callback(background.stop)
        if ctx.settings.feedback.imap_url:
            where = imap_poll.parse_imap_url(ctx.settings.feedback.imap_url).describe()
            err_console.print(f"polling {where} every {background.imap_every:g} s",
                              highlight=False)
        run_web(app, host, port)  # until Ctrl-C or SIGTERM; then uvicorn re-raises it
    err_console.print("stopped")


def run_web(app: Any, host: str, port: int) -> None:
    """Serve the web app with uvicorn until Ctrl-C or SIGTERM. No access log: a line per
    request costs more than a one-click unsubscription itself."""
    import uvicorn  # here, not at the top: every other command starts without it

    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info",
                                  access_log=False)).run()


def describe_poll(result: imap_poll.PollResult) -> str:
    return (f"{result.fetched} fetched, {result.applied} applied, {result.duplicates} "
            f"duplicates, {result.review} for review, {result.failed} failed (left in place)")


def report_webhooks(stats: webhooks_dispatch.DispatchStats) -> None:
    """One line on stderr when a webhook dispatch run did something."""
    if stats.claimed:
        err_console.print(f"webhooks: {stats.delivered} delivered, {stats.retrying} to retry, "
                          f"{stats.failed} failed for good", highlight=False)
