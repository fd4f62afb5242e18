"""Creating, analysing, explaining and reporting on deliveries."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from consentry.consent import service as consent
from consentry.delivery import content as content_rules
from consentry.delivery import sql
from consentry.domain import reachability
from consentry.domain.addresses import normalize
from consentry.domain.channels import Channel
from consentry.domain.consent import SubscriptionState
from consentry.domain.errors import ConsentryError, NotFound
from consentry.domain.reachability import Exclusion
from consentry.feedback import rates
from consentry.profiles import service as profiles
from consentry.quarantine import service as quarantine
from consentry.settings import FeedbackSettings, Settings
from consentry.store.types import utcnow

KINDS = ("marketing", "transactional")


@dataclass(frozen=True)
class NewDelivery:
    name: str
    channel: Channel
    kind: str = "marketing"
    service: str | None = None  # slug
    audience: str = "service"  # service | all | filter | proof
    audience_filter: tuple[tuple[str, str], ...] = ()
    proof_addresses: tuple[str, ...] = ()
    target_limit: int | None = None
    fatigue_max: int | None = None
    fatigue_days: int | None = None
    content: content_rules.Content = field(default_factory=content_rules.Content)


def create(conn: sa.Connection, settings: Settings, new: NewDelivery, actor: str | None,
           now: datetime | None = None) -> int:
    now = now or utcnow()
    if new.kind not in KINDS:
        raise ConsentryError(f"unknown kind {new.kind!r}: expected marketing or transactional")
    if not new.name.strip():
        raise ConsentryError("a delivery needs a name")
    service_id = None
    if new.service:
        service = consent.get_service(conn, new.service)
        if service.channel is not new.channel:
            raise ConsentryError(f"service {service.slug!r} is a {service.channel.value} "
                                 f"service, not {new.channel.value}")
        service_id = service.id
    if new.audience == "service" and service_id is None:
        raise ConsentryError("give --service SLUG or --audience all")
    if new.audience not in ("service", "all", "filter", "proof"):
        raise ConsentryError(f"unknown audience {new.audience!r}")
    for name, _ in new.audience_filter:
        if name not in sql.PROFILE_FIELDS and not name.startswith("attr."):
            raise ConsentryError(f"cannot filter on {name!r}: use one of "
                                 f"{', '.join(sql.PROFILE_FIELDS)} or attr.NAME")
    proofs = [normalize(new.channel, a, settings.default_region).value
              for a in new.proof_addresses]
    if new.audience == "proof" and not proofs:
        raise ConsentryError("a proof delivery needs at least one --proof ADDRESS")
    for name, value in (("--limit", new.target_limit), ("--fatigue-max", new.fatigue_max),
                        ("--fatigue-days", new.fatigue_days)):
        if value is not None and value <= 0:
            raise ConsentryError(f"{name} must be a positive number")
    if (new.fatigue_max is None) != (new.fatigue_days is None):
        raise ConsentryError("--fatigue-max and --fatigue-days go together")
    content_rules.check(new.content, channel=new.channel.value,
                        marketing=new.kind == "marketing" and new.audience != "proof")
    return conn.execute(sql.INSERT_DELIVERY, {
        "name": new.name.strip(), "channel": new.channel.value, "kind": new.kind,
        "audience": new.audience, "service_id": service_id,
        "audience_filter": [list(f) for f in new.audience_filter] or None,
        "proof_addresses": proofs or None, "target_limit": new.target_limit,
        "fatigue_max": new.fatigue_max, "fatigue_days": new.fatigue_days,
        "subject": new.content.subject, "text_body": new.content.text,
        "html_body": new.content.html, "push_title": new.content.subject, "state": "draft",
        "created_at": now, "created_by": actor}).scalar_one()


def get(conn: sa.Connection, delivery_id: int, *, for_update: bool = False) -> dict[str, Any]:
    stmt = sql.DELIVERY_FOR_UPDATE if for_update else sql.DELIVERY
    row = conn.execute(stmt, {"delivery_id": delivery_id}).mappings().first()
    if row is None:
        raise NotFound(f"no delivery {delivery_id}")
    return dict(row)


def content_of(delivery: dict[str, Any]) -> content_rules.Content:
    return content_rules.Content(subject=delivery["subject"] or delivery["push_title"],
                                 text=delivery["text_body"], html=delivery["html_body"])


def analyze(bind: sa.Engine | sa.Connection, settings: Settings, delivery_id: int,
            now: datetime | None = None) -> dict[str, Any]:
    """Turn the audience into target rows, each excluded one with the first failing rule.

    Given a connection, all of it happens in that connection's transaction. Given the engine,
    SQLite does the same in a transaction of its own, and PostgreSQL works out the duplicates
    and then writes the target rows on parallel connections, each part its own transaction:
    the delivery stays a draft until the last step marks it analysed, so nothing sends from a
    partial target, and a failed analysis removes what it wrote and leaves a draft to analyse
    again. (The duplicates are then read a moment before the rows: should the older holder of
    a shared address opt out in between, the younger stays a duplicate, and that address gets
    nothing from this delivery rather than two messages.)"""
    now = now or utcnow()
    if isinstance(bind, sa.Connection):
        return _analyze_in(bind, settings, delivery_id, now)
    engine = bind
    if engine.dialect.name != "postgresql":
        with engine.begin() as conn:
            return _analyze_in(conn, settings, delivery_id, now)
    with engine.connect() as conn:
        locked = conn.execute(sql.TRY_ANALYSIS_LOCK_PG, {"delivery_id": delivery_id}).scalar()
        conn.commit()
        if not locked:
            raise ConsentryError(f"delivery {delivery_id} is being analysed by another process")
        try:
            return _analyze_postgres(engine, conn, settings, delivery_id, now)
        finally:
            try:
                conn.execute(sql.ANALYSIS_UNLOCK_PG, {"delivery_id": delivery_id})
                conn.commit()
            except sa.exc.DBAPIError:
                conn.invalidate()  # closing the session releases its lock


# Connections that write a PostgreSQL analysis's chunks at once: the insert is bound by the
# server's CPU and its log writes, so more than it has cores only queue. One chunk each was
# measured fastest (a million profiles on two connections: 2.8 s in eight chunks, 2.5 s in
# two): the chunk that writes the highest ids appends to the right edge of the primary key,
# which PostgreSQL does without descending the tree.
ANALYSIS_CONNECTIONS = max(1, min(4, os.cpu_count() or 1))
CHUNKS_PER_CONNECTION = 1


def _analyze_in(conn: sa.Connection, settings: Settings, delivery_id: int,
                now: datetime) -> dict[str, Any]:
    delivery = _prepare(conn, settings, delivery_id, now)
    if delivery["audience"] != "proof":
        postgres = conn.dialect.name == "postgresql"
        if postgres:  # the quarantine hash must fit (see sql.py)
            quarantined = conn.execute(sql.QUARANTINE_ROWS_PG).scalar_one()
            _run(conn, (sql.chunk_work_mem(quarantined, 0),))
        conn.execute(sql.insert_duplicates(delivery, now))
        conn.execute(sql.insert_targets(delivery, now, join_duplicates=postgres))
        if not postgres:
            conn.execute(sql.exclude_duplicates(delivery_id))
        _settle(conn, delivery, now, None)
    return summary(conn, delivery_id)


def _analyze_postgres(engine: sa.Engine, conn: sa.Connection, settings: Settings,
                      delivery_id: int, now: datetime) -> dict[str, Any]:
    with conn.begin():
        delivery = _prepare(conn, settings, delivery_id, now)
        if delivery["audience"] == "proof":
            return summary(conn, delivery_id)
        first, last = conn.execute(sql.PROFILE_ID_RANGE).one()
        quarantined = conn.execute(sql.QUARANTINE_ROWS_PG).scalar_one()
        bounds = conn.execute(sql.key_histogram_pg(delivery["channel"])).scalar()
    try:
        _in_parallel(engine, sql.ANALYSIS_SETTINGS_PG + sql.DUPLICATE_SETTINGS_PG,
                     [sql.insert_duplicates(delivery, now, keys)
                      for keys in sql.key_ranges(bounds, ANALYSIS_CONNECTIONS)])
        counts = _write_in_parallel(engine, delivery, now, first, last, quarantined)
        with conn.begin():
            _run(conn, sql.ANALYSIS_SETTINGS_PG)
            _settle(conn, delivery, now, counts)
            return _summary_of(delivery_id, counts)
    except BaseException:
        with conn.begin():  # nothing half-analysed stays behind
            conn.execute(sql.delete_targets(delivery_id))
            conn.execute(sql.delete_duplicates(delivery_id))
        raise


def _prepare(conn: sa.Connection, settings: Settings, delivery_id: int,
             now: datetime) -> dict[str, Any]:
    """Check the delivery and its content, release what quarantine is due, drop an earlier
    analysis. A proof delivery is analysed here: its rows go to seed addresses, not profiles."""
    delivery = get(conn, delivery_id, for_update=True)
    if delivery["state"] not in ("draft", "analyzed"):
        raise ConsentryError(f"delivery {delivery_id} is {delivery['state']}: it was analysed "
                             "and sending has started")
    content_rules.check(content_of(delivery), channel=delivery["channel"],
                        marketing=delivery["kind"] == "marketing"
                        and delivery["audience"] != "proof")
    quarantine.release_due(conn, settings.quarantine, now)  # time-based releases first
    conn.execute(sql.delete_targets(delivery_id))
    conn.execute(sql.delete_duplicates(delivery_id))
    if delivery["audience"] == "proof":
        # Nobody's consent is read or changed.
        first, _ = sql.id_range(delivery_id)
        conn.execute(sql.t.insert(), [
            {"id": first + n, "delivery_id": delivery_id, "profile_id": None, "address": a,
             "address_key": a, "state": "pending"}
            for n, a in enumerate(delivery["proof_addresses"], start=1)])
        _mark_analyzed(conn, delivery_id, now)
    else:
        _mark_analyzed(conn, delivery_id, None)  # a draft until its target is complete
    return delivery


def _mark_analyzed(conn: sa.Connection, delivery_id: int, now: datetime | None) -> None:
    conn.execute(sql.UPDATE_DELIVERY, {"delivery_id": delivery_id,
                                       "state": "analyzed" if now else "draft",
                                       "analyzed_at": now})


Counts = dict[tuple[str, str | None], int]


def _in_parallel(engine: sa.Engine, settings: tuple[str, ...],
                 statements: list[Any]) -> list[list[sa.Row]]:
    """Run each statement in a transaction of its own, ANALYSIS_CONNECTIONS at a time; answer
    the rows each returns (none for a plain insert)."""

    def run(statement: Any) -> list[sa.Row]:
        with engine.begin() as conn:
            _run(conn, settings)
            result = conn.execute(statement)
            return list(result) if result.returns_rows else []

    with ThreadPoolExecutor(ANALYSIS_CONNECTIONS, thread_name_prefix="analysis") as pool:
        futures = [pool.submit(run, statement) for statement in statements]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _write_in_parallel(engine: sa.Engine, delivery: dict[str, Any], now: datetime,
                       first: int | None, last: int | None, quarantined: int) -> Counts:
    """Write the target rows of each chunk of the profile id range on its own connection;
    answer the rows written by state and reason."""
    if first is None or last is None:
        return {}
    chunks = ANALYSIS_CONNECTIONS * CHUNKS_PER_CONNECTION
    step = max(1, -(-(last - first + 1) // chunks))
    settings = (sql.ANALYSIS_SETTINGS_PG + sql.INSERT_SETTINGS_PG
                + (sql.chunk_work_mem(quarantined, step),))
    counts: Counts = {}
    for rows in _in_parallel(engine, settings, [
            sql.insert_targets_counted(delivery, now, (lo, min(lo + step - 1, last)))
            for lo in range(first, last + 1, step)]):
        for state, reason, n in rows:
            counts[(state, reason)] = counts.get((state, reason), 0) + n
    return counts


def _settle(conn: sa.Connection, delivery: dict[str, Any], now: datetime,
            counts: Counts | None) -> None:
    """Rules 9 and 10, which depend on the whole target; then the delivery is analysed.
    `counts` (rows by state and reason), when kept, follows the rows these rules exclude."""
    delivery_id = delivery["id"]
    conn.execute(sql.delete_duplicates(delivery_id))
    rules = []
    if delivery["fatigue_max"] and delivery["kind"] == "marketing":
        since = now - timedelta(days=delivery["fatigue_days"])
        rules.append((Exclusion.FATIGUE,
                      sql.exclude_fatigue(delivery_id, since, delivery["fatigue_max"])))
    if delivery["target_limit"]:
        rules.append((Exclusion.TARGET_LIMIT,
                      sql.exclude_over_limit(delivery_id, delivery["target_limit"])))
    if rules and conn.dialect.name == "postgresql":
        _run(conn, sql.TARGET_STATISTICS_PG)
    for rule, statement in rules:
        moved = conn.execute(statement).rowcount
        if counts is not None:
            counts[("pending", None)] = counts.get(("pending", None), 0) - moved
            counts[("excluded", rule.value)] = counts.get(("excluded", rule.value), 0) + moved
    _mark_analyzed(conn, delivery_id, now)


def _run(conn: sa.Connection, statements: tuple[str, ...]) -> None:
    for statement in statements:
        conn.exec_driver_sql(statement)


def summary(conn: sa.Connection, delivery_id: int) -> dict[str, Any]:
    """The contract's analysis answer: audience, exclusion causes in rule order, to_send."""
    counts = {(state, reason): n for state, reason, n in
              conn.execute(sql.counts_by_state_and_reason(delivery_id))}
    return _summary_of(delivery_id, counts)


def _summary_of(delivery_id: int, counts: Counts) -> dict[str, Any]:
    excluded = {e.value: 0 for e in reachability.EXCLUSION_ORDER}
    audience = to_send = 0
    for (state, reason), n in counts.items():
        audience += n
        if state == "excluded":
            excluded[reason] = excluded.get(reason, 0) + n
        elif state == "pending":
            to_send += n
    return {"delivery": delivery_id, "audience": audience,
            "excluded": {k: v for k, v in excluded.items() if v}, "to_send": to_send}


def report(conn: sa.Connection, delivery_id: int,
           thresholds: FeedbackSettings | None = None) -> dict[str, Any]:
    """Counts by state, exclusion causes, failures by reason, throughput, and the bounce and
    complaint rates (synchronous failures and feedback) against the alert thresholds."""
    delivery = get(conn, delivery_id)
    states: dict[str, int] = {}
    excluded: dict[str, int] = {}
    excluded_at_send: dict[str, int] = {}
    failures: dict[str, int] = {}
    for state, reason, n in conn.execute(sql.counts_by_state_and_reason(delivery_id)):
        states[state] = states.get(state, 0) + n
        bucket = {"excluded": excluded, "excluded_at_send": excluded_at_send,
                  "failed": failures}.get(state)
        if bucket is not None:
            bucket[reason or "not_defined"] = bucket.get(reason or "not_defined", 0) + n
    first, last, sent = conn.execute(sql.throughput(delivery_id)).one()
    seconds = (last - first).total_seconds() if first and last else 0.0
    return {
        "delivery": delivery_id, "name": delivery["name"], "channel": delivery["channel"],
        "kind": delivery["kind"], "state": delivery["state"],
        "states": states, "excluded": excluded, "excluded_at_send": excluded_at_send,
        "failures": failures,
        "throughput": {"sent": sent, "seconds": round(seconds, 3),
                       "per_second": round(sent / seconds, 1) if seconds > 0 else None},
        "feedback": rates.for_delivery(conn, delivery_id).to_json(
            thresholds or FeedbackSettings()),
        "analyzed_at": _iso(delivery["analyzed_at"]), "started_at": _iso(delivery["started_at"]),
        "finished_at": _iso(delivery["finished_at"]),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def exclusion_log(conn: sa.Connection, delivery_id: int, *, reason: str | None = None,
                  after_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
    channel = get(conn, delivery_id)["channel"]
    return [dict(r) for r in conn.execute(sql.exclusion_log(
        delivery_id, channel, reason=reason, after_id=after_id, limit=limit)).mappings()]


def explain(conn: sa.Connection, settings: Settings, profile_id: int, delivery_id: int,
            now: datetime | None = None) -> dict[str, Any]:
    """Every rule in order for one profile, whether it passed, and the verdict."""
    now = now or utcnow()
    delivery = get(conn, delivery_id)
    profile = profiles.get(conn, profile_id)
    channel = Channel(delivery["channel"])
    addresses = [a for a in profiles.addresses_of(conn, profile) if a.channel is channel]
    optouts = consent.optouts(conn, profile_id)
    transactional = delivery["kind"] == "transactional"
    subscription = None
    if delivery["service_id"] is not None:
        slug = conn.execute(sql.SERVICE_SLUG, {"service_id": delivery["service_id"]}).scalar_one()
        state = next((s["state"] for s in consent.subscriptions_of(conn, profile_id, now)
                      if s["service"] == slug), None)
        subscription = SubscriptionState(state) if state else None
    address = addresses[0] if addresses else None
    status = (quarantine.status_of(conn, address, settings.quarantine, now).status
              if address else quarantine.rules.Status.VALID)
    recipient = reachability.Recipient(
        channel=channel.value, address=address.value if address else None,
        address_valid=address is not None, optouts=optouts, address_status=status,
        subscription=subscription, targets_service=delivery["service_id"] is not None)
    rules = [{"rule": rule.value, "passed": ok} for rule, ok in
             reachability.checks(recipient, transactional=transactional)]
    target = conn.execute(sql.target_of_profile(delivery_id, profile_id)).first()
    # Duplicate, fatigue and target limit depend on the whole target: the analysis says.
    for rule in (Exclusion.DUPLICATE, Exclusion.FATIGUE, Exclusion.TARGET_LIMIT):
        decided = target is not None and target.reason == rule.value
        rules.append({"rule": rule.value,
                      "passed": None if target is None else not decided})
    failed = next((r["rule"] for r in rules if r["passed"] is False), None)
    return {"profile": profile_id, "delivery": delivery_id, "channel": channel.value,
            "address": address.value if address else None, "rules": rules,
            "verdict": "excluded" if failed else "send", "reason": failed,
            "analysed": None if target is None else {"state": target.state,
                                                     "reason": target.reason}}
