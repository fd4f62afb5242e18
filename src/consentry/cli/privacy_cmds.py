"""`consentry privacy ...`: GDPR export and erasure."""

from __future__ import annotations

from typing import Annotated

import typer

from consentry.cli.common import Ctx, command, print_json
from consentry.domain.errors import ConsentryError
from consentry.privacy import service as privacy
from consentry.profiles import service as profiles

app = typer.Typer(no_args_is_help=True, help="Data export (Art. 15/20) and erasure (Art. 17).")


@command(app, "export")
def export(ctx: Ctx, ref: str) -> None:
    """Print a profile's data, subscriptions and consent ledger as JSON."""
    with ctx.begin() as conn:
        pid = profiles.resolve(conn, ref, ctx.settings.default_region)
        data = privacy.export(conn, ctx.settings, pid)
    print_json(data)


@command(app, "erase")
def erase(ctx: Ctx, ref: str,
          yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")]
          = False,
          note: Annotated[str | None, typer.Option("--note")] = None) -> None:
    """Delete a profile's personal data; its addresses stay suppressed as keyed hashes."""
    with ctx.begin() as conn:
        pid = profiles.resolve(conn, ref, ctx.settings.default_region)
        if not yes and not typer.confirm(f"Erase profile {pid} for good?", err=True):
            raise ConsentryError("not erased")
        result = privacy.erase(conn, ctx.settings, pid, ctx.origin(note))
    ctx.emit(result, lambda: print(f"profile {pid} erased; {result['suppressed_addresses']} "
                                   "addresses kept as suppression hashes"))
