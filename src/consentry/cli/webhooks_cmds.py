"""`consentry webhooks ...`: outbound webhook endpoints, their delivery log, sending now."""

from __future__ import annotations

from typing import Annotated

import typer

from consentry.cli.common import Ctx, command, out_console, print_json, table
from consentry.webhooks import dispatch
from consentry.webhooks import service as webhooks

app = typer.Typer(no_args_is_help=True,
                  help="Outbound webhooks: consent changes sent, signed, to other systems.")


@command(app, "add")
def add(ctx: Ctx, url: str,
        events: Annotated[list[str] | None, typer.Option(
            "--events", help="Event kinds: opt_out, opt_in, subscription, quarantine, "
                             "suppression, erasure (comma-separated or repeated), or * for "
                             "all (the default).")] = None,
        inactive: Annotated[bool, typer.Option(
            "--inactive", help="Create it switched off.")] = False) -> None:
    """Add an endpoint; prints its signing secret, which is shown this once."""
    with ctx.begin() as conn:
        endpoint_id, secret = webhooks.create_endpoint(
            conn, url, events or [webhooks.ALL], ctx.origin().actor or "", active=not inactive)
        endpoint = webhooks.get_endpoint(conn, endpoint_id)
    ctx.emit({**endpoint, "secret": secret}, lambda: out_console.print(
        f"webhook {endpoint_id} -> {endpoint['url']} ({', '.join(endpoint['events'])})\n"
        f"signing secret: {secret}\nKeep it now: it is not shown again.", highlight=False,
        soft_wrap=True))


@command(app, "list")
def list_endpoints(ctx: Ctx) -> None:
    """Endpoints with their events and delivery counts (secrets are not shown)."""
    with ctx.begin() as conn:
        rows = webhooks.list_endpoints(conn)
    ctx.emit(rows, lambda: table("webhook endpoints", [
        "id", "url", "events", "active", "pending", "delivered", "failed"], [[
            r["id"], r["url"], ", ".join(r["events"]), "yes" if r["active"] else "no",
            r["deliveries"]["pending"], r["deliveries"]["delivered"],
            r["deliveries"]["failed"]] for r in rows]))


@command(app, "remove")
def remove(ctx: Ctx, endpoint_id: int) -> None:
    """Delete an endpoint and its delivery log."""
    with ctx.begin() as conn:
        webhooks.delete_endpoint(conn, endpoint_id, ctx.origin().actor or "")
    ctx.emit({"id": endpoint_id, "removed": True},
             lambda: out_console.print(f"webhook {endpoint_id} removed"))


@command(app, "enable")
def enable(ctx: Ctx, endpoint_id: int) -> None:
    """Switch an endpoint on (again)."""
    _set_active(ctx, endpoint_id, True)


@command(app, "disable")
def disable(ctx: Ctx, endpoint_id: int) -> None:
    """Switch an endpoint off: no new deliveries, the pending ones wait, the log stays."""
    _set_active(ctx, endpoint_id, False)


def _set_active(ctx: Ctx, endpoint_id: int, active: bool) -> None:
    with ctx.begin() as conn:
        endpoint = webhooks.update_endpoint(conn, endpoint_id, ctx.origin().actor or "",
                                            active=active)
    ctx.emit(endpoint, lambda: out_console.print(
        f"webhook {endpoint_id} {'enabled' if active else 'disabled'}"))


@command(app, "log")
def log(ctx: Ctx,
        endpoint_id: Annotated[int | None, typer.Argument(
            help="Only this endpoint's deliveries.")] = None,
        state: Annotated[str | None, typer.Option(
            "--state", help="pending, delivered or failed.")] = None,
        limit: Annotated[int, typer.Option("--limit")] = 50,
        before: Annotated[int | None, typer.Option(
            "--before", help="Continue with deliveries older than this id.")] = None) -> None:
    """The delivery log, newest first (JSON lines with --json)."""
    with ctx.begin() as conn:
        rows = webhooks.deliveries(conn, endpoint_id, before=before, limit=max(limit, 1),
                                   state=state)
    if ctx.json:
        for row in rows:
            print_json(row)
        return
    table("webhook deliveries", ["id", "endpoint", "type", "state", "attempts", "last status",
                                 "last error", "next attempt", "delivered"],
          [[r["id"], r["endpoint_id"], r["type"], r["state"], r["attempts"], r["last_status"],
            r["last_error"], r["next_attempt_at"] if r["state"] == "pending" else None,
            r["delivered_at"]] for r in rows])


@command(app, "deliver")
def deliver(ctx: Ctx) -> None:
    """Send every due delivery now (serve and worker do it every few seconds)."""
    stats = dispatch.deliver_all(ctx.engine)
    ctx.emit(stats.as_json(), lambda: out_console.print(
        f"{stats.delivered} delivered, {stats.retrying} to retry later, {stats.failed} "
        f"failed for good" + (f", {stats.postponed} postponed" if stats.postponed else "")))
