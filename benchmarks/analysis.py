"""Delivery analysis at scale: 1,000,000 profiles on SQLite and PostgreSQL (and 10,000,000 on
PostgreSQL with --large), with the mix issue 3 names: 5% opted out, 2% opted out of email, 3%
quarantined, 1% duplicate addresses, 1% without an address, half subscribed to the service.

    uv run python benchmarks/analysis.py [--profiles N] [--large] [--postgres URL]

Data is generated inside the database (set-based), then `delivery analyze` is timed. Prints a
table; not a test.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from consentry.delivery import service as deliveries
from consentry.delivery.content import Content
from consentry.domain.channels import Channel
from consentry.settings import Settings
from consentry.store.engine import make_engine, upgrade

MAIL = Content(subject="Hi", text="Hello\n{{ unsubscribe_url }}\n")

# Each rule hits a fixed residue class of the profile id, so the mix is exact and overlaps are
# few (the analysis reports only the first failing rule per profile). Profile x = 100k + 1
# shares the address of x - 1 and both are subscribed, so it is the duplicate.
GENERATE = {
    "profiles": """
        INSERT INTO profiles (id, email, email_key, first_name, created_at, updated_at)
        SELECT x,
               CASE WHEN x % 100 = 2 THEN NULL WHEN x % 100 = 1 AND x > 1
                    THEN 'u' || (x - 1) || '@example.com' ELSE 'u' || x || '@example.com' END,
               CASE WHEN x % 100 = 2 THEN NULL WHEN x % 100 = 1 AND x > 1
                    THEN 'u' || (x - 1) || '@example.com' ELSE 'u' || x || '@example.com' END,
               'P' || x, :now, :now
        FROM {seq}""",
    "opt_outs_all": """
        INSERT INTO opt_outs (profile_id, scope, at, source)
        SELECT x, 'all', :now, 'import' FROM {seq} WHERE x % 20 = 3""",
    "opt_outs_email": """
        INSERT INTO opt_outs (profile_id, scope, at, source)
        SELECT x, 'email', :now, 'import' FROM {seq} WHERE x % 50 = 4""",
    "quarantine": """
        INSERT INTO quarantine (channel, address_key, address, domain, status, reason,
                                error_count, created_at, updated_at, status_at, last_error_at)
        SELECT 'email', 'u' || x || '@example.com', 'u' || x || '@example.com', 'example.com',
               'quarantined', 'user_unknown', 1, :now, :now, :now, :now
        FROM {seq} WHERE x % 33 = 5""",
    "subscriptions": """
        INSERT INTO subscriptions (profile_id, service_id, state, state_at, subscribed_at,
                                   created_at)
        SELECT x, 1, 'subscribed', :now, :now, :now FROM {seq}
        WHERE x % 2 = 0 OR x % 100 = 1""",
}


def _seq(dialect: str, n: int) -> str:
    if dialect == "postgresql":
        return f"generate_series(1, {n}) AS g(x)"
    return (f"(WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < {n}) "
            "SELECT x FROM s)")


def generate(engine: sa.Engine, n: int) -> float:
    now = datetime.now(UTC)
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO services (id, slug, label, channel, double_opt_in, "
                             "public, created_at) VALUES (1, 'news', 'News', 'email', "
                             "false, true, :now)"), {"now": now})
        for sql in GENERATE.values():
            conn.execute(sa.text(sql.format(seq=_seq(engine.dialect.name, n))), {"now": now})
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT setval('profiles_id_seq', :n)"), {"n": n})
    # Statistics, and on PostgreSQL a checkpoint, as a database loaded some time before the
    # analysis would have: otherwise the server is still writing the generated data out while
    # the analysis is timed.
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
            conn.execute(sa.text("CHECKPOINT"))
    else:
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
    return time.perf_counter() - started


def measure(engine: sa.Engine, settings: Settings, n: int) -> dict:
    upgrade(engine)
    gen = generate(engine, n)
    with engine.begin() as conn:
        did = deliveries.create(conn, settings, deliveries.NewDelivery(
            name="bench", channel=Channel.EMAIL, service="news", audience="all", content=MAIL),
            None)
    started = time.perf_counter()
    result = deliveries.analyze(engine, settings, did)
    seconds = time.perf_counter() - started
    return {"profiles": n, "generate": gen, "seconds": seconds, "result": result}


def run_sqlite(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        engine = make_engine(url)
        try:
            return measure(engine, Settings(database_url=url), n)
        finally:
            engine.dispose()


def run_postgres(admin_url: str, n: int) -> dict:
    admin = make_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"consentry_bench_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    try:
        return measure(engine, Settings(database_url=url), n)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--large", action="store_true", help="also 10,000,000 on PostgreSQL")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/"
                                               "postgres")
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    console = Console(width=160)
    runs = []
    if not args.skip_sqlite:
        runs.append(("SQLite", run_sqlite(args.profiles), 3.0))
    # The targets: 3 s for a million profiles, 30 s for ten million.
    target = 30.0 if args.profiles >= 10_000_000 else 3.0
    runs.append(("PostgreSQL", run_postgres(args.postgres, args.profiles), target))
    if args.large:
        runs.append(("PostgreSQL", run_postgres(args.postgres, 10_000_000), 30.0))
    table = Table(title="delivery analysis")
    for col in ("database", "profiles", "analysis s", "target s", "profiles/s", "to send",
                "exclusion causes"):
        table.add_column(col)
    for db, r, target in runs:
        causes = ", ".join(f"{k} {v}" for k, v in r["result"]["excluded"].items())
        table.add_row(db, f"{r['profiles']:,}", f"{r['seconds']:.2f}", f"{target:.0f}",
                      f"{r['profiles'] / r['seconds']:,.0f}", f"{r['result']['to_send']:,}",
                      causes)
    console.print(table)


if __name__ == "__main__":
    main()
