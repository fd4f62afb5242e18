"""What every command shares: --database and --json, the engine, output and errors.

Exit codes (contract): 0 success, 1 a user error (message on stderr), 2 bad usage (Typer).
"""

from __future__ import annotations

import functools
import getpass
import inspect
import json
import sys
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from consentry.domain.errors import ConsentryError
from consentry.domain.ledger import Origin, Source
from consentry.settings import Settings, load_settings
from consentry.store.engine import make_engine

err_console = Console(stderr=True, soft_wrap=True)
out_console = Console()


class DatabaseNotReady(ConsentryError):
    pass


@dataclass
class Ctx:
    settings: Settings
    json: bool
    _engine: sa.Engine | None = field(default=None, repr=False)

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = make_engine(self.settings.database_url)
            _require_migrated(self._engine, self.settings.database_url)
        return self._engine

    def raw_engine(self) -> sa.Engine:
        """The engine without the migration check (for `db upgrade` and `demo`)."""
        if self._engine is None:
            self._engine = make_engine(self.settings.database_url)
        return self._engine

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            yield conn

    def origin(self, note: str | None = None, source: str = Source.CLI) -> Origin:
        """Manual actions from the command line are operator actions by the OS user."""
        return Origin(source=source, actor=f"os:{_os_user()}", note=note)

    def emit(self, data: Any, human: Callable[[], None] | None = None) -> None:
        if self.json or human is None:
            print_json(data)
        else:
            human()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _require_migrated(engine: sa.Engine, url: str) -> None:
    try:
        with engine.connect() as conn:
            ready = sa.inspect(conn).has_table("alembic_version")
    except sa.exc.OperationalError as exc:
        raise ConsentryError(f"cannot open the database {url}: {exc.orig}") from None
    if not ready:
        raise DatabaseNotReady(f"the database {url} is not set up: run `consentry db upgrade`")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


DatabaseOption = Annotated[
    str | None,
    typer.Option("--database", help="SQLAlchemy URL (default: CONSENTRY_DATABASE_URL, "
                                    "consentry.toml, or sqlite:///consentry.db)",
                 show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@dataclass
class _Root:
    database: str | None = None
    json: bool = False


ROOT = _Root()


def command(group: typer.Typer, name: str | None = None,
            **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn(ctx: Ctx, ...)` as a command with --database and --json added, and with
    ConsentryError turned into a message on stderr and exit code 1."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        # Resolve the string annotations (from __future__ import annotations) in fn's own
        # module: Typer reads them off the wrapper, whose globals are this module's.
        hints = typing.get_type_hints(fn, include_extras=True)
        signature = inspect.signature(fn)
        params = [p.replace(annotation=hints.get(p.name, p.annotation))
                  for p in list(signature.parameters.values())[1:]]  # drop ctx
        params += [
            inspect.Parameter("database", inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation=DatabaseOption),
            inspect.Parameter("json_output", inspect.Parameter.KEYWORD_ONLY, default=False,
                              annotation=JsonOption),
        ]

        @functools.wraps(fn)
        def wrapper(*args: Any, database: str | None = None, json_output: bool = False,
                    **kw: Any) -> Any:
            ctx = None
            try:
                settings = load_settings(database or ROOT.database)
                ctx = Ctx(settings=settings, json=json_output or ROOT.json)
                return fn(ctx, *args, **kw)
            except ConsentryError as exc:
                err_console.print(Text.assemble(("error: ", "bold red"), str(exc)))
                raise typer.Exit(1) from None
            except sa.exc.OperationalError as exc:
                err_console.print(Text.assemble(("error: ", "bold red"), f"database: {exc.orig}"))
                raise typer.Exit(1) from None
            finally:
                if ctx is not None:
                    ctx.close()

        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=params, return_annotation=None)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        group.command(name, **kwargs)(wrapper)
        return fn

    return decorate


def parse_time(value: str | None, option: str) -> datetime | None:
    """ISO 8601 date or date-time; naive values are taken as UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConsentryError(f"{option}: {value!r} is not an ISO 8601 date or date-time "
                             "(e.g. 2020-12-14 or 2020-12-14T06:00:00Z)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    out_console.print(t)


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A Rich progress bar on stderr; yields a callback(done, total)."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), console=err_console,
                  transient=False) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update
