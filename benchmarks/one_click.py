"""RFC 8058 one-click unsubscription under load: `consentry serve` on SQLite and on PostgreSQL,
driven by wrk from a separate process.

    uv run python benchmarks/one_click.py [--profiles N] [--duration S] [--connections C]
                                          [--workers W] [--postgres ADMIN_URL] [--only sqlite]

For each database: a fresh one (a temp SQLite file; a PostgreSQL database created on the server
of ADMIN_URL and dropped afterwards), N profiles subscribed to `news` made set-based, a
marketing delivery for `news`, and one signed unsubscribe token per profile. The server runs in
a subprocess (`consentry serve`, or with --workers W > 1 uvicorn with W worker processes on the
same app, since `serve` has no --workers option); wrk POSTs `List-Unsubscribe=One-Click` to
/u/{token}, each token once, for the duration at a fixed number of connections. Needs wrk
(`apt-get install wrk`).

Prints requests/s, p50/p90/p99 latency, errors, the server's CPU time per request (all its
processes, from /proc: a figure that other load on the machine disturbs less than throughput),
and the ledger events written. Every request
that completed with 200 changed a subscription, so the one_click ledger events must number at
least the successful requests, and at most that plus the requests still in flight when wrk
stopped (at most one per connection); the subscriptions left `unsubscribed` must equal the
events, and the ledger must verify. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import sqlalchemy as sa
from common import ROOT, free_port
from rich.console import Console
from rich.table import Table

from consentry.delivery import service as deliveries
from consentry.delivery.content import Content
from consentry.domain.channels import Channel
from consentry.ledger import service as ledger
from consentry.settings import Settings
from consentry.store.engine import make_engine, upgrade
from consentry.tokens import Signer

MAIL = Content(subject="News", text="Hello\n{{ unsubscribe_url }}\n")
PG_ADMIN = os.environ.get("CONSENTRY_TEST_POSTGRES_URL",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

# Each wrk thread takes every n-th token (its own share) and POSTs each once; when its share is
# used up it stops. done() prints the summary as one JSON line.
LUA = r"""
-- `ok` and `id` are globals: the main state reads and sets them with thread:get/set.
ok = 0
local tokens, counter = {}, 0
local threads = {}
local thread_count = tonumber(os.getenv("ONE_CLICK_THREADS"))
local index = 0

function setup(thread)
  thread:set("id", index)
  index = index + 1
  table.insert(threads, thread)
end

function init(args)
  local i = 0
  for line in io.lines(os.getenv("ONE_CLICK_TOKENS")) do
    if i % thread_count == id then table.insert(tokens, line) end
    i = i + 1
  end
  wrk.method = "POST"
  wrk.body = "List-Unsubscribe=One-Click"
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  wrk.headers["User-Agent"] = "one-click-benchmark"
end

function request()
  counter = counter + 1
  if counter > #tokens then
    wrk.thread:stop()
    counter = #tokens
  end
  return wrk.format(nil, "/u/" .. tokens[counter])
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1 end
end

function done(summary, latency, requests)
  local ok_total = 0
  for _, thread in ipairs(threads) do ok_total = ok_total + thread:get("ok") end
  io.write("JSON ", string.format(
    '{"requests": %d, "duration_us": %d, "ok": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}',
    summary.requests, summary.duration, ok_total, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max), "\n")
end
"""


@dataclass
class Run:
    database: str
    workers: int
    connections: int
    requests: int
    ok: int
    errors: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu_ms: float  # the server's CPU time per request
    events: int
    unsubscribed: int
    verified: bool


def seed(engine: sa.Engine, settings: Settings, n: int) -> int:
    """n profiles u1..un@isp.example subscribed to `news` (set-based); a marketing delivery."""
    now = datetime.now(UTC)
    if engine.dialect.name == "postgresql":
        seq = f"generate_series(1, {n}) AS g(x)"
    else:
        seq = (f"(WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < {n}) "
               "SELECT x FROM s)")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO services (id, slug, label, channel, double_opt_in, "
                             "public, created_at) VALUES (1, 'news', 'News', 'email', false, "
                             "true, :now)"), {"now": now})
        conn.execute(sa.text(
            "INSERT INTO profiles (id, email, email_key, first_name, created_at, updated_at) "
            f"SELECT x, 'u' || x || '@isp.example', 'u' || x || '@isp.example', 'P' || x, "
            f":now, :now FROM {seq}"), {"now": now})
        conn.execute(sa.text(
            "INSERT INTO subscriptions (profile_id, service_id, state, state_at, subscribed_at, "
            f"created_at) SELECT x, 1, 'subscribed', :now, :now, :now FROM {seq}"),
            {"now": now})
        if engine.dialect.name == "postgresql":
            for table in ("profiles", "services"):
                conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                     f"(SELECT max(id) FROM {table}))"))
            conn.execute(sa.text("ANALYZE"))
        return deliveries.create(conn, settings, deliveries.NewDelivery(
            name="bench", channel=Channel.EMAIL, service="news", content=MAIL), None)


def write_tokens(engine: sa.Engine, settings: Settings, delivery: int, n: int,
                 path: Path) -> None:
    with engine.begin() as conn:
        signer = Signer.for_database(conn, settings)
    with path.open("w") as f:
        for pid in range(1, n + 1):
            f.write(signer.unsubscribe_token(pid, delivery, "news", "email") + "\n")


def start_server(url: str, port: int, workers: int, log: Path,
                 plain: bool) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CONSENTRY_DATABASE_URL": url}
    if workers <= 1 and not plain:
        args = [sys.executable, "-m", "consentry", "serve", "--port", str(port),
                "--database", url]
    else:  # `serve` runs one process; uvicorn's workers share the port
        args = [sys.executable, "-m", "uvicorn", "--factory", "one_click:web_app",
                "--port", str(port), "--workers", str(workers), "--no-access-log",
                "--log-level", "warning", "--app-dir", str(Path(__file__).parent)]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server stopped: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("the server did not answer /healthz within 60 s")


def web_app():  # type: ignore[no-untyped-def]
    """The app for uvicorn --workers (each worker process builds its own)."""
    from consentry.settings import load_settings
    from consentry.web.app import create_app

    return create_app(load_settings(os.environ["CONSENTRY_DATABASE_URL"]))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    family, todo = set(), [pid]
    while todo:
        current = todo.pop()
        family.add(current)
        todo += [child for child, parent in parents.items() if parent == current]
    return sum(times.get(p, 0.0) for p in family)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_one(name: str, url: str, args: argparse.Namespace, work: Path) -> Run:
    engine = make_engine(url)
    upgrade(engine)
    settings = Settings(database_url=url)
    delivery = seed(engine, settings, args.profiles)
    tokens = work / f"{name}.tokens"
    write_tokens(engine, settings, delivery, args.profiles, tokens)
    script = work / "one_click.lua"
    script.write_text(LUA)
    port = free_port()
    server = start_server(url, port, args.workers, work / f"{name}.log", args.uvicorn)
    try:
        threads = min(args.threads, args.connections)
        env = {**os.environ, "ONE_CLICK_TOKENS": str(tokens), "ONE_CLICK_THREADS": str(threads)}
        cpu_before = cpu_seconds(server.pid)
        done = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{args.connections}", f"-d{args.duration}s",
             "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}"],
            env=env, capture_output=True, text=True, check=True)
        time.sleep(1.0)  # let requests still in flight when wrk stopped finish
        cpu = cpu_seconds(server.pid) - cpu_before
    finally:
        stop(server)
    line = next(x for x in done.stdout.splitlines() if x.startswith("JSON "))
    result = json.loads(line[5:])
    with engine.connect() as conn:
        events = conn.execute(sa.text(
            "SELECT count(*) FROM ledger_events WHERE source = 'one_click'")).scalar_one()
        unsubscribed = conn.execute(sa.text(
            "SELECT count(*) FROM subscriptions WHERE state = 'unsubscribed'")).scalar_one()
        verified = ledger.verify(conn).ok
    engine.dispose()
    errors = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    seconds = result["duration_us"] / 1e6
    return Run(name, args.workers, args.connections, result["requests"], result["ok"], errors,
               seconds, result["p50_us"] / 1000, result["p90_us"] / 1000,
               result["p99_us"] / 1000, result["max_us"] / 1000,
               cpu * 1000 / max(result["requests"], 1), events, unsubscribed, verified)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=30_000,
                        help="profiles, hence tokens: enough for the whole run")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--uvicorn", action="store_true",
                        help="run uvicorn on the app directly, without access log, instead of "
                             "`consentry serve` (implied by --workers > 1)")
    parser.add_argument("--postgres", default=PG_ADMIN, help="admin URL of a PostgreSQL server")
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    console = Console(width=160)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "sqlite"):
            console.print("SQLite ...")
            runs.append(run_one("sqlite", f"sqlite:///{work / 'bench.db'}", args, work))
        if args.only in (None, "postgresql"):
            admin = make_engine(args.postgres, isolation_level="AUTOCOMMIT")
            name = f"consentry_one_click_{secrets.token_hex(3)}"
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            try:
                console.print("PostgreSQL ...")
                url = admin.url.set(database=name).render_as_string(hide_password=False)
                runs.append(run_one("postgresql", url, args, work))
            finally:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
    table = Table(title=f"RFC 8058 one-click POST /u/{{token}}, {args.duration} s, "
                        f"{os.cpu_count()} cores")
    for column in ("database", "workers", "connections", "requests/s", "p50 ms", "p90 ms",
                   "p99 ms", "max ms", "server CPU ms/req", "ok", "errors", "ledger events",
                   "unsubscribed", "ledger verifies"):
        table.add_column(column, justify="right")
    problems = []
    for r in runs:
        table.add_row(r.database, str(r.workers), str(r.connections),
                      f"{r.requests / r.seconds:,.0f}", f"{r.p50_ms:.1f}", f"{r.p90_ms:.1f}",
                      f"{r.p99_ms:.1f}", f"{r.max_ms:.1f}", f"{r.cpu_ms:.2f}", f"{r.ok:,}",
                      f"{r.errors:,}",
                      f"{r.events:,}", f"{r.unsubscribed:,}", "yes" if r.verified else "NO")
        if not r.ok <= r.events <= r.ok + r.connections:
            problems.append(f"{r.database}: {r.events} ledger events for {r.ok} successful "
                            "requests")
        if r.events != r.unsubscribed or not r.verified:
            problems.append(f"{r.database}: {r.unsubscribed} unsubscribed, {r.events} events, "
                            f"ledger verifies: {r.verified}")
    console.print(table)
    for problem in problems:
        console.print(f"[red]{problem}[/red]")
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
