"""Feedback throughput: messages classified, and classified *and applied* (quarantine,
denylist, ledger, stored evidence), per second, on a mixed corpus, on SQLite and PostgreSQL.

    uv run python benchmarks/feedback.py [--messages N] [--postgres URL]

The mix: every development message under tests/data/feedback/ (real bounces, complaints and
auto-replies from many MTAs), each sent again with a fresh Message-ID so it counts as new,
and generated RFC 3464 DSNs (hard and soft) and ARF complaints for 50,000 different addresses.
Ingested as `feedback ingest` does (feedback.ingest: classified in worker processes, applied
200 messages per transaction). Prints a table; not a test.
"""

from __future__ import annotations

import argparse
import random
import re
import secrets
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from consentry.feedback.classify import classify
from consentry.feedback.ingest import Message, ingest
from consentry.settings import Settings
from consentry.store.engine import make_engine, upgrade
from consentry.tokens import Signer

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "feedback"
TARGET = 1000.0

DSN = """\
From: MAILER-DAEMON@mx{n}.example.net
To: bounces@bounces.example.com
Subject: Undelivered Mail Returned to Sender
Message-ID: <{mid}@mx.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b{n}"

--b{n}
Content-Type: text/plain

This is the mail system at host mx{n}.example.net. I'm sorry to have to inform you
that your message could not be delivered to one or more recipients.

--b{n}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx{n}.example.net

Final-Recipient: rfc822; {rcpt}
Action: failed
Status: {status}
Diagnostic-Code: smtp; {diagnostic}

--b{n}
Content-Type: text/rfc822-headers

From: news@example.com
To: {rcpt}
Subject: June news
Message-ID: <orig{n}@example.com>

--b{n}--
"""

ARF = """\
From: feedback@fbl.example.org
To: fbl@bounces.example.com
Subject: Complaint
Message-ID: <{mid}@fbl.example.org>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="a{n}"

--a{n}
Content-Type: text/plain

This is an email abuse report.

--a{n}
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ExampleFBL/1.0
Version: 1
Original-Rcpt-To: {rcpt}

--a{n}
Content-Type: message/rfc822

From: news@example.com
To: {rcpt}
Subject: June news
Message-ID: <orig{n}@example.com>

Hello
--a{n}--
"""

FAILURES = [("5.1.1", "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown"),
            ("4.2.2", "452 4.2.2 Mailbox full"),
            ("5.2.2", "552 5.2.2 The email account that you tried to reach is over quota"),
            ("4.4.1", "connect to mx.example.org: Connection timed out"),
            ("5.7.1", "550 5.7.1 Message rejected as spam")]


def corpus() -> list[bytes]:
    files = [p for p in sorted(CORPUS.rglob("*")) if p.is_file()
             and p.suffix not in (".json", ".md") and p.name != "LICENSE"]
    return [p.read_bytes() for p in files]


def mixed(n: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    real = corpus()
    messages: list[bytes] = []
    message_id = re.compile(rb"^Message-ID:[^\n]*\n", re.I | re.M)
    for i in range(n):
        mid = f"bench{i}.{secrets.token_hex(4)}"
        if i % 2 == 0 and real:
            raw = real[(i // 2) % len(real)]
            raw = message_id.sub(b"", raw, count=1)
            messages.append(f"Message-ID: <{mid}@bench>\n".encode() + raw)
            continue
        rcpt = f"user{rng.randrange(50_000)}@example.org"
        if i % 10 == 1:
            messages.append(ARF.format(n=i, mid=mid, rcpt=rcpt).encode())
        else:
            status, diagnostic = FAILURES[rng.randrange(len(FAILURES))]
            messages.append(DSN.format(n=i, mid=mid, rcpt=rcpt, status=status,
                                       diagnostic=diagnostic.format(rcpt=rcpt)).encode())
    return messages


def classify_rate(messages: list[bytes]) -> float:
    start = time.perf_counter()
    for raw in messages:
        classify(raw)
    return len(messages) / (time.perf_counter() - start)


def ingest_rate(url: str, messages: list[bytes]) -> tuple[float, dict[str, int]]:
    engine = make_engine(url)
    upgrade(engine)
    settings = Settings(database_url=url)
    with engine.begin() as conn:
        signer = Signer.for_database(conn, settings)
    start = time.perf_counter()
    totals = ingest(engine, settings, signer, [Message(raw, "bench") for raw in messages],
                    via="bench")
    counts = totals.to_json()
    elapsed = time.perf_counter() - start
    engine.dispose()
    return len(messages) / elapsed, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/"
                                               "postgres")
    args = parser.parse_args()
    messages = mixed(args.messages)
    console = Console(width=120)
    table = Table(title=f"feedback: {len(messages):,} messages, mixed corpus "
                        f"(target {TARGET:,.0f} messages/s classified and applied)")
    for column in ("database", "classified/s", "classified+applied/s", "applied", "ignored",
                   "review", "meets target"):
        table.add_column(column, justify="right")
    only_classify = classify_rate(messages)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("SQLite", f"sqlite:///{tmp}/feedback.db")]
        admin = make_engine(args.postgres, isolation_level="AUTOCOMMIT")
        name = f"consentry_bench_{secrets.token_hex(3)}"
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            runs.append(("PostgreSQL", admin.url.set(database=name).render_as_string(
                hide_password=False)))
        except sa.exc.OperationalError as exc:
            console.print(f"[yellow]PostgreSQL skipped: {exc.orig}")
        try:
            for label, url in runs:
                rate, counts = ingest_rate(url, messages)
                table.add_row(label, f"{only_classify:,.0f}", f"{rate:,.0f}",
                              str(counts.get("applied", 0)), str(counts.get("ignored", 0)),
                              str(counts.get("review", 0)), "yes" if rate >= TARGET else "NO")
        finally:
            if len(runs) > 1:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    console.print(table)


if __name__ == "__main__":
    main()
