"""`consentry demo`: the embedded default with demo data, and what to try."""

from __future__ import annotations

from typing import Annotated

import sqlalchemy as sa
import typer
from rich.panel import Panel

from consentry.cli.common import Ctx, out_console
from consentry.domain.errors import ConsentryError
from consentry.store.engine import upgrade
from consentry.store.schema import meta, profiles

DEMO_MARKER = "demo_built"


def demo(ctx: Ctx, profiles_count: Annotated[int, typer.Option(
        "--profiles", help="How many demo profiles.")] = 3000) -> None:
    """Create the database with a few thousand demo profiles and print what to try."""
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
