"""Engines for the two supported databases, and the migration entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from consentry.domain.errors import ConsentryError

MIGRATIONS = Path(__file__).with_name("migrations")


def normalize_url(url: str) -> str:
    """Accept plain `postgresql://` and `postgres://` URLs and use psycopg 3 for them."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # autocommit at the driver level: SQLAlchemy's "begin" event below issues BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    # BEGIN IMMEDIATE takes the write lock up front: a deferred transaction that reads and then
    # writes fails at once with SQLITE_BUSY when another writer got in between, whereas this
    # one waits (busy_timeout) for its turn.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, **kwargs: Any) -> sa.Engine:
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise ConsentryError(f"not a database URL: {url!r}") from None
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_connect)
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    if parsed.get_backend_name() == "postgresql":
        # No pre-ping: it costs a round trip on every checkout, a tenth of a one-click
        # request. A connection the server dropped fails its request once; SQLAlchemy then
        # recognises the disconnect and replaces the pool's connections.
        return sa.create_engine(url, **kwargs)
    raise ConsentryError(f"unsupported database {parsed.get_backend_name()!r}: "
                         "use sqlite:///FILE or postgresql+psycopg://USER@HOST/DB")


def alembic_config(engine: sa.Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)
