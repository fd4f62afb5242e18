"""Shared set-up for the sending benchmarks: a database with many subscribed profiles, made
set-based, and SMTP sink processes."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from consentry.store.engine import make_engine, upgrade

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def start_process(args: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return proc


def subscribed_database(path: Path, n: int, local_part: str = "'u' || x") -> sa.Engine:
    """A SQLite file with `n` profiles u1..un@isp.example, all subscribed to `news`.
    `local_part` is an SQL expression over x, the profile number."""
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    now = datetime.now(UTC)
    seq = (f"(WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < {n}) "
           "SELECT x FROM s)")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO services (id, slug, label, channel, double_opt_in, "
                             "public, created_at) VALUES (1, 'news', 'News', 'email', 0, 1, "
                             ":now)"), {"now": now})
        conn.execute(sa.text(
            f"INSERT INTO profiles (id, email, email_key, first_name, created_at, updated_at) "
            f"SELECT x, {local_part} || '@isp.example', {local_part} || '@isp.example', "
            f"'Name' || x, :now, :now FROM {seq}"), {"now": now})
        conn.execute(sa.text(
            "INSERT INTO subscriptions (profile_id, service_id, state, state_at, subscribed_at, "
            f"created_at) SELECT x, 1, 'subscribed', :now, :now, :now FROM {seq}"), {"now": now})
    return engine
