"""Appending to, reading and verifying the consent ledger."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import sqlalchemy as sa

from consentry.domain import ledger as rules
from consentry.ledger import sql
from consentry.webhooks import service as webhooks


def append(conn: sa.Connection, events: Sequence[rules.Event]) -> None:
    """Append events in this transaction, each chained into its partition."""
    if not events:
        return
    by_partition: dict[int, list[int]] = defaultdict(list)
    for i, event in enumerate(events):
        by_partition[rules.partition_of(event.partition_key())].append(i)
    rows: list[tuple[Any, ...]] = []
    new_heads: list[dict[str, Any]] = []
    hashes = [""] * len(events)
    locked = conn.execute(sql.LOCK_HEADS, {"partitions": sorted(by_partition)}).all()
    for partition, seq, prev_hash in locked:
        for i in by_partition[partition]:
            seq += 1
            chained = rules.chain(events[i], partition, seq, prev_hash)
            prev_hash = hashes[i] = chained.hash
            rows.append(_row(events[i], chained))
        new_heads.append({"p": partition, "new_seq": seq, "new_hash": prev_hash})
    _insert(conn, rows)
    # One head: a plain execute (an executemany of one row costs psycopg a pipeline sync).
    conn.execute(sql.UPDATE_HEAD, new_heads[0] if len(new_heads) == 1 else new_heads)
    # The outbound webhooks' outbox, in this same transaction (webhooks/service.py): one
    # query when no endpoint is active. An event's hash is its unique id in the payload.
    webhooks.enqueue(conn, events, hashes)


def _row(event: rules.Event, chained: rules.ChainedRow) -> tuple[Any, ...]:
    # In sql.EVENT_COLUMNS order.
    return (chained.partition, chained.seq, event.at, event.kind, event.source, event.actor,
            event.profile_id, event.channel, event.service, event.old_state, event.new_state,
            event.wording, event.address, event.ip, event.user_agent, event.note,
            None if event.evidence is None else json.dumps(event.evidence, ensure_ascii=False),
            chained.personal_digest, False, chained.prev_hash, chained.hash)


_FEW = 8  # events below which PostgreSQL gets an INSERT instead of COPY


def _insert(conn: sa.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert chained rows through the driver: imports append hundreds of thousands of events,
    and SQLAlchemy's per-value bind processing cost more than the database's own work.
    PostgreSQL gets COPY in this transaction; SQLite an executemany with timestamps in the text
    form SQLAlchemy's SQLite DateTime reads back (naive UTC)."""
    if conn.dialect.name == "postgresql":
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        if len(rows) == 1:
            cursor.execute(sql.INSERT_EVENTS_PG, rows[0])
            return
        if len(rows) <= _FEW:
            cursor.executemany(sql.INSERT_EVENTS_PG, rows)
            return
        with cursor.copy(sql.COPY_EVENTS) as copy:
            for row in rows:
                copy.write_row(row)
        return
    conn.exec_driver_sql(sql.INSERT_EVENTS_SQLITE, [
        (*row[:2], row[2].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"), *row[3:])
        for row in rows])


def history(conn: sa.Connection, profile_id: int, addresses: list[str]) -> list[dict[str, Any]]:
    return [event_json(r._mapping) for r in conn.execute(sql.profile_history(profile_id,
                                                                              addresses))]


def event_json(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"], "at": row["at"].isoformat(), "kind": row["kind"],
        "source": row["source"], "actor": row["actor"], "profile_id": row["profile_id"],
        "channel": row["channel"], "service": row["service"], "address": row["address"],
        "old_state": row["old_state"], "new_state": row["new_state"],
        "wording": row["wording"], "ip": row["ip"], "user_agent": row["user_agent"],
        "note": row["note"], "evidence": row["evidence"], "redacted": row["redacted"],
        "hash": row["hash"],
    }


def redact(conn: sa.Connection, profile_id: int, addresses: Iterable[str]) -> int:
    """Blank the personal data of a profile's events and of its addresses' events."""
    ev = sql.ev
    cond = ev.c.profile_id == profile_id
    addresses = list(addresses)
    if addresses:
        cond = sa.or_(cond, sa.and_(ev.c.profile_id.is_(None), ev.c.address.in_(addresses)))
    return conn.execute(sql.REDACT.where(cond).where(ev.c.redacted.is_(False))).rowcount


@dataclass(frozen=True)
class Problem:
    event_id: int | None
    partition: int
    seq: int | None
    why: str

    def __str__(self) -> str:
        where = f"event {self.event_id}" if self.event_id is not None else "chain head"
        return f"{where} (partition {self.partition}, seq {self.seq}): {self.why}"


@dataclass(frozen=True)
class Verification:
    events: int
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify(conn: sa.Connection) -> Verification:
    """Recompute every chain; report the earliest event (by id) that does not verify."""
    erased = {r[0] for r in conn.execute(sql.ERASED_PROFILES)}
    heads = {p: (seq, h) for p, seq, h in conn.execute(sql.ALL_HEADS)}
    problems: dict[int, Problem] = {}
    state: dict[int, tuple[int, str]] = {}  # partition -> (last seq, last hash)
    count = 0
    result = conn.execution_options(stream_results=True, yield_per=5000).execute(
        sql.ALL_IN_CHAIN_ORDER)
    for row in result.mappings():
        count += 1
        p = row["partition"]
        if p in problems:
            continue
        last_seq, last_hash = state.get(p, (0, rules.GENESIS))
        why = _check(row, last_seq, last_hash, erased)
        if why:
            problems[p] = Problem(row["id"], p, row["seq"], why)
            continue
        state[p] = (row["seq"], row["hash"])
    for p, (head_seq, head_hash) in heads.items():
        if p in problems:
            continue
        last_seq, last_hash = state.get(p, (0, rules.GENESIS))
        if (last_seq, last_hash) != (head_seq, head_hash):
            problems[p] = Problem(None, p, head_seq,
                                  f"the chain ends at seq {last_seq} but its head says "
                                  f"{head_seq}: events were removed or the head was changed")
    if not problems:
        return Verification(count, None)
    first = min(problems.values(),
                key=lambda pr: (pr.event_id is None, pr.event_id or 0, pr.partition))
    return Verification(count, first)


def _check(row: Any, last_seq: int, last_hash: str, erased: set[int]) -> str | None:
    if row["seq"] != last_seq + 1:
        return f"expected seq {last_seq + 1}, found {row['seq']}: events missing or reordered"
    if row["prev_hash"] != last_hash:
        return "prev_hash does not match the previous event's hash"
    if row["redacted"]:
        if row["profile_id"] is not None and row["profile_id"] not in erased:
            return "redacted without an erasure of its profile"
        if any(row[f] is not None for f in ("address", "ip", "user_agent", "note", "evidence")):
            return "marked redacted but still holds personal data"
    else:
        digest = rules.personal_digest(row["address"], row["ip"], row["user_agent"],
                                       row["note"], row["evidence"])
        if digest != row["personal_digest"]:
            return "its address, IP, user agent, note or evidence was changed"
    expected = rules.event_hash(
        prev_hash=row["prev_hash"], partition=row["partition"], seq=row["seq"], at=row["at"],
        kind=row["kind"], source=row["source"], actor=row["actor"],
        profile_id=row["profile_id"], channel=row["channel"], service=row["service"],
        old_state=row["old_state"], new_state=row["new_state"], wording=row["wording"],
        digest=row["personal_digest"])
    if expected != row["hash"]:
        return "its content does not match its hash"
    return None
