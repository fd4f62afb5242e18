"""`consentry feedback ...`: classify and ingest bounce, complaint and unsubscribe mail; the
messages kept for review; bounce and complaint rates."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from consentry.cli import serve_cmd
from consentry.cli.common import (
    Ctx,
    command,
    err_console,
    out_console,
    print_json,
    progress_bar,
    table,
)
from consentry.domain.errors import ConsentryError
from consentry.feedback import imap_poll, sources
from consentry.feedback import ingest as feedback_ingest
from consentry.feedback import rates as feedback_rates
from consentry.feedback import service as feedback
from consentry.feedback.classify import classify as classify_message
from consentry.tokens import Signer

app = typer.Typer(no_args_is_help=True,
                  help="Bounces, complaints and unsubscribe mail: classify, ingest, review.")

Paths = Annotated[list[Path], typer.Argument(help="Message files, mboxes or maildirs.")]

def _messages(paths: list[Path], problems: list[str]) -> list[sources.RawMessage]:
    found: list[sources.RawMessage] = []
    for path in paths:
        try:
            found.extend(sources.read(path))
        except sources.UnreadablePath as exc:
            problems.append(str(exc))
    return found


def _report_problems(problems: list[str]) -> None:
    for problem in problems:
        err_console.print(f"[bold red]error:[/] {problem}")
    if problems:
        raise typer.Exit(1)


@command(app, "classify")
def classify(ctx: Ctx, paths: Paths) -> None:
    """Print one JSON line per message: kind and, per recipient, address, status, class, reason
    and diagnostic. Changes nothing."""
    problems: list[str] = []
    for path in paths:
        try:
            for message in sources.read(path):
                print_json(classify_message(message.raw).to_json(message.source))
        except sources.UnreadablePath as exc:
            problems.append(str(exc))
    _report_problems(problems)


@command(app, "ingest")
def ingest(ctx: Ctx, paths: Paths) -> None:
    """Apply the messages: bounces to quarantine, complaints to the denylist, mail to a
    List-Unsubscribe address to an unsubscribe. The same message twice counts once."""
    problems: list[str] = []
    messages = [feedback_ingest.Message(m.raw, m.source) for m in _messages(paths, problems)]
    with ctx.begin() as conn:
        signer = Signer.for_database(conn, ctx.settings)
    with progress_bar("ingesting") as update:
        totals = feedback_ingest.ingest(ctx.engine, ctx.settings, signer, messages, via="file",
                                        progress=update)
    summary = totals.to_json()
    ctx.emit(summary, lambda: print(
        f"{summary['messages']} messages: {summary['applied']} applied, {summary['ignored']} "
        f"ignored, {summary['review']} kept for review, {summary['duplicates']} seen before; "
        f"{summary['changes']} addresses or consents changed"))
    _report_problems(problems)


@command(app, "review")
def review(ctx: Ctx,
           limit: Annotated[int, typer.Option("--limit", help="At most this many.")] = 50,
           show: Annotated[int | None, typer.Option(
               "--show", help="Print the raw message with this id.")] = None) -> None:
    """Messages kept for review: nothing could be read out of them, or applied."""
    with ctx.begin() as conn:
        if show is not None:
            raw = feedback.raw_message(conn, show)
            typer.echo(raw.decode("utf-8", "replace"))
            return
        rows = feedback.review(conn, limit)
    ctx.emit(rows, lambda: table("kept for review", ["id", "received", "via", "source", "kind"],
                                 [[r["id"], r["received_at"], r["via"], r["source"], r["kind"]]
                                  for r in rows]))


@command(app, "rates")
def rates(ctx: Ctx,
          delivery: Annotated[int | None, typer.Option(
              "--delivery", help="One delivery's rates instead of the daily ones.")] = None,
          days: Annotated[int, typer.Option("--days", help="Days back (daily rates).")] = 14,
          ) -> None:
    """Bounce and complaint rates, per delivery or per day, against the alert thresholds
    (Adobe's 5% bounces; Gmail's 0.1% / 0.3% spam rate)."""
    thresholds = ctx.settings.feedback
    if days < 1:
        raise ConsentryError("--days must be at least 1")
    with ctx.begin() as conn:
        if delivery is not None:
            data = {"delivery": delivery,
                    **feedback_rates.for_delivery(conn, delivery).to_json(thresholds),
                    "thresholds": feedback_rates.thresholds_json(thresholds)}
        else:
            data = {"days": feedback_rates.per_day_json(
                feedback_rates.per_day(conn, days), thresholds),
                "thresholds": feedback_rates.thresholds_json(thresholds)}
    if delivery is not None:
        ctx.emit(data, lambda: table(f"delivery {delivery}", [
            "attempted", "bounces", "bounce rate", "complaints", "complaint rate", "alerts"], [[
                data["attempted"], data["bounces"], f"{data['bounce_rate']:.2%}",
                data["complaints"], f"{data['complaint_rate']:.3%}",
                ", ".join(f"{a['level']}: {a['metric']}" for a in data["alerts"])]]))
    else:
        ctx.emit(data, lambda: table("bounce and complaint rates per day", [
            "day", "attempted", "bounce rate", "complaint rate", "alerts"], [[
                d["day"], d["attempted"], f"{d['bounce_rate']:.2%}",
                f"{d['complaint_rate']:.3%}",
                ", ".join(f"{a['level']}: {a['metric']}" for a in d["alerts"])]
                for d in data["days"]]))


@command(app, "poll-imap")
def poll_imap(ctx: Ctx,
              once: Annotated[bool, typer.Option(
                  "--once/--repeat",
                  help="Poll once (default), or every feedback.imap_every seconds until "
                       "interrupted.")] = True) -> None:
    """Read the bounce mailbox of feedback.imap_url (IMAP over TLS), apply every message and
    move it to feedback.imap_processed_folder; failed messages stay for the next poll."""
    with ctx.begin() as conn:
        signer = Signer.for_database(conn, ctx.settings)
    while True:
        result = imap_poll.poll(ctx.settings, ctx.engine, signer)
        data: dict[str, Any] = result.to_json()
        ctx.emit(data, lambda r=result: out_console.print(serve_cmd.describe_poll(r),
                                                          highlight=False))
        if once:
            return
        try:
            time.sleep(max(ctx.settings.feedback.imap_every, 1.0))
        except KeyboardInterrupt:
            return
