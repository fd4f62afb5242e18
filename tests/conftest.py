"""Fixtures: every storage test runs against SQLite and PostgreSQL.

PostgreSQL: CONSENTRY_TEST_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/
postgres) names a server; each test session creates its own database there and drops it at the
end. When the server cannot be reached the PostgreSQL tests are skipped, except with CI=true,
where the run fails loudly instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from consentry.domain.ledger import GENESIS, PARTITIONS
from consentry.settings import Settings
from consentry.store.engine import make_engine, upgrade
from consentry.store.schema import ledger_heads, metadata

PG_ADMIN_URL = os.environ.get("CONSENTRY_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _pg_admin() -> sa.Engine | None:
    engine = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is unreachable and CI=true: {exc}",
                        pytrace=False)
        return None
    return engine


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str | None]:
    admin = _pg_admin()
    if admin is None:
        yield None
        return
    name = f"consentry_test_{os.getpid()}_{secrets.token_hex(3)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies (migrating per test would be slow)."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()  # closing the last connection checkpoints the WAL into the file
    assert not path.with_name(path.name + "-wal").exists()
    return path


def _truncate_all(engine: sa.Engine) -> None:
    tables = [t.name for t in reversed(metadata.sorted_tables)]
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        conn.execute(ledger_heads.insert(), [{"partition": p, "seq": 0, "hash": GENESIS}
                                             for p in range(PARTITIONS)])


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated, empty database of each kind; the URL is what the CLI takes."""
    if request.param == "sqlite":
        path = tmp_path / "consentry.db"
        path.write_bytes(sqlite_template.read_bytes())
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_url")
    if url is None:
        pytest.skip("PostgreSQL is not reachable (set CI=true to make this fail)")
    engine = make_engine(url)
    _truncate_all(engine)
    engine.dispose()
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database_url=db_url)


@pytest.fixture
def pg_engine(pg_url: str | None) -> Iterator[sa.Engine]:
    """An empty PostgreSQL database, for tests of what only PostgreSQL does (row locks,
    concurrent writers)."""
    if pg_url is None:
        pytest.skip("PostgreSQL is not reachable (set CI=true to make this fail)")
    engine = make_engine(pg_url)
    _truncate_all(engine)
    yield engine
    engine.dispose()
