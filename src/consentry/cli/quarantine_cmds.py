"""`consentry quarantine ...`: platform-wide address state."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from consentry.cli.common import Ctx, command, out_console, parse_time, progress_bar, table
from consentry.domain import quarantine as rules
from consentry.domain.addresses import Address, guess_channel, normalize
from consentry.domain.channels import parse_channel
from consentry.domain.errors import ConsentryError
from consentry.domain.ledger import Source
from consentry.quarantine import service as quarantine
from consentry.quarantine import sql

app = typer.Typer(no_args_is_help=True, help="Quarantined, denylisted and allowlisted addresses.")

ChannelOption = Annotated[str | None, typer.Option(
    "--channel", help="email, sms or push (default: guessed from the address).")]


def _address(ctx: Ctx, raw: str, channel: str | None) -> Address:
    ch = parse_channel(channel) if channel else guess_channel(raw)
    return normalize(ch, raw, ctx.settings.default_region)


@command(app, "add")
def add(
    ctx: Ctx, address: str,
    status: Annotated[str, typer.Option("--status",
                                        help="quarantined, denylisted or allowlisted.")],
    channel: ChannelOption = None,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    note: Annotated[str | None, typer.Option("--note")] = None,
) -> None:
    """Quarantine, denylist or allowlist an address for the whole platform."""
    st = rules.parse_status(status)
    addr = _address(ctx, address, channel)
    with ctx.begin() as conn:
        change = quarantine.set_status(conn, addr, st, reason, ctx.origin(note),
                                       ctx.settings.quarantine)
        data = quarantine.show(conn, addr, ctx.settings.quarantine)
    ctx.emit({**data, "changed": change.changed}, lambda: out_console.print(
        f"{addr.value}: {rules.describe(change.before)} -> {rules.describe(change.after)}",
        highlight=False))


@command(app, "show")
def show(ctx: Ctx, address: str, channel: ChannelOption = None) -> None:
    """An address's state (`valid` when unknown)."""
    addr = _address(ctx, address, channel)
    with ctx.begin() as conn:
        data = quarantine.show(conn, addr, ctx.settings.quarantine)
    ctx.emit(data, lambda: table(None, ["field", "value"], [[k, v] for k, v in data.items()]))


@command(app, "list")
def list_(
    ctx: Ctx,
    status: Annotated[str | None, typer.Option("--status")] = None,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    channel: Annotated[str | None, typer.Option("--channel")] = None,
    domain: Annotated[str | None, typer.Option("--domain")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="At most N entries.")] = None,
) -> None:
    """Addresses that are not valid, newest change first (JSON lines with --json)."""
    st = rules.parse_status(status, allow_valid=True).value if status else None
    ch = parse_channel(channel).value if channel else None
    with ctx.begin() as conn:
        rows = [quarantine.row_json(r) for r in conn.execute(sql.listing(
            status=st, reason=reason, channel=ch, domain=domain, limit=limit)).mappings()]
    if ctx.json:
        from consentry.cli.common import print_json

        for row in rows:
            print_json(row)
        return
    table(f"{len(rows)} addresses", ["address", "channel", "status", "reason", "errors",
                                     "last error", "since"],
          [[r["address"], r["channel"], r["status"], r["reason"], r["error_count"],
            r["last_error_at"], r["status_at"]] for r in rows])


@command(app, "release")
def release(
    ctx: Ctx,
    address: Annotated[str | None, typer.Argument(help="One address to release.")] = None,
    channel: ChannelOption = None,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    domain: Annotated[str | None, typer.Option("--domain")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Status set at or after.")]
    = None,
    until: Annotated[str | None, typer.Option("--until", help="Status set before.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count.")] = False,
    note: Annotated[str | None, typer.Option("--note")] = None,
) -> None:
    """Release one address, or in bulk by reason, domain and time window (the outage case)."""
    bulk = any((reason, domain, since, until))
    if address and bulk:
        raise ConsentryError("give either an ADDRESS or bulk filters (--reason, --domain, "
                             "--since, --until), not both")
    if not address and not bulk:
        raise ConsentryError("give an ADDRESS, or bulk filters --reason/--domain/--since/--until")
    with ctx.begin() as conn:
        if address:
            addr = _address(ctx, address, channel)
            change = quarantine.release(conn, addr, ctx.origin(note), ctx.settings.quarantine)
            data = {"address": addr.value, "channel": addr.channel.value,
                    "status": change.after.status.value, "released": change.changed}
            ctx.emit(data, lambda: out_console.print(
                f"{addr.value}: {rules.describe(change.before)} -> valid", highlight=False))
            return
        count = quarantine.bulk_release(
            conn, ctx.origin(note), ctx.settings.quarantine, reason=reason, domain=domain,
            since=parse_time(since, "--since"), until=parse_time(until, "--until"),
            channel=parse_channel(channel).value if channel else None, dry_run=dry_run)
    ctx.emit({"released": 0 if dry_run else count, "matched": count, "dry_run": dry_run},
             lambda: out_console.print(f"{count} addresses "
                                       + ("would be released" if dry_run else "released")))


@command(app, "import")
def import_(ctx: Ctx, file: Path,
            rejects: Annotated[Path | None, typer.Option("--rejects")] = None) -> None:
    """Import a suppression list (address, channel, status, reason, note)."""
    from consentry.quarantine.csv_import import import_quarantine

    if not file.is_file():
        raise ConsentryError(f"{file}: no such file")
    with progress_bar(f"importing {file.name}") as progress:
        result = import_quarantine(ctx.engine, ctx.settings, file, rejects_path=rejects,
                                   origin=ctx.origin(source=Source.IMPORT), progress=progress)
    ctx.emit({"imported": result.imported, "rejected": result.rejected},
             lambda: out_console.print(f"{result.imported} imported, {result.rejected} rejected"
                                       + (f" (see {rejects})" if rejects and result.rejected
                                          else "")))
