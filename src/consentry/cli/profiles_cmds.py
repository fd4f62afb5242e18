"""`consentry profiles ...`"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from consentry.cli.common import Ctx, command, out_console, progress_bar, table
from consentry.domain.errors import ConsentryError
from consentry.domain.ledger import Source
from consentry.profiles import service as profiles

app = typer.Typer(no_args_is_help=True, help="People, their addresses and attributes.")


def _attributes(values: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConsentryError(f"--attr {item!r}: expected KEY=VALUE")
        result[key.strip()] = value
    return result


def _push_token(value: str) -> profiles.PushToken:
    # TOKEN or TOKEN:APP_ID or TOKEN:APP_ID:PLATFORM (tokens themselves contain no ':' in FCM's
    # and APNs' formats; a token that does can be given through the CSV import's columns).
    token, _, rest = value.partition(":")
    app_id, _, platform = rest.partition(":")
    return profiles.PushToken(token, app_id, platform.lower())


@command(app, "add")
def add(
    ctx: Ctx,
    email: Annotated[str | None, typer.Option("--email")] = None,
    phone: Annotated[str | None, typer.Option("--phone")] = None,
    first_name: Annotated[str | None, typer.Option("--first-name")] = None,
    last_name: Annotated[str | None, typer.Option("--last-name")] = None,
    locale: Annotated[str | None, typer.Option("--locale")] = None,
    external_id: Annotated[str | None, typer.Option("--external-id")] = None,
    push_token: Annotated[list[str] | None, typer.Option(
        "--push-token", help="TOKEN[:APP_ID[:PLATFORM]]; may be repeated.")] = None,
    attr: Annotated[list[str] | None, typer.Option(
        "--attr", help="Custom attribute KEY=VALUE; may be repeated.")] = None,
) -> None:
    """Create a profile."""
    new = profiles.NewProfile(
        email=email, phone=phone, first_name=first_name, last_name=last_name, locale=locale,
        external_id=external_id, attributes=_attributes(attr or []),
        push_tokens=tuple(_push_token(t) for t in push_token or []))
    with ctx.begin() as conn:
        pid = profiles.create(conn, ctx.settings, new, ctx.origin())
    ctx.emit({"id": pid}, lambda: out_console.print(f"profile {pid} created"))


@command(app, "show")
def show(ctx: Ctx, ref: str) -> None:
    """A profile: opt-outs, subscriptions, addresses with their quarantine state."""
    with ctx.begin() as conn:
        pid = profiles.resolve(conn, ref, ctx.settings.default_region)
        data = profiles.show(conn, ctx.settings, pid)
    ctx.emit(data, lambda: _print_profile(data))


def _print_profile(d: dict[str, Any]) -> None:
    name = " ".join(x for x in (d["first_name"], d["last_name"]) if x) or "(no name)"
    out_console.print(f"[bold]profile {d['id']}[/]  {name}  external id: "
                      f"{d['external_id'] or '-'}  locale: {d['locale'] or '-'}",
                      highlight=False)
    scopes = [c for c, v in d["channels"].items() if v["opted_out"]]
    out_console.print("opted out of everything" if d["opted_out"] else
                      f"opted out of: {', '.join(scopes)}" if scopes else "not opted out",
                      highlight=False)
    table("addresses", ["channel", "address", "status", "reason", "reachable", "shared with"],
          [[a["channel"], a["address"], a["status"], a["reason"],
            "yes" if a["reachable"] else "no",
            ", ".join(map(str, a["shared_with"])) or "-"] for a in d["addresses"]])
    if d["subscriptions"]:
        table("subscriptions", ["service", "state", "since", "expires"],
              [[s["service"], s["state"], s["state_at"], s["expires_at"]]
               for s in d["subscriptions"]])
    if d["attributes"]:
        out_console.print("attributes: " + json.dumps(d["attributes"], ensure_ascii=False),
                          highlight=False)


@command(app, "duplicates")
def duplicates(ctx: Ctx) -> None:
    """Addresses held by more than one profile (opting out one leaves the others reachable;
    quarantine the address to stop them all)."""
    with ctx.begin() as conn:
        rows = profiles.duplicates(conn)
    ctx.emit(rows, lambda: table("addresses held by several profiles",
                                 ["channel", "address", "profiles"],
                                 [[r["channel"], r["address"], ", ".join(map(str, r["profiles"]))]
                                  for r in rows]))


@command(app, "import")
def import_(
    ctx: Ctx, file: Path,
    rejects: Annotated[Path | None, typer.Option("--rejects", help="Write bad rows here.")]
    = None,
    service: Annotated[str | None, typer.Option("--service",
                                                help="Subscribe every imported profile.")]
    = None,
) -> None:
    """Upsert profiles from a CSV file (by external id, else by email)."""
    if not file.is_file():
        raise ConsentryError(f"{file}: no such file")
    from consentry.profiles.csv_io import import_profiles

    with progress_bar(f"importing {file.name}") as progress:
        result = import_profiles(ctx.engine, ctx.settings, file, rejects_path=rejects,
                                 service_slug=service,
                                 origin=ctx.origin(source=Source.IMPORT), progress=progress)
    data = {"imported": result.imported, "updated": result.updated,
            "rejected": result.rejected}
    ctx.emit(data, lambda: out_console.print(
        f"{result.imported} imported, {result.updated} updated, {result.rejected} rejected"
        + (f" (see {rejects})" if rejects and result.rejected else "")))


@command(app, "export")
def export(ctx: Ctx, file: Path) -> None:
    """Write all profiles with their consent columns to a CSV file."""
    from consentry.profiles.csv_io import export_profiles

    with progress_bar(f"exporting to {file.name}") as progress:
        count = export_profiles(ctx.engine, ctx.settings, file, progress=progress)
    ctx.emit({"exported": count, "file": str(file)},
             lambda: out_console.print(f"{count} profiles written to {file}"))
