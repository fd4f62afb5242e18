"""Benchmark of `profiles import` on SQLite and PostgreSQL. Not a test.

Generates a realistic CSV (German and English names, email addresses, about half with phone
numbers in the formats people type, some opt-out cells set, a custom attribute with a few
multi-line quoted notes, a UTF-8 BOM, and 2% bad rows of varied kinds), imports it into a fresh
SQLite file and a fresh PostgreSQL database (created and dropped here), checks that every good
row landed and every bad row is in the rejects file with its line number and the right reason,
then imports the file once more (every good row is then an update that changes nothing) and
prints the timings.

    uv run python benchmarks/import.py [--rows 1000000] [--postgres URL] [--no-reimport]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn
from rich.table import Table

from consentry.consent.service import create_service
from consentry.domain.addresses import normalize_email
from consentry.domain.channels import Channel
from consentry.domain.ledger import Origin
from consentry.profiles.csv_io import ImportResult, import_profiles
from consentry.settings import Settings
from consentry.store.engine import make_engine, upgrade

console = Console(width=140)

HEADER = ["external_id", "email", "phone", "first_name", "last_name", "locale", "opted_out",
          "email_opted_out", "sms_opted_out", "subscriptions", "city", "notes"]

FIRST_NAMES = ["Max", "Anna", "Lukas", "Sophie", "Jürgen", "Björn", "Renée", "Mia", "Jonas",
               "Lena", "Felix", "Hannah", "Paul", "Marie", "Leon", "Emma", "Oliver", "Amelia",
               "Harry", "Olivia", "George", "Isla", "Jack", "Charlotte", "Thomas", "Emily",
               "Jörg", "Günther", "Ursula", "Käthe", "Sebastian", "Chloe", "William", "Grace"]
LAST_NAMES = ["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker",
              "Schulz", "Hoffmann", "Schäfer", "Koch", "Bauer", "Richter", "Klein", "Wolf",
              "Groß", "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson",
              "Davies", "Evans", "O'Brien", "Walker", "Wright", "Thompson", "Krüger", "Lange"]
CITIES = ["Berlin", "Hamburg", "München", "Köln", "Frankfurt am Main", "Düsseldorf", "Leipzig",
          "London", "Manchester", "Bristol", "Wien", "Zürich", "Edinburgh", "Bremen"]
DOMAINS = ["gmx.de", "web.de", "t-online.de", "gmail.com", "outlook.com", "yahoo.co.uk",
           "posteo.de", "icloud.com", "example.org", "firma-mueller.de"]
IDN_DOMAINS = ["bücher-müller.de", "straße.example", "café-zürich.ch"]
LOCALES = ["de", "de-DE", "de_AT", "en", "en-GB", "en_US", "", "", ""]
NOTES = ["Rückruf erwünscht\nnach 17 Uhr", "Kundin seit 2015,\n\"VIP\"",
         "Address:\n12 High Street\nBristol"]

_TRANSLIT = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "é": "e", "'": ""})


def phone_number(r: random.Random) -> str:
    """A valid number, written the ways people write them."""
    kind = r.random()
    if kind < 0.25:
        return f"+49 151 {r.randint(10000000, 99999999)}"
    if kind < 0.45:
        return f"0170/{r.randint(1000000, 9999999)}"
    if kind < 0.6:
        return f"0176 {r.randint(10000000, 99999999)}"
    if kind < 0.7:
        return f"0049 172 {r.randint(1000000, 9999999)}"
    if kind < 0.8:
        return f"030 {r.randint(1000000, 9999999)}"
    if kind < 0.87:
        return f"+43 664 {r.randint(1000000, 9999999)}"
    if kind < 0.94:
        return f"+41 79 {r.randint(1000000, 9999999)}"
    return f"+1 {r.choice([212, 415, 617, 202])} {r.randint(200, 999)} {r.randint(1000, 9999)}"


def yes_no(r: random.Random, yes: float, no: float) -> str:
    x = r.random()
    if x < yes:
        return r.choice(["1", "ja", "true", "yes", "Y"])
    if x < yes + no:
        return r.choice(["0", "nein", "false", "no"])
    return ""


BAD_KINDS: dict[str, str] = {  # kind -> what its reason must mention
    "bad_email": "bad email address",
    "bad_phone": "bad phone number",
    "bad_boolean": "not a yes/no value",
    "bad_locale": "invalid locale",
    "wrong_columns": "wrong column count",
    "bad_utf8": "not valid UTF-8",
    "duplicate_external_id": "duplicate external_id",
    "duplicate_email": "duplicate email",
    "unknown_service": "unknown service",
    "no_identity": "no external_id, email, phone",
}


@dataclass
class Expected:
    rows: int = 0
    good_by_external_id: dict[str, tuple[str | None, bool]] = field(default_factory=dict)
    good_by_email_key: dict[str, bool] = field(default_factory=dict)  # email-only rows
    opt_outs: Counter[str] = field(default_factory=Counter)
    subscriptions: Counter[str] = field(default_factory=Counter)
    bad_lines: dict[int, str] = field(default_factory=dict)  # line -> kind

    @property
    def good(self) -> int:
        return len(self.good_by_external_id) + len(self.good_by_email_key)


def generate(path: Path, rows: int, seed: int) -> Expected:
    r = random.Random(seed)
    expected = Expected(rows=rows)
    kinds = list(BAD_KINDS)
    seen_external: list[str] = []
    seen_email: list[str] = []
    line = 1
    with path.open("wb") as out:
        out.write(b"\xef\xbb\xbf")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(HEADER)
        out.write(buffer.getvalue().encode())
        for i in range(rows):
            first, last = r.choice(FIRST_NAMES), r.choice(LAST_NAMES)
            external_id = f"CRM-{i:07d}" if r.random() < 0.9 else ""
            local = f"{first}.{last}".lower().translate(_TRANSLIT) + str(i)
            if r.random() < 0.05:
                local = local.capitalize()
            domain = r.choice(IDN_DOMAINS) if r.random() < 0.003 else r.choice(DOMAINS)
            email = f"{local}@{domain}" if external_id == "" or r.random() < 0.95 else ""
            phone = phone_number(r) if r.random() < 0.5 else ""
            opted = yes_no(r, 0.03, 0.2)
            email_opted = yes_no(r, 0.04, 0.1)
            sms_opted = yes_no(r, 0.02, 0.05) if phone else ""
            sub = r.random()
            subscriptions = ("newsletter:subscribed" if sub < 0.05 else
                             "newsletter:unsubscribed" if sub < 0.06 else "")
            notes = r.choice(NOTES) if r.random() < 0.001 else ""
            row = [external_id, email, phone, first, last, r.choice(LOCALES), opted,
                   email_opted, sms_opted, subscriptions, r.choice(CITIES), notes]
            raw: bytes | None = None
            kind = kinds[i % len(kinds)] if r.random() < 0.02 else None
            if kind == "duplicate_external_id" and not seen_external:
                kind = None
            if kind == "duplicate_email" and not seen_email:
                kind = None
            if kind == "bad_email":
                row[1] = r.choice([f"{local}@", f"{local}@@{domain}", f"{local}.{domain}"])
            elif kind == "bad_phone":
                row[2] = r.choice(["12345", "+49 0000", "call me", "+999 123456"])
            elif kind == "bad_boolean":
                row[6] = "vielleicht"
            elif kind == "bad_locale":
                row[5] = "german!"
            elif kind == "wrong_columns":
                row = row[:-2]
            elif kind == "duplicate_external_id":
                row[0] = r.choice(seen_external[-1000:])
            elif kind == "duplicate_email":
                row[0], row[1] = "", r.choice(seen_email[-1000:])
            elif kind == "unknown_service":
                row[9] = "weekly-digest:subscribed"
            elif kind == "no_identity":
                row[0] = row[1] = row[2] = ""
            elif kind == "bad_utf8":
                row[4] = "\x00LATIN1\x00"
            buffer.seek(0)
            buffer.truncate()
            writer.writerow(row)
            text = buffer.getvalue()
            if kind == "bad_utf8":
                raw = text.encode().replace(b"\x00LATIN1\x00", "Müller".encode("latin-1"))
            out.write(raw if raw is not None else text.encode())
            if kind is not None:
                expected.bad_lines[line + 1] = kind
            else:
                _expect(expected, row, r)
                if row[0]:
                    seen_external.append(row[0])
                if row[1]:
                    seen_email.append(row[1])
            line += text.count("\n")
    return expected


def _expect(expected: Expected, row: list[str], r: random.Random) -> None:
    external_id, email, phone = row[0], row[1], row[2]
    key = normalize_email(email).key if email else None
    if external_id:
        expected.good_by_external_id[external_id] = (key, bool(phone))
    else:
        assert key is not None
        expected.good_by_email_key[key] = bool(phone)
    for scope, cell in (("all", row[6]), ("email", row[7]), ("sms", row[8])):
        if cell.lower() in ("1", "ja", "true", "yes", "y"):
            expected.opt_outs[scope] += 1
    if row[9]:
        expected.subscriptions[row[9].split(":")[1]] += 1


def verify(engine: sa.Engine, expected: Expected, result: ImportResult, rejects: Path,
           *, reimport: bool) -> list[str]:
    """Everything that is not as expected (empty when all is well)."""
    problems = []
    want = (0, expected.good) if reimport else (expected.good, 0)
    if (result.imported, result.updated) != want:
        problems.append(f"imported/updated {result.imported}/{result.updated}, expected {want}")
    if result.rejected != len(expected.bad_lines):
        problems.append(f"rejected {result.rejected}, expected {len(expected.bad_lines)}")
    with engine.connect() as conn:
        by_external: dict[str, tuple[str | None, bool]] = {}
        by_email: dict[str, bool] = {}
        for external_id, key, has_phone in conn.execute(sa.text(
                "SELECT external_id, email_key, phone IS NOT NULL FROM profiles")):
            if external_id is not None:
                by_external[external_id] = (key, bool(has_phone))
            else:
                by_email[key] = bool(has_phone)
        if by_external != expected.good_by_external_id:
            missing = expected.good_by_external_id.keys() - by_external.keys()
            problems.append(f"profiles by external id differ ({len(missing)} missing)")
        if by_email != expected.good_by_email_key:
            problems.append("profiles without external id differ")
        opt_outs = Counter(dict(conn.execute(sa.text(
            "SELECT scope, count(*) FROM opt_outs GROUP BY scope")).all()))
        if opt_outs != expected.opt_outs:
            problems.append(f"opt-outs {dict(opt_outs)}, expected {dict(expected.opt_outs)}")
        states = Counter(dict(conn.execute(sa.text(
            "SELECT state, count(*) FROM subscriptions GROUP BY state")).all()))
        if states != expected.subscriptions:
            problems.append(f"subscriptions {dict(states)}, expected "
                            f"{dict(expected.subscriptions)}")
        events = conn.execute(sa.text("SELECT count(*) FROM ledger_events")).scalar_one()
        if events != opt_outs.total() + states.total():
            problems.append(f"{events} ledger events for {opt_outs.total()} opt-outs and "
                            f"{states.total()} subscriptions")
    with rejects.open(newline="", encoding="utf-8-sig") as f:
        found = {int(row[0]): row[1] for row in list(csv.reader(f))[1:]}
    if found.keys() != expected.bad_lines.keys():
        extra = sorted(found.keys() - expected.bad_lines.keys())[:5]
        missing = sorted(expected.bad_lines.keys() - found.keys())[:5]
        problems.append(f"rejected lines differ: unexpected {extra}, missing {missing}")
    for line, kind in expected.bad_lines.items():
        if line in found and BAD_KINDS[kind] not in found[line]:
            problems.append(f"line {line} ({kind}) rejected for {found[line]!r}")
            break
    return problems


def timed_import(engine: sa.Engine, url: str, path: Path, rejects: Path,
                 label: str) -> tuple[ImportResult, float, float]:
    with Progress("[progress.description]{task.description}", BarColumn(),
                  TaskProgressColumn(), TimeRemainingColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task(label, total=path.stat().st_size)
        update: Callable[[int, int], None] = lambda done, total: bar.update(  # noqa: E731
            task, completed=done, total=total)
        start, cpu = time.perf_counter(), os.times()
        result = import_profiles(engine, Settings(database_url=url), path,
                                 rejects_path=rejects, service_slug=None,
                                 origin=Origin(source="import", actor="os:benchmark"),
                                 progress=update)
        seconds, done = time.perf_counter() - start, os.times()
        # This process and its (finished) worker processes; not the database server.
        used = (done.user - cpu.user + done.system - cpu.system + done.children_user
                - cpu.children_user + done.children_system - cpu.children_system)
        return result, seconds, used


def bench(name: str, url: str, csv_path: Path, expected: Expected, work: Path,
          reimport: bool, table: Table) -> bool:
    engine = make_engine(url)
    ok = True
    try:
        upgrade(engine)
        with engine.begin() as conn:
            create_service(conn, "newsletter", Channel.EMAIL, "Newsletter")
        passes = [False, True] if reimport else [False]
        for again in passes:
            label = f"{name} ({'re-import: updates' if again else 'fresh'})"
            rejects = work / f"rejects-{name}-{int(again)}.csv"
            load = os.getloadavg()[0]
            result, seconds, cpu = timed_import(engine, url, csv_path, rejects, label)
            problems = verify(engine, expected, result, rejects, reimport=again)
            for problem in problems:
                console.print(f"[red]{label}: {problem}")
            ok = ok and not problems
            table.add_row(label, f"{expected.rows:,}", f"{result.imported:,}",
                          f"{result.updated:,}", f"{result.rejected:,}", f"{seconds:.1f}",
                          f"{expected.rows / seconds:,.0f}", f"{cpu:.0f}",
                          f"{load:.1f}/{os.getloadavg()[0]:.1f}",
                          "[green]yes" if not problems else "[red]NO")
    finally:
        engine.dispose()
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/"
                        "postgres", help="a server where the benchmark may create a database")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--no-reimport", dest="reimport", action="store_false")
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="consentry-bench-") as tmp:
        work = Path(tmp)
        csv_path = work / "profiles.csv"
        start = time.perf_counter()
        with console.status(f"generating {args.rows:,} rows"):
            expected = generate(csv_path, args.rows, args.seed)
        console.print(f"generated {csv_path.stat().st_size / 1e6:.0f} MB, {expected.good:,} "
                      f"good and {len(expected.bad_lines):,} bad rows in "
                      f"{time.perf_counter() - start:.0f} s")
        table = Table(title=f"profiles import, {args.rows:,} rows", caption=(
            f"{os.cpu_count()} cores; cpu s: this process and its workers, not the database "
            "server; load: 1-minute load average before/after (other work on the machine)"))
        for column in ("database", "rows", "imported", "updated", "rejected", "seconds",
                       "rows/s", "cpu s", "load", "verified"):
            table.add_column(column, justify="left" if column == "database" else "right")
        ok = True
        if args.only in (None, "sqlite"):
            ok &= bench("sqlite", f"sqlite:///{work / 'bench.db'}", csv_path, expected, work,
                        args.reimport, table)
        if args.only in (None, "postgresql"):
            admin = make_engine(args.postgres, isolation_level="AUTOCOMMIT")
            name = f"consentry_bench_{secrets.token_hex(4)}"
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            try:
                url = admin.url.set(database=name).render_as_string(hide_password=False)
                ok &= bench("postgresql", url, csv_path, expected, work, args.reimport, table)
            finally:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
        console.print(table)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
