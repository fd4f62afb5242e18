"""`consentry delivery ...`, `consentry explain`, `consentry worker`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from consentry import maintenance
from consentry.cli.common import Ctx, command, err_console, out_console, print_json, table
from consentry.cli.serve_cmd import DeliverySender
from consentry.delivery import sending
from consentry.delivery import service as deliveries
from consentry.delivery.content import Content
from consentry.delivery.content import check as check_content
from consentry.delivery.transports import transport_for
from consentry.domain.channels import parse_channel
from consentry.domain.errors import ConsentryError
from consentry.profiles import service as profiles
from consentry.webhooks import dispatch as webhooks_dispatch

app = typer.Typer(no_args_is_help=True, help="Deliveries: create, analyse, send, report.")



def _read(path: Path | None, option: str) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConsentryError(f"{option} {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConsentryError(f"{option} {path}: not UTF-8 (byte {exc.start})") from None


@command(app, "create")
def create(
    ctx: Ctx,
    name: Annotated[str, typer.Option("--name")],
    channel: Annotated[str, typer.Option("--channel")],
    service: Annotated[str | None, typer.Option("--service", help="Target a service.")] = None,
    audience: Annotated[str | None, typer.Option(
        "--audience", help="all, or service (default with --service).")] = None,
    where: Annotated[list[str] | None, typer.Option(
        "--where", help="FIELD=VALUE filter on locale, first_name, last_name, external_id "
                        "or attr.NAME; may be repeated.")] = None,
    proof: Annotated[list[str] | None, typer.Option(
        "--proof", help="Send only to this seed/test address; may be repeated.")] = None,
    kind: Annotated[str, typer.Option("--kind", help="marketing or transactional.")]
    = "marketing",
    subject: Annotated[str | None, typer.Option("--subject", help="Email subject or push "
                                                                  "title.")] = None,
    text: Annotated[Path | None, typer.Option("--text", help="Text template file.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="HTML template file.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Random cap on recipients.")]
    = None,
    fatigue_max: Annotated[int | None, typer.Option("--fatigue-max")] = None,
    fatigue_days: Annotated[int | None, typer.Option("--fatigue-days")] = None,
) -> None:
    """Create a delivery; its content is checked at once."""
    filters = []
    for item in where or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConsentryError(f"--where {item!r}: expected FIELD=VALUE")
        filters.append((key.strip(), value))
    chosen = audience or ("proof" if proof else "filter" if filters and not service
                          else "service" if service else "all")
    new = deliveries.NewDelivery(
        name=name, channel=parse_channel(channel), kind=kind, service=service,
        audience=chosen, audience_filter=tuple(filters), proof_addresses=tuple(proof or ()),
        target_limit=limit, fatigue_max=fatigue_max, fatigue_days=fatigue_days,
        content=Content(subject=subject, text=_read(text, "--text"),
                        html=_read(html, "--html")))
    with ctx.begin() as conn:
        delivery_id = deliveries.create(conn, ctx.settings, new, ctx.origin().actor)
    data: dict = {"id": delivery_id}
    checked = check_content(new.content, channel=new.channel.value, marketing=kind == "marketing")
    if checked.sms:
        data["sms"] = {"encoding": checked.sms.encoding, "units": checked.sms.units,
                       "segments": checked.sms.segments}
    ctx.emit(data, lambda: out_console.print(
        f"delivery {delivery_id} created" + (
            f"; the SMS is {checked.sms.units} {checked.sms.encoding} characters in "
            f"{checked.sms.segments} segment(s)" if checked.sms else "")))


@command(app, "analyze")
def analyze(ctx: Ctx, delivery_id: int) -> None:
    """Build the target: exclusion causes per rule, in order, and what is left to send."""
    result = deliveries.analyze(ctx.engine, ctx.settings, delivery_id)
    ctx.emit(result, lambda: _print_analysis(result))


def _print_analysis(r: dict) -> None:
    table(f"delivery {r['delivery']}: {r['audience']} in the audience, {r['to_send']} to send",
          ["exclusion cause", "profiles"], [[k, v] for k, v in r["excluded"].items()])


@command(app, "send")
def send(ctx: Ctx, delivery_id: int,
         workers: Annotated[int, typer.Option("--workers", help="Parallel claim-send loops.")]
         = 1) -> None:
    """Send an analysed delivery; resumes where it stopped."""
    with ctx.begin() as conn:
        delivery = deliveries.get(conn, delivery_id)
        total = deliveries.summary(conn, delivery_id)["to_send"]
    transport = transport_for(delivery["channel"], ctx.settings)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), console=err_console,
                  disable=ctx.json) as bar:
        task = bar.add_task(f"delivery {delivery_id}", total=total or None, info="")

        def progress(stats: sending.SendStats) -> None:
            done = stats.sent + stats.failed + stats.excluded_at_send
            bar.update(task, completed=done, info=(
                f"sent {stats.sent} failed {stats.failed} excluded {stats.excluded_at_send} "
                f"{stats.rate:.0f}/s"))

        stats = sending.send(ctx.engine, ctx.settings, delivery_id, transport, loops=workers,
                             progress=progress)
    data = {"delivery": delivery_id, "sent": stats.sent, "failed": stats.failed,
            "excluded_at_send": stats.excluded_at_send, "unknown": stats.unknown,
            "requeued": stats.requeued, "failures": stats.failures}
    ctx.emit(data, lambda: out_console.print(
        f"delivery {delivery_id}: {stats.sent} sent, {stats.failed} failed, "
        f"{stats.excluded_at_send} excluded at send"
        + (f", {stats.unknown} of unknown fate after an earlier crash" if stats.unknown
           else "")))


@command(app, "report")
def report(ctx: Ctx, delivery_id: int) -> None:
    """Counts by state, exclusion causes, failures by reason, throughput, bounce and
    complaint rates."""
    with ctx.begin() as conn:
        data = deliveries.report(conn, delivery_id, ctx.settings.feedback)
    ctx.emit(data, lambda: _print_report(data))


def _print_report(r: dict) -> None:
    out_console.print(f"[bold]delivery {r['delivery']}[/] {r['name']} ({r['channel']}, "
                      f"{r['kind']}): {r['state']}", highlight=False)
    table("by state", ["state", "count"], [[k, v] for k, v in r["states"].items()])
    if r["excluded"]:
        table("exclusion causes", ["reason", "count"], list(map(list, r["excluded"].items())))
    if r["excluded_at_send"]:
        table("excluded at send", ["reason", "count"],
              list(map(list, r["excluded_at_send"].items())))
    if r["failures"]:
        table("failures", ["reason", "count"], list(map(list, r["failures"].items())))
    tp = r["throughput"]
    out_console.print(f"throughput: {tp['sent']} sent in {tp['seconds']} s"
                      + (f" ({tp['per_second']}/s)" if tp["per_second"] else ""))
    fb = r["feedback"]
    out_console.print(f"bounce rate {fb['bounce_rate']:.2%} ({fb['bounces']} of "
                      f"{fb['attempted']}), complaint rate {fb['complaint_rate']:.3%} "
                      f"({fb['complaints']})", highlight=False)
    for alert in fb["alerts"]:
        out_console.print(f"[bold red]{alert['level']}[/]: {alert['metric']} "
                          f"{alert['value']:.3%} is at or over {alert['threshold']:.3%}")


@command(app, "exclusions")
def exclusions(ctx: Ctx, delivery_id: int,
               reason: Annotated[str | None, typer.Option("--reason")] = None,
               after: Annotated[int, typer.Option("--after", help="Row id to continue after.")]
               = 0,
               limit: Annotated[int, typer.Option("--limit")] = 1000) -> None:
    """The exclusion log: one row per excluded recipient (JSON lines with --json)."""
    with ctx.begin() as conn:
        rows = deliveries.exclusion_log(conn, delivery_id, reason=reason, after_id=after,
                                        limit=limit)
    if ctx.json:
        for row in rows:
            print_json(row)
        return
    table(f"{len(rows)} excluded", ["row", "profile", "address", "state", "reason"],
          [[r["id"], r["profile_id"], r["address"], r["state"], r["reason"]] for r in rows])


def explain(ctx: Ctx, ref: str, delivery_id: int) -> None:
    """Each rule in order for one profile and one delivery, and the verdict."""
    with ctx.begin() as conn:
        pid = profiles.resolve(conn, ref, ctx.settings.default_region)
        data = deliveries.explain(conn, ctx.settings, pid, delivery_id)
    ctx.emit(data, lambda: _print_explain(data))


def _print_explain(d: dict) -> None:
    mark = {True: "pass", False: "FAIL", None: "not analysed"}
    table(f"profile {d['profile']} and delivery {d['delivery']} ({d['channel']}: "
          f"{d['address'] or 'no address'})", ["rule", "result"],
          [[r["rule"], mark[r["passed"]]] for r in d["rules"]])
    out_console.print(f"verdict: {d['verdict']}" + (f" ({d['reason']})" if d["reason"] else ""))


def worker(ctx: Ctx, poll: Annotated[float, typer.Option(
        "--poll", help="Seconds between looks for work.")] = 2.0,
           once: Annotated[bool, typer.Option("--once", help="Stop when no work is left.")]
           = False) -> None:
    """Send deliveries that are in state `sending` (several workers may share PostgreSQL),
    send the due outbound webhooks, and run the periodic maintenance: expired subscriptions,
    time-based quarantine releases."""
    last_maintenance = 0.0
    sender = DeliverySender(ctx.engine, ctx.settings)
    while True:
        if time.monotonic() - last_maintenance >= maintenance.EVERY:
            expired, released = maintenance.run(ctx.engine, ctx.settings)
            if expired or released:
                err_console.print(f"{expired} subscriptions expired, {released} addresses "
                                  "released")
            last_maintenance = time.monotonic()
        ids = sender.step()
        try:
            hooks = webhooks_dispatch.step(ctx.engine)
        except Exception as exc:  # reported; tried again at the next look
            err_console.print(f"webhook dispatch failed (tried again later): {exc}",
                              highlight=False)
            hooks = webhooks_dispatch.DispatchStats()
        if hooks.claimed:
            err_console.print(f"webhooks: {hooks.delivered} delivered, {hooks.retrying} to "
                              f"retry, {hooks.failed} failed for good", highlight=False)
        if once and not ids and not hooks.claimed:
            return
        time.sleep(poll)
