"""`consentry operators ...` and `consentry apikeys ...`: who may use the console and the API."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from consentry.auth import service as auth
from consentry.cli.common import Ctx, command, out_console, table

operators_app = typer.Typer(no_args_is_help=True, help="People who use the console.")
apikeys_app = typer.Typer(no_args_is_help=True, help="Keys for the REST API.")

RoleOption = Annotated[str, typer.Option("--role", help="admin, operator or viewer.")]


@command(operators_app, "create")
def create_operator(ctx: Ctx, login: str, role: RoleOption) -> None:
    """Create an operator; the password is read from stdin (one line)."""
    password = sys.stdin.readline().rstrip("\r\n")
    with ctx.begin() as conn:
        operator_id = auth.create_operator(conn, login, password, role, ctx.origin().actor or "")
    ctx.emit({"id": operator_id, "login": login, "role": role.lower()},
             lambda: out_console.print(f"operator {login} ({role.lower()}) created"))


@command(operators_app, "list")
def list_operators(ctx: Ctx) -> None:
    with ctx.begin() as conn:
        rows = auth.list_operators(conn)
    ctx.emit(rows, lambda: table("operators", ["id", "login", "role", "last login", "disabled"],
                                 [[r["id"], r["login"], r["role"], r["last_login_at"],
                                   r["disabled_at"]] for r in rows]))


@command(apikeys_app, "create")
def create_key(ctx: Ctx, name: str, role: RoleOption) -> None:
    """Create an API key and print it: it is shown this once, only its hash is kept."""
    with ctx.begin() as conn:
        key_id, key = auth.create_api_key(conn, name, role, ctx.origin().actor or "")
    ctx.emit({"id": key_id, "name": name, "role": role.lower(), "key": key},
             lambda: out_console.print(f"API key {name} ({role.lower()}): {key}\n"
                                       "Keep it now: it is not shown again.", highlight=False))


@command(apikeys_app, "list")
def list_keys(ctx: Ctx) -> None:
    with ctx.begin() as conn:
        rows = auth.list_api_keys(conn)
    ctx.emit(rows, lambda: table("API keys", ["id", "name", "prefix", "role", "revoked"],
                                 [[r["id"], r["name"], r["prefix"], r["role"], r["revoked_at"]]
                                  for r in rows]))


@command(apikeys_app, "revoke")
def revoke_key(ctx: Ctx, key_id: int) -> None:
    with ctx.begin() as conn:
        revoked = auth.revoke_api_key(conn, key_id, ctx.origin().actor or "")
    said = "revoked" if revoked else "was revoked already, or is unknown"
    ctx.emit({"id": key_id, "revoked": revoked},
             lambda: out_console.print(f"key {key_id} {said}"))
