"""`consentry sms ...`: inbound SMS processed as the webhooks would."""

from __future__ import annotations

from typing import Annotated

import typer

from consentry.cli.common import Ctx, command, out_console
from consentry.sms.service import handle_inbound

app = typer.Typer(no_args_is_help=True, help="Inbound SMS (STOP / START / HELP keywords).")


@command(app, "inbound")
def inbound(
    ctx: Ctx,
    from_number: Annotated[str, typer.Option("--from", help="The number that sent it.")],
    to_number: Annotated[str, typer.Option("--to", help="Our sender number or short code.")],
    text: Annotated[str, typer.Option("--text", help="The message text.")],
) -> None:
    """Process one inbound SMS as the webhook would: store it, apply its keyword, print the
    reply (it is not sent from here)."""
    with ctx.begin() as conn:
        result = handle_inbound(conn, ctx.settings, from_number=from_number,
                                to_number=to_number, text=text, via="cli")

    def human() -> None:
        said = f"{result.from_number}: {result.action.value}"
        if result.changed:
            said += " (applied)"
        if result.problem:
            said += f" ({result.problem})"
        out_console.print(said, highlight=False)
        out_console.print(f"reply: {result.reply}" if result.reply else "no reply",
                          highlight=False)

    ctx.emit(result.as_json(), human)
