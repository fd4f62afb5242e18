"""The consent ledger: chained, tamper-evident, concurrent, and verifiable after erasure."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from consentry.consent import service as consent
from consentry.domain.channels import Channel
from consentry.domain.ledger import Origin
from consentry.ledger import service as ledger
from consentry.privacy import service as privacy
from consentry.profiles import service as profiles
from consentry.settings import Settings
from consentry.store.schema import ledger_events, ledger_heads
from helpers import cli, run_in_threads

OP = Origin(source="cli", actor="os:tester")
PAGE = Origin(source="landing_page", ip="203.0.113.9", user_agent="Mozilla/5.0",
              wording="newsletter-consent-v3")


def _fill(engine: sa.Engine, settings: Settings, n: int = 20) -> list[int]:
    ids = []
    with engine.begin() as conn:
        service = consent.create_service(conn, "news", Channel.EMAIL, "News")
        for i in range(n):
            pid = profiles.create(conn, settings, profiles.NewProfile(email=f"p{i}@example.com"),
                                  OP)
            consent.subscribe(conn, pid, service, PAGE)
            if i % 3 == 0:
                consent.opt_out(conn, pid, Channel.EMAIL, OP)
            ids.append(pid)
    return ids


def _verify(engine: sa.Engine) -> ledger.Verification:
    with engine.connect() as conn:
        return ledger.verify(conn)


def test_untouched_ledger_verifies(engine, settings):
    _fill(engine, settings)
    result = _verify(engine)
    assert result.ok and result.events == 27


def test_events_carry_who_how_and_from_where(engine, settings):
    pid = _fill(engine, settings, 1)[0]
    with engine.connect() as conn:
        events = ledger.history(conn, pid, ["p0@example.com"])
    sub = next(e for e in events if e["kind"] == "subscription")
    assert sub["source"] == "landing_page" and sub["ip"] == "203.0.113.9"
    assert sub["user_agent"] == "Mozilla/5.0" and sub["wording"] == "newsletter-consent-v3"
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)


def _tamper(engine: sa.Engine, sql: str) -> int:
    """Change the ledger with plain SQL, as an intruder or a careless admin would."""
    with engine.begin() as conn:
        target = conn.execute(sa.text(
            "SELECT id FROM ledger_events WHERE kind = 'opt_out' ORDER BY id LIMIT 1 OFFSET 2"
        )).scalar_one()
        conn.execute(sa.text(sql), {"id": target})
    return target


def test_changed_state_is_reported(engine, settings, db_url):
    _fill(engine, settings)
    bad = _tamper(engine, "UPDATE ledger_events SET new_state = 'opted_in' WHERE id = :id")
    result = _verify(engine)
    assert not result.ok and result.problem.event_id == bad
    run = cli(db_url, "ledger", "verify")
    assert run.exit_code == 1 and f"event {bad} " in run.stderr


def test_changed_personal_data_is_reported(engine, settings):
    _fill(engine, settings)
    bad = _tamper(engine, "UPDATE ledger_events SET note = 'forged' WHERE id = :id")
    assert _verify(engine).problem.event_id == bad


def test_changed_time_is_reported(engine, settings):
    _fill(engine, settings)
    with engine.begin() as conn:
        row = conn.execute(sa.select(ledger_events.c.id).order_by(ledger_events.c.id)
                           .limit(1)).scalar_one()
        conn.execute(ledger_events.update().where(ledger_events.c.id == row)
                     .values(at=datetime(2020, 1, 1, tzinfo=UTC)))
    assert _verify(engine).problem.event_id == row


def test_deleted_event_is_reported(engine, settings):
    _fill(engine, settings)
    deleted = _tamper(engine, "DELETE FROM ledger_events WHERE id = :id")
    problem = _verify(engine).problem
    assert problem is not None and "missing" in problem.why
    # The first event after the gap in the same partition is the one named.
    with engine.connect() as conn:
        assert problem.event_id > deleted
        assert conn.execute(sa.select(ledger_events.c.partition).where(
            ledger_events.c.id == problem.event_id)).scalar_one() == problem.partition


def test_deleted_last_event_is_reported_by_its_head(engine, settings):
    _fill(engine, settings)
    with engine.begin() as conn:
        last = conn.execute(sa.select(sa.func.max(ledger_events.c.id))).scalar_one()
        conn.execute(ledger_events.delete().where(ledger_events.c.id == last))
    problem = _verify(engine).problem
    assert problem is not None and problem.event_id is None and "head" in problem.why


def test_forged_redaction_is_reported(engine, settings):
    _fill(engine, settings)
    bad = _tamper(engine, "UPDATE ledger_events SET redacted = TRUE, note = NULL, "
                          "address = NULL, ip = NULL, user_agent = NULL, evidence = NULL "
                          "WHERE id = :id")
    problem = _verify(engine).problem
    assert problem.event_id == bad and "erasure" in problem.why


def test_erasure_keeps_the_chain_verifiable(engine, settings):
    ids = _fill(engine, settings)
    with engine.begin() as conn:
        privacy.erase(conn, settings, ids[0], OP)
        remaining = conn.execute(sa.select(ledger_events).where(
            ledger_events.c.profile_id == ids[0])).mappings().all()
    assert all(r["address"] is None and r["ip"] is None for r in remaining)
    assert any(r["kind"] == "erasure" for r in remaining)
    assert _verify(engine).ok


def test_concurrent_writers_append_without_breaking_chains(pg_engine):
    """Eight threads opting profiles in and out at once on PostgreSQL: every event lands and
    every chain verifies (writers to different partitions do not wait for each other)."""
    settings = Settings()
    with pg_engine.begin() as conn:
        ids = [profiles.create(conn, settings, profiles.NewProfile(email=f"c{i}@example.com"),
                               OP) for i in range(40)]
    def worker(offset: int) -> None:
        for round_ in range(10):
            pid = ids[(offset * 5 + round_) % len(ids)]
            with pg_engine.begin() as conn:
                consent.opt_out(conn, pid, Channel.SMS, OP)
            with pg_engine.begin() as conn:
                consent.opt_in(conn, pid, Channel.SMS, OP)

    run_in_threads(worker, 8)
    result = _verify(pg_engine)
    assert result.ok, result.problem
    with pg_engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.sum(ledger_heads.c.seq))).scalar_one()
    assert total == result.events >= 80
