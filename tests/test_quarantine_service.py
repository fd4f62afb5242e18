"""Quarantine through the service layer: the state machine stored, the seed's two-profiles case,
bulk and time-based releases, on both databases."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from consentry.consent import service as consent
from consentry.domain import quarantine as rules
from consentry.domain.addresses import normalize_email, normalize_phone
from consentry.domain.errors import ConsentryError
from consentry.domain.ledger import Origin
from consentry.profiles import service as profiles
from consentry.quarantine import service as quarantine
from consentry.settings import Settings
from consentry.store.schema import ledger_events
from consentry.store.schema import quarantine as quarantine_table
from helpers import run_in_threads

OP = Origin(source="cli", actor="os:tester")
BOUNCE = Origin(source="bounce", actor="system", evidence={"message_id": "<dsn-1@mx.example>"})
T0 = datetime(2026, 3, 1, 8, tzinfo=UTC)


def test_two_profiles_of_one_person(engine, settings):
    """The seed: opting out one profile leaves the other reachable; quarantining the address
    stops both."""
    with engine.begin() as conn:
        a = profiles.create(conn, settings, profiles.NewProfile(email="Max@Example.de"), OP)
        b = profiles.create(conn, settings, profiles.NewProfile(email="max@example.de"), OP)
        assert profiles.duplicates(conn) == [
            {"channel": "email", "address": "max@example.de", "profiles": [a, b]}]
        consent.opt_out(conn, a, None, OP)
        shown_a = profiles.show(conn, settings, a)
        shown_b = profiles.show(conn, settings, b)
        assert shown_a["opted_out"] and not shown_a["addresses"][0]["reachable"]
        assert not shown_b["opted_out"] and shown_b["addresses"][0]["reachable"]
        assert shown_b["addresses"][0]["shared_with"] == [a]

        quarantine.set_status(conn, normalize_email("MAX@example.de"), rules.Status.DENYLISTED,
                              "manual", OP, settings.quarantine)
        for pid in (a, b):
            address = profiles.show(conn, settings, pid)["addresses"][0]
            assert address["status"] == "denylisted" and not address["reachable"]


def test_hard_bounce_quarantines_with_evidence_in_the_ledger(engine, settings):
    address = normalize_email("gone@example.com")
    with engine.begin() as conn:
        change = quarantine.apply(conn, address, rules.Failure("user_unknown"), BOUNCE,
                                  settings.quarantine, now=T0)
        assert change.changed and change.after.status is rules.Status.QUARANTINED
        shown = quarantine.show(conn, address, settings.quarantine, now=T0)
        event = conn.execute(sa.select(ledger_events)).mappings().one()
    assert shown["status"] == "quarantined" and shown["reason"] == "user_unknown"
    assert shown["error_count"] == 1 and shown["last_error_at"] == T0.isoformat()
    assert event["kind"] == "quarantine" and event["source"] == "bounce"
    assert event["old_state"] == "valid" and event["new_state"] == "quarantined(user_unknown)"
    assert event["evidence"] == {"message_id": "<dsn-1@mx.example>"}
    assert event["profile_id"] is None and event["address"] == "gone@example.com"


def test_soft_errors_count_once_a_day_then_quarantine(engine, settings):
    address = normalize_email("full@example.com")
    with engine.begin() as conn:
        for hours in (0, 1, 2):  # one significant error, two inside the interval
            quarantine.apply(conn, address, rules.Failure("mailbox_full"), BOUNCE,
                             settings.quarantine, now=T0 + timedelta(hours=hours))
        assert quarantine.status_of(conn, address, settings.quarantine,
                                    T0 + timedelta(hours=3)).error_count == 1
        for day in range(1, 5):
            quarantine.apply(conn, address, rules.Failure("mailbox_full"), BOUNCE,
                             settings.quarantine, now=T0 + timedelta(days=day))
        entry = quarantine.status_of(conn, address, settings.quarantine, T0 + timedelta(days=4))
    assert entry.status is rules.Status.QUARANTINED and entry.error_count == 5


def test_success_resets_erroneous(engine, settings):
    address = normalize_email("flaky@example.com")
    with engine.begin() as conn:
        quarantine.apply(conn, address, rules.Failure("unreachable"), BOUNCE,
                         settings.quarantine, now=T0)
        change = quarantine.apply(conn, address, rules.Success(), OP, settings.quarantine,
                                  now=T0 + timedelta(hours=5))
    assert change.before.status is rules.Status.ERRONEOUS
    assert change.after.status is rules.Status.VALID and change.after.error_count == 0


def test_time_based_releases_are_applied_by_the_periodic_task(engine, settings):
    q = settings.quarantine
    erroneous = normalize_email("soft@example.com")
    full = normalize_email("full@example.com")
    bad = normalize_email("gone@example.com")
    with engine.begin() as conn:
        quarantine.apply(conn, erroneous, rules.Failure("unreachable"), BOUNCE, q, now=T0)
        quarantine.set_status(conn, full, rules.Status.QUARANTINED, "mailbox_full", OP, q,
                              now=T0)
        quarantine.apply(conn, full, rules.Failure("mailbox_full"), BOUNCE, q, now=T0)
        quarantine.apply(conn, bad, rules.Failure("user_unknown"), BOUNCE, q, now=T0)
        assert quarantine.release_due(conn, q, now=T0 + timedelta(days=10) -
                                      timedelta(seconds=1)) == 0
        assert quarantine.release_due(conn, q, now=T0 + timedelta(days=10)) == 1
        assert quarantine.release_due(conn, q, now=T0 + timedelta(days=30)) == 1
        assert quarantine.release_due(conn, q, now=T0 + timedelta(days=3650)) == 0
        statuses = dict(conn.execute(sa.select(quarantine_table.c.address_key,
                                               quarantine_table.c.status)).all())
        sources = [r for r, in conn.execute(sa.select(ledger_events.c.source).where(
            ledger_events.c.new_state == "valid"))]
    assert statuses == {"soft@example.com": "valid", "full@example.com": "valid",
                        "gone@example.com": "quarantined"}
    assert sources == ["expiry", "expiry"]


def test_bulk_release_by_reason_domain_and_window(engine, settings):
    """The Gmail outage of December 2020: false 5.1.1 for good addresses on one domain."""
    q = settings.quarantine
    outage = T0 + timedelta(days=1)
    with engine.begin() as conn:
        for i in range(5):
            quarantine.apply(conn, normalize_email(f"u{i}@gmail.example"),
                             rules.Failure("user_unknown"), BOUNCE, q, now=outage)
        quarantine.apply(conn, normalize_email("old@gmail.example"),
                         rules.Failure("user_unknown"), BOUNCE, q, now=T0 - timedelta(days=90))
        quarantine.apply(conn, normalize_email("x@other.example"),
                         rules.Failure("user_unknown"), BOUNCE, q, now=outage)
        quarantine.set_status(conn, normalize_email("spam@gmail.example"),
                              rules.Status.DENYLISTED, "complaint", OP, q, now=outage)
        with pytest.raises(ConsentryError):
            quarantine.bulk_release(conn, OP, q)
        kwargs = {"reason": "user_unknown", "domain": "GMAIL.example", "since": T0,
                  "until": T0 + timedelta(days=2)}
        assert quarantine.bulk_release(conn, OP, q, dry_run=True, **kwargs) == 5
        assert quarantine.bulk_release(conn, OP, q, **kwargs) == 5
        assert quarantine.bulk_release(conn, OP, q, **kwargs) == 0
        still = {r for r, in conn.execute(sa.select(quarantine_table.c.address_key).where(
            quarantine_table.c.status != "valid"))}
        released_events = conn.execute(sa.select(sa.func.count()).select_from(ledger_events)
                                       .where(ledger_events.c.new_state == "valid")).scalar()
    assert still == {"old@gmail.example", "x@other.example", "spam@gmail.example"}
    assert released_events == 5


def test_phone_addresses_match_on_e164(engine, settings):
    with engine.begin() as conn:
        quarantine.set_status(conn, normalize_phone("0151 2345 6789", "DE"),
                              rules.Status.DENYLISTED, "sms_stop", OP, settings.quarantine)
        shown = quarantine.show(conn, normalize_phone("+49 151 23456789"), settings.quarantine)
    assert shown["status"] == "denylisted" and shown["reason"] == "sms_stop"


def test_unknown_reason_is_refused(engine, settings):
    with engine.begin() as conn, pytest.raises(ConsentryError, match="unknown reason"):
        quarantine.set_status(conn, normalize_email("a@example.com"), rules.Status.QUARANTINED,
                              "because", OP, settings.quarantine)


def test_concurrent_bounces_for_one_address_are_serialized(pg_engine):
    """Two bounces for one address processed at once: the second sees the first's result
    (no lost update), so the recorded transitions form one unbroken sequence."""
    engine, settings = pg_engine, Settings()
    address = normalize_email("busy@example.com")
    q = settings.quarantine
    with engine.begin() as conn:
        quarantine.apply(conn, address, rules.Failure("unreachable"), BOUNCE, q, now=T0)
    barrier = threading.Barrier(2)

    def bounce(i: int) -> None:
        day = (1, 3)[i]
        with engine.begin() as conn:
            barrier.wait()
            quarantine.apply(conn, address, rules.Failure("unreachable"), BOUNCE, q,
                             now=T0 + timedelta(days=day, minutes=day))

    run_in_threads(bounce, 2)
    with engine.connect() as conn:
        steps = conn.execute(sa.select(ledger_events.c.old_state, ledger_events.c.new_state)
                             .order_by(ledger_events.c.id)).all()
    assert steps[0] == ("valid", "erroneous(1)")
    for (_, previous_new), (old, _) in itertools.pairwise(steps):
        assert old == previous_new, steps


def test_first_bounces_for_a_new_address_race_without_error(pg_engine):
    """Two transactions creating the entry for one unknown address at once: the loser of the
    insert goes again through the row lock instead of failing."""
    engine, settings = pg_engine, Settings()
    address = normalize_email("new@example.com")
    barrier = threading.Barrier(4)

    def bounce(minute: int) -> None:
        with engine.begin() as conn:
            barrier.wait()
            quarantine.apply(conn, address, rules.Failure("user_unknown"), BOUNCE,
                             settings.quarantine, now=T0 + timedelta(minutes=minute))

    run_in_threads(bounce, 4)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(quarantine_table)).mappings().all()
        steps = conn.execute(sa.select(ledger_events.c.old_state, ledger_events.c.new_state)
                             ).all()
    assert len(rows) == 1 and rows[0]["status"] == "quarantined"
    assert steps == [("valid", "quarantined(user_unknown)")]
