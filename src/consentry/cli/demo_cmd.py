"""`consentry demo`: the embedded default with demo data, what to try, and the running app.

After building the data (once per database) the demo starts what `serve` starts (the web app
under uvicorn, the background maintenance) plus an embedded outbox: a local SMTP server
(consentry.web.outbox) that keeps every message the demo sends, shown at /demo/outbox. The web
app's relay is that outbox, whatever CONSENTRY_SMTP_URL says, and the SMS and push connectors
are off: demo mail and texts never leave the machine. Ctrl-C (or SIGTERM) stops everything.
`--no-serve` only builds the data and prints the tips.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.panel import Panel

from consentry.cli.common import Ctx, err_console, out_console
from consentry.domain.errors import ConsentryError
from consentry.settings import Settings
from consentry.store.engine import upgrade
from consentry.store.schema import meta, profiles

DEMO_MARKER = "demo_built"
# The double opt-in service the printed landing page subscribes to, and the profile whose
# preference center link is printed (the demo's hand-made "subscribed" example).
LANDING_SERVICE = "newsletter"
SHOWCASE_PROFILE = "jonas.becker@example.de"


def demo(ctx: Ctx, profiles_count: Annotated[int, typer.Option(
        "--profiles", help="How many demo profiles.")] = 3000,
         host: Annotated[str, typer.Option("--host", help="Address the web app listens on.")]
         = "127.0.0.1",
         port: Annotated[int, typer.Option("--port", help="Port of the web app.")] = 8000,
         outbox_port: Annotated[int, typer.Option(
             "--outbox-port", help="Port of the demo outbox's SMTP server (default: a free "
                                   "one).")] = 0,
         serve: Annotated[bool, typer.Option(
             "--serve/--no-serve", help="Start the web app and the outbox after building the "
                                        "data (default), or only build it.")] = True) -> None:
    """Create the database with a few thousand demo profiles, print what to try, and start the
    web app with an embedded outbox that keeps every message the demo sends."""
    from consentry.demo import build_demo

    engine = ctx.raw_engine()
    upgrade(engine)
    with engine.connect() as conn:
        built = conn.execute(sa.select(meta.c.value).where(meta.c.key == DEMO_MARKER)).scalar()
        count = conn.execute(sa.select(sa.func.count()).select_from(profiles)).scalar_one()
    if built is None and count:
        raise ConsentryError(f"{ctx.settings.database_url} holds {count} profiles that are not "
                             "demo data: run the demo in an empty directory or with --database")
    if built is None:
        with out_console.status("building demo data..."):
            summary = build_demo(engine, ctx.settings, profiles=profiles_count)
        with engine.begin() as conn:
            conn.execute(meta.insert(), {"key": DEMO_MARKER, "value": "1"})
        if ctx.json:
            from dataclasses import asdict

            from consentry.cli.common import print_json

            print_json({"database": ctx.settings.database_url, **asdict(summary)})
            if serve:
                _serve(ctx, host, port, outbox_port)
            return
        out_console.print(
            f"Demo data in {ctx.settings.database_url}: {summary.profiles} profiles, "
            f"{summary.opted_out} opted out of everything, {summary.channel_opted_out} of one "
            f"channel, {summary.quarantined} quarantined and {summary.denylisted} denylisted "
            f"addresses, services {', '.join(summary.services)}, {summary.shared_addresses} "
            "addresses shared by two profiles.", highlight=False)
        examples = summary.examples
    else:
        out_console.print(f"Demo data is already in {ctx.settings.database_url}.")
        examples = {}
    db = "" if ctx.settings.database_url == "sqlite:///consentry.db" else (
        f" --database {ctx.settings.database_url}")
    ex = examples.get
    tips = [
        f"profiles show {ex('opted_out', '1')}",
        "profiles duplicates",
        f"profiles show {ex('two_profiles', '2')}",
        f"profiles show {ex('two_profiles_other', '3')}",
        "quarantine list --status quarantined --limit 20",
        f"quarantine show {ex('mailbox_full', ex('quarantined', 'ADDRESS'))}",
        "quarantine release --reason user_unknown --domain mail.example.com --dry-run",
        "services list",
        f"ledger show {ex('subscribed', '4')}",
        "ledger verify",
        f"optout {ex('subscribed', '4')} --channel email --note 'asked by phone'",
    ]
    lines = [f"uv run consentry {tip}{db}" for tip in tips]
    out_console.print(Panel("\n".join(lines), title="try", expand=False), highlight=False)
    if serve:
        _serve(ctx, host, port, outbox_port)


def demo_settings(settings: Settings, base_url: str, outbox_url: str) -> Settings:
    """The settings the demo's web app runs with: mail to the outbox, no SMS or push."""
    return replace(settings, base_url=base_url, smtp_url=outbox_url, sms_url=None,
                   push_url=None)


def _showcase(engine: sa.Engine, settings: Settings) -> int | None:
    """The profile whose preference center the demo points to."""
    from consentry.profiles import service as profile_service

    with engine.connect() as conn:
        try:
            return profile_service.resolve(conn, SHOWCASE_PROFILE, settings.default_region)
        except ConsentryError:
            found = conn.execute(sa.select(sa.func.min(profiles.c.id))
                                 .where(profiles.c.email.is_not(None))).scalar()
            return int(found) if found is not None else None


def _serve(ctx: Ctx, host: str, port: int, outbox_port: int) -> None:
    from consentry.cli.serve_cmd import Background, _log_to_stderr, run_web, until_stopped
    from consentry.tokens import Signer
    from consentry.web.app import create_app
    from consentry.web.outbox import Outbox, add_outbox

    engine = ctx.raw_engine()
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    base_url = f"http://{shown_host}:{port}"
    with until_stopped() as stack:
        outbox = Outbox(port=outbox_port)
        try:
            outbox.start()
        except (OSError, RuntimeError) as exc:
            raise ConsentryError(f"the demo outbox could not start: {exc}") from None
        stack.callback(outbox.stop)
        settings = demo_settings(ctx.settings, base_url, outbox.url)
        _log_to_stderr()
        with engine.begin() as conn:
            signer = Signer.for_database(conn, settings)
        app = create_app(settings, engine)
        add_outbox(app, outbox, subscribe_url=f"/s/{LANDING_SERVICE}")
        showcase = _showcase(engine, settings)
        lines = ["Open in a browser:",
                 f"  landing page       {base_url}/s/{LANDING_SERVICE}",
                 f"  outbox             {base_url}/demo/outbox"]
        if showcase is not None:
            lines.append(f"  preference center  {base_url}/p/"
                         f"{signer.preferences_token(showcase)}")
        lines += [f"Every message the demo sends goes to the outbox (SMTP {outbox.host}:"
                  f"{outbox.port}), never to a real mailbox: subscribe on the landing page, open",
                  "the confirmation in the outbox and confirm. Ctrl-C stops the demo."]
        console = err_console if ctx.json else out_console  # --json: stdout holds JSON only
        for line in lines:
            console.print(line, highlight=False, soft_wrap=True)
        background = Background(settings, engine, signer)
        background.start()
        stack.callback(background.stop)
        run_web(app, host, port)  # until Ctrl-C or SIGTERM
    err_console.print("demo stopped")
