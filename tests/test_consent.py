"""Opt-out, opt-in, services and subscriptions on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from consentry.consent import service as consent
from consentry.domain.channels import Channel
from consentry.domain.consent import SubscriptionState
from consentry.domain.errors import Conflict, ConsentryError, NotFound
from consentry.domain.ledger import Origin
from consentry.profiles import service as profiles
from consentry.settings import Settings
from consentry.store.schema import ledger_events, opt_outs
from consentry.store.schema import profiles as profiles_table

OPERATOR = Origin(source="cli", actor="os:tester", note="by phone")
T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)


def _profile(engine: sa.Engine, settings: Settings, email: str = "a@example.com") -> int:
    with engine.begin() as conn:
        return profiles.create(conn, settings, profiles.NewProfile(email=email), OPERATOR)


def _events(engine: sa.Engine, profile_id: int) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(ledger_events).where(ledger_events.c.profile_id == profile_id)
            .order_by(ledger_events.c.id)).mappings()]


def test_global_optout_blocks_every_channel_and_deletes_nothing(engine, settings):
    pid = _profile(engine, settings)
    with engine.begin() as conn:
        assert consent.opt_out(conn, pid, None, OPERATOR, now=T0)
        assert not consent.opt_out(conn, pid, None, OPERATOR, now=T0)  # already: no new event
        state = consent.optouts(conn, pid)
        assert state.global_ and all(state.blocks(c) for c in ("email", "sms", "push"))
        assert conn.execute(sa.select(sa.func.count()).select_from(profiles_table)).scalar() == 1
    events = _events(engine, pid)
    assert [(e["kind"], e["channel"], e["old_state"], e["new_state"]) for e in events] == [
        ("opt_out", "all", "opted_in", "opted_out")]
    assert events[0]["actor"] == "os:tester" and events[0]["note"] == "by phone"
    assert events[0]["source"] == "cli" and events[0]["at"] == T0


def test_channel_optout_blocks_that_channel_only(engine, settings):
    pid = _profile(engine, settings)
    with engine.begin() as conn:
        consent.opt_out(conn, pid, Channel.SMS, OPERATOR)
        state = consent.optouts(conn, pid)
    assert state.blocks("sms") and not state.blocks("email") and not state.blocks("push")
    assert not state.global_


def test_optin_undoes_the_optout_and_both_are_recorded(engine, settings):
    pid = _profile(engine, settings)
    with engine.begin() as conn:
        consent.opt_out(conn, pid, Channel.EMAIL, OPERATOR, now=T0)
        assert not consent.opt_in(conn, pid, None, OPERATOR)  # no global opt-out to undo
        assert consent.opt_in(conn, pid, Channel.EMAIL, OPERATOR, now=T0 + timedelta(hours=1))
        assert not consent.optouts(conn, pid).scopes
        assert conn.execute(sa.select(sa.func.count()).select_from(opt_outs)).scalar() == 0
    assert [(e["kind"], e["channel"]) for e in _events(engine, pid)] == [
        ("opt_out", "email"), ("opt_in", "email")]


def test_service_creation_rules(engine):
    with engine.begin() as conn:
        s = consent.create_service(conn, "news", Channel.EMAIL, "Newsletter",
                                   double_opt_in=True, validity_days=30)
        assert s.slug == "news" and s.double_opt_in and s.validity_days == 30
        with pytest.raises(Conflict):
            consent.create_service(conn, "news", Channel.EMAIL, "Again")
        for bad in ("News", "-x", "", "a b"):
            with pytest.raises(ConsentryError):
                consent.create_service(conn, bad, Channel.EMAIL, "X")
        with pytest.raises(ConsentryError):
            consent.create_service(conn, "x", Channel.EMAIL, "X", validity_days=0)
        with pytest.raises(NotFound):
            consent.get_service(conn, "nope")
        assert consent.get_service(conn, "news") == s


def test_double_opt_in_stays_pending_until_confirmed(engine, settings):
    pid = _profile(engine, settings)
    with engine.begin() as conn:
        s = consent.create_service(conn, "news", Channel.EMAIL, "News", double_opt_in=True)
        first = consent.subscribe(conn, pid, s, OPERATOR, now=T0)
        assert first.state is SubscriptionState.PENDING and first.needs_confirmation
        again = consent.subscribe(conn, pid, s, OPERATOR, now=T0)
        assert not again.changed and again.state is SubscriptionState.PENDING
        confirmed = consent.subscribe(conn, pid, s, OPERATOR, confirmed=True, now=T0)
        assert confirmed.state is SubscriptionState.SUBSCRIBED and confirmed.changed
    kinds = [(e["old_state"], e["new_state"], e["service"]) for e in _events(engine, pid)]
    assert kinds == [(None, "pending", "news"), ("pending", "subscribed", "news")]


def test_resubscribe_after_unsubscribe_is_a_new_consent(engine, settings):
    pid = _profile(engine, settings)
    with engine.begin() as conn:
        s = consent.create_service(conn, "news", Channel.EMAIL, "News")
        assert consent.subscribe(conn, pid, s, OPERATOR).state is SubscriptionState.SUBSCRIBED
        assert consent.unsubscribe(conn, pid, s, OPERATOR).changed
        assert not consent.unsubscribe(conn, pid, s, OPERATOR).changed
        again = consent.subscribe(conn, pid, s, OPERATOR)
        assert again.changed and again.state is SubscriptionState.SUBSCRIBED
        assert [x["state"] for x in consent.subscriptions_of(conn, pid)] == ["subscribed"]
    assert [(e["old_state"], e["new_state"]) for e in _events(engine, pid)] == [
        (None, "subscribed"), ("subscribed", "unsubscribed"), ("unsubscribed", "subscribed")]


def test_subscriptions_expire_by_themselves_after_their_validity(engine, settings):
    a = _profile(engine, settings, "a@example.com")
    b = _profile(engine, settings, "b@example.com")
    with engine.begin() as conn:
        s = consent.create_service(conn, "trial", Channel.EMAIL, "Trial", validity_days=10)
        forever = consent.create_service(conn, "forever", Channel.EMAIL, "Forever")
        consent.subscribe(conn, a, s, OPERATOR, now=T0)
        consent.subscribe(conn, b, s, OPERATOR, now=T0 + timedelta(days=5))
        consent.subscribe(conn, a, forever, OPERATOR, now=T0)
        assert consent.expire_subscriptions(conn, now=T0 + timedelta(days=10) -
                                            timedelta(microseconds=1)) == 0
        # Read before the periodic task ran: already shown as expired.
        assert consent.subscriptions_of(conn, a, now=T0 + timedelta(days=10))[1]["state"] == \
            "expired"
        assert consent.expire_subscriptions(conn, now=T0 + timedelta(days=10)) == 1
        assert consent.expire_subscriptions(conn, now=T0 + timedelta(days=10)) == 0
        states = {x["service"]: x["state"]
                  for x in consent.subscriptions_of(conn, a, now=T0 + timedelta(days=10))}
        assert states == {"trial": "expired", "forever": "subscribed"}
        assert consent.subscriptions_of(conn, b, now=T0 + timedelta(days=10))[0][
            "state"] == "subscribed"
        # An expired subscription can be renewed: a new consent with a new period.
        renewed = consent.subscribe(conn, a, s, OPERATOR, now=T0 + timedelta(days=11))
        assert renewed.changed and renewed.state is SubscriptionState.SUBSCRIBED
    expiry = [e for e in _events(engine, a) if e["source"] == "expiry"]
    assert [(e["old_state"], e["new_state"], e["service"]) for e in expiry] == [
        ("subscribed", "expired", "trial")]


def test_service_counts(engine, settings):
    a = _profile(engine, settings, "a@example.com")
    b = _profile(engine, settings, "b@example.com")
    with engine.begin() as conn:
        s = consent.create_service(conn, "news", Channel.EMAIL, "News", double_opt_in=True)
        consent.subscribe(conn, a, s, OPERATOR)
        consent.subscribe(conn, b, s, OPERATOR, confirmed=True)
        rows = consent.list_services(conn)
    assert rows[0]["subscriptions"] == {"pending": 1, "subscribed": 1, "unsubscribed": 0,
                                        "expired": 0}
