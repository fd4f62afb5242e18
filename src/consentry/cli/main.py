"""The `consentry` command: groups and commands as ../shared/docs/contract.md names them."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from consentry.cli import (
    auth_cmds,
    delivery_cmds,
    demo_cmd,
    feedback_cmds,
    privacy_cmds,
    profiles_cmds,
    quarantine_cmds,
    serve_cmd,
    sms_cmds,
    webhooks_cmds,
)
from consentry.cli.common import ROOT, Ctx, command, err_console, out_console, print_json, table
from consentry.consent import confirmation
from consentry.consent import service as consent
from consentry.domain.channels import parse_channel
from consentry.domain.consent import SubscriptionState
from consentry.domain.errors import ConsentryError
from consentry.ledger import service as ledger
from consentry.maintenance import run as maintenance_run
from consentry.profiles import service as profiles
from consentry.store.engine import upgrade
from consentry.tokens import Signer

app = typer.Typer(name="consentry", no_args_is_help=True, add_completion=False,
                  help="Consent and suppression engine for email, SMS and push.")
db_app = typer.Typer(no_args_is_help=True, help="Create or migrate the database.")
services_app = typer.Typer(no_args_is_help=True, help="Services people subscribe to.")
ledger_app = typer.Typer(no_args_is_help=True, help="The consent ledger.")
app.add_typer(db_app, name="db")
app.add_typer(profiles_cmds.app, name="profiles")
app.add_typer(services_app, name="services")
app.add_typer(quarantine_cmds.app, name="quarantine")
app.add_typer(ledger_app, name="ledger")
app.add_typer(privacy_cmds.app, name="privacy")
app.add_typer(delivery_cmds.app, name="delivery")
app.add_typer(sms_cmds.app, name="sms")
app.add_typer(feedback_cmds.app, name="feedback")
app.add_typer(auth_cmds.operators_app, name="operators")
app.add_typer(auth_cmds.apikeys_app, name="apikeys")
app.add_typer(webhooks_cmds.app, name="webhooks")


@app.callback()
def root(
    database: Annotated[str | None, typer.Option("--database", help="SQLAlchemy URL.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Consentry: it never sends to someone who said no, and it proves every consent it holds."""
    ROOT.database = database
    ROOT.json = json_output


ChannelOption = Annotated[str | None, typer.Option("--channel", help="email, sms or push.")]
NoteOption = Annotated[str | None, typer.Option("--note", help="Why; kept in the ledger.")]


command(app, "demo")(demo_cmd.demo)
command(app, "explain")(delivery_cmds.explain)
command(app, "worker")(delivery_cmds.worker)
command(app, "serve")(serve_cmd.serve)


@command(db_app, "upgrade")
def db_upgrade(ctx: Ctx) -> None:
    """Create the database or migrate it to the current schema."""
    upgrade(ctx.raw_engine())
    ctx.emit({"database": ctx.settings.database_url, "status": "up to date"},
             lambda: out_console.print(f"{ctx.settings.database_url}: up to date"))


def _consent_change(ctx: Ctx, ref: str, channel: str | None, note: str | None, *,
                    opt_out: bool) -> None:
    ch = parse_channel(channel) if channel else None
    change = consent.opt_out if opt_out else consent.opt_in
    with ctx.begin() as conn:
        pid = profiles.resolve(conn, ref, ctx.settings.default_region)
        changed = change(conn, pid, ch, ctx.origin(note))
    scope = ch.value if ch else "all"
    what = "everything" if ch is None else scope
    said = (f"opted out of {what}" + ("" if changed else " (already was)") if opt_out
            else f"opted back in to {what}" + ("" if changed else " (was not opted out)"))
    ctx.emit({"profile": pid, "scope": scope, "opted_out": opt_out, "changed": changed},
             lambda: out_console.print(f"profile {pid}: {said}"))


@command(app, "optout")
def optout(ctx: Ctx, ref: str, channel: ChannelOption = None, note: NoteOption = None) -> None:
    """Opt a profile out of everything, or of one channel with --channel."""
    _consent_change(ctx, ref, channel, note, opt_out=True)


@command(app, "optin")
def optin(ctx: Ctx, ref: str, channel: ChannelOption = None, note: NoteOption = None) -> None:
    """Undo an opt-out of everything, or of one channel with --channel."""
    _consent_change(ctx, ref, channel, note, opt_out=False)


@command(services_app, "create")
def services_create(
    ctx: Ctx, slug: str,
    channel: Annotated[str, typer.Option("--channel", help="email, sms or push.")],
    label: Annotated[str, typer.Option("--label", help="Name shown to people.")],
    double_opt_in: Annotated[bool, typer.Option("--double-opt-in")] = False,
    validity_days: Annotated[int | None, typer.Option("--validity-days")] = None,
) -> None:
    """Create a service (a newsletter, an SMS alert list)."""
    with ctx.begin() as conn:
        service = consent.create_service(conn, slug, parse_channel(channel), label,
                                         double_opt_in=double_opt_in,
                                         validity_days=validity_days)
    ctx.emit(service.as_json(), lambda: out_console.print(f"service {slug} created"))


@command(services_app, "list")
def services_list(ctx: Ctx) -> None:
    """Services with their subscription counts."""
    with ctx.begin() as conn:
        rows = consent.list_services(conn)
    ctx.emit(rows, lambda: table("services", [
        "slug", "label", "channel", "double opt-in", "validity",
        *(s.value for s in SubscriptionState)], [[
            r["slug"], r["label"], r["channel"], "yes" if r["double_opt_in"] else "no",
            f"{r['validity_days']} days" if r["validity_days"] else "-",
            *(r["subscriptions"][s.value] for s in SubscriptionState)] for r in rows]))


@command(app, "subscribe")
def subscribe(ctx: Ctx, ref: str, slug: str,
              confirmed: Annotated[bool, typer.Option(
                  "--confirmed", help="Consent was confirmed already (skip double opt-in).")]
              = False, note: NoteOption = None) -> None:
    """Subscribe a profile to a service; double opt-in services leave it pending and send
    the confirmation message (again, if it was pending already)."""
    with ctx.begin() as conn:
        pid = profiles.resolve(conn, ref, ctx.settings.default_region)
        service = consent.get_service(conn, slug)
        result = consent.subscribe(conn, pid, service, ctx.origin(note), confirmed=confirmed)
        signer = Signer.for_database(conn, ctx.settings)
    data = {"profile": pid, "service": slug, "state": result.state.value,
            "changed": result.changed, "needs_confirmation": result.needs_confirmation}
    sent = None
    if result.state is SubscriptionState.PENDING:
        # After the commit: no row stays locked while the relay answers.
        sent = confirmation.send_confirmation(ctx.engine, ctx.settings, signer, pid, service)
        data["confirmation_sent"] = sent.sent
        if not sent.sent:
            err_console.print(f"warning: the confirmation was not sent: {sent.detail}")
    ctx.emit(data, lambda: out_console.print(
        f"profile {pid}: {slug} {result.state.value}"
        + ("" if result.changed else " (unchanged)")
        + ("; confirmation sent" if sent and sent.sent else "")))


@command(app, "unsubscribe")
def unsubscribe(ctx: Ctx, ref: str, slug: str, note: NoteOption = None) -> None:
    """Unsubscribe a profile from a service."""
    with ctx.begin() as conn:
        pid = profiles.resolve(conn, ref, ctx.settings.default_region)
        result = consent.unsubscribe(conn, pid, consent.get_service(conn, slug),
                                     ctx.origin(note))
    ctx.emit({"profile": pid, "service": slug, "state": result.state.value,
              "changed": result.changed},
             lambda: out_console.print(f"profile {pid}: {slug} {result.state.value}"
                                       + ("" if result.changed else " (unchanged)")))


@command(app, "maintenance")
def maintenance(ctx: Ctx, every: Annotated[float | None, typer.Option(
        "--every", help="Repeat every N seconds until interrupted (the periodic task).")]
        = None) -> None:
    """End expired subscriptions and apply due quarantine releases (10 quiet days for
    erroneous addresses, 30 days for mailbox-full quarantines)."""
    while True:
        expired, released = maintenance_run(ctx.engine, ctx.settings)
        ctx.emit({"expired_subscriptions": expired, "released_addresses": released},
                 lambda e=expired, r=released: out_console.print(
                     f"{e} subscriptions expired, {r} addresses released"))
        if every is None:
            return
        time.sleep(max(every, 1.0))


@command(ledger_app, "show")
def ledger_show(ctx: Ctx, ref: str) -> None:
    """A profile's consent history, oldest first."""
    with ctx.begin() as conn:
        pid = profiles.resolve(conn, ref, ctx.settings.default_region)
        profile = profiles.get(conn, pid)
        events = ledger.history(conn, pid, [a.key for a in profiles.addresses_of(conn, profile)])
    if ctx.json:
        print_json(events)
        return
    table(f"consent history of profile {pid}",
          ["at", "kind", "channel", "service", "change", "source", "actor", "note"],
          [[e["at"], e["kind"], e["channel"], e["service"],
            f"{e['old_state'] or '-'} -> {e['new_state'] or '-'}", e["source"], e["actor"],
            e["note"]] for e in events])


@command(ledger_app, "verify")
def ledger_verify(ctx: Ctx) -> None:
    """Check the whole ledger's hash chains; exit 1 naming the first bad event."""
    with ctx.begin() as conn:
        result = ledger.verify(conn)
    if result.ok:
        ctx.emit({"ok": True, "events": result.events},
                 lambda: out_console.print(f"ledger verifies: {result.events} events"))
        return
    assert result.problem is not None
    problem = result.problem
    if ctx.json:
        print_json({"ok": False, "events": result.events, "event": problem.event_id,
                    "partition": problem.partition, "seq": problem.seq, "why": problem.why})
    raise ConsentryError(f"ledger does not verify: {problem}")


def run() -> None:
    app()


@app.command("version", hidden=True)
def version() -> None:
    from importlib.metadata import version as v

    out_console.print(v("consentry"))

