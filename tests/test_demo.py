"""The demo data (`consentry demo`): counts, examples, ledger, refusal, determinism."""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import phonenumbers
import pytest
import sqlalchemy as sa

from consentry.demo import DemoSummary, build_demo
from consentry.domain.errors import ConsentryError
from consentry.domain.ledger import GENESIS, PARTITIONS
from consentry.ledger import service as ledger
from consentry.profiles import service as profiles
from consentry.settings import Settings
from consentry.store.schema import (
    ledger_events,
    ledger_heads,
    metadata,
    opt_outs,
    push_tokens,
    quarantine,
    services,
    subscriptions,
)
from consentry.store.schema import profiles as profiles_table
from consentry.store.types import utcnow

SMALL = 300
DOC_NETS = [ipaddress.ip_network(n) for n in
            ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]
DEMO_DOMAINS = ("example.com", "example.de", "example.org")


def _scalar(conn: sa.Connection, sql: str) -> int:
    return int(conn.execute(sa.text(sql)).scalar_one())


def _shared(conn: sa.Connection) -> list[list[int]]:
    """The holders of every address held by more than one profile (raw SQL, all channels)."""
    holders: dict[tuple[str, str], list[int]] = defaultdict(list)
    for pid, key in conn.execute(sa.select(profiles_table.c.id, profiles_table.c.email_key)
                                 .where(profiles_table.c.email_key.is_not(None))):
        holders["email", key].append(pid)
    for pid, phone in conn.execute(sa.select(profiles_table.c.id, profiles_table.c.phone)
                                   .where(profiles_table.c.phone.is_not(None))):
        holders["sms", phone].append(pid)
    for pid, token in conn.execute(sa.select(push_tokens.c.profile_id, push_tokens.c.token)):
        holders["push", token].append(pid)
    return [ids for ids in holders.values() if len(set(ids)) > 1]


def _check_addresses(conn: sa.Connection) -> None:
    """Realistic people and addresses, none of them routable."""
    rows = conn.execute(sa.select(profiles_table)).mappings().all()
    tokens = conn.execute(sa.select(push_tokens)).mappings().all()
    ips = conn.execute(sa.select(ledger_events.c.ip)
                       .where(ledger_events.c.ip.is_not(None))).scalars().all()
    assert {r["locale"] for r in rows} == {"de-DE", "de-AT", "de-CH", "en-GB", "en-US"}
    for r in rows:
        assert r["email"] or r["phone"]
        if r["email"]:
            domain = r["email_key"].rpartition("@")[2]
            assert domain.endswith(DEMO_DOMAINS), domain
        if r["phone"]:
            assert phonenumbers.is_valid_number(phonenumbers.parse(r["phone"]))
        assert r["first_name"] and r["last_name"] and r["attributes"]
    assert sum("loyalty_tier" in r["attributes"] for r in rows) == len(rows) - 1  # not the seed
    assert 0.45 * len(rows) <= sum(1 for r in rows if r["phone"]) <= 0.75 * len(rows)
    assert any(r["external_id"] and r["external_id"].startswith("CRM-") for r in rows)
    assert tokens and {t["platform"] for t in tokens} <= {"ios", "android"}
    assert all(t["app_id"] for t in tokens)
    assert ips and all(any(ipaddress.ip_address(ip) in net for net in DOC_NETS) for ip in ips)


def test_summary_counts_match_the_database_and_data_look_real(engine: sa.Engine,
                                                               settings: Settings) -> None:
    summary = build_demo(engine, settings, profiles=SMALL)
    with engine.connect() as conn:
        assert summary.profiles == SMALL == _scalar(conn, "SELECT count(*) FROM profiles")
        assert summary.opted_out == _scalar(
            conn, "SELECT count(*) FROM opt_outs WHERE scope = 'all'")
        assert summary.channel_opted_out == _scalar(conn, """
            SELECT count(DISTINCT o.profile_id) FROM opt_outs o WHERE o.scope <> 'all'
            AND NOT EXISTS (SELECT 1 FROM opt_outs a
                            WHERE a.profile_id = o.profile_id AND a.scope = 'all')""")
        assert summary.quarantined == _scalar(
            conn, "SELECT count(*) FROM quarantine WHERE status = 'quarantined'")
        assert summary.denylisted == _scalar(
            conn, "SELECT count(*) FROM quarantine WHERE status = 'denylisted'")
        assert summary.services == sorted(
            conn.execute(sa.select(services.c.slug)).scalars()) == ["newsletter", "sms-alerts"]
        shared = _shared(conn)
        assert summary.shared_addresses == len(shared) >= 2

        # The seed's two-profiles case: two holders each, exactly one of them opted out.
        globally_out = set(conn.execute(sa.select(opt_outs.c.profile_id)
                                        .where(opt_outs.c.scope == "all")).scalars())
        for ids in shared:
            assert len(ids) == 2
            assert len(globally_out & set(ids)) == 1

        # Roughly the proportions asked for, with a 300-profile sample's leeway.
        assert 0.02 * SMALL <= summary.opted_out <= 0.10 * SMALL
        assert 1 <= summary.channel_opted_out <= 0.08 * SMALL
        assert summary.quarantined >= 3 and summary.denylisted >= 2
        states = dict(conn.execute(
            sa.select(subscriptions.c.state, sa.func.count())
            .join(services, services.c.id == subscriptions.c.service_id)
            .where(services.c.slug == "newsletter").group_by(subscriptions.c.state)).all())
        assert set(states) == {"pending", "subscribed", "unsubscribed", "expired"}
        with_email = _scalar(conn, "SELECT count(email) FROM profiles")
        assert 0.35 * with_email <= states["subscribed"] <= 0.65 * with_email
        sms_states = set(conn.execute(
            sa.select(subscriptions.c.state).join(services)
            .where(services.c.slug == "sms-alerts")).scalars())
        assert {"subscribed", "unsubscribed"} <= sms_states
        statuses = {(r.status, r.reason) for r in conn.execute(
            sa.select(quarantine.c.status, quarantine.c.reason))}
        assert {("quarantined", "user_unknown"), ("quarantined", "mailbox_full"),
                ("denylisted", "complaint"), ("denylisted", "sms_stop"),
                ("allowlisted", "manual"), ("erroneous", "unreachable")} <= statuses
        _check_addresses(conn)


def _email(show: dict[str, Any]) -> dict[str, Any]:
    return next(a for a in show["addresses"] if a["channel"] == "email")


def _sms(show: dict[str, Any]) -> dict[str, Any]:
    return next(a for a in show["addresses"] if a["channel"] == "sms")


def _sub(show: dict[str, Any], slug: str) -> str | None:
    return next((s["state"] for s in show["subscriptions"] if s["service"] == slug), None)


EXPECTED: dict[str, Callable[[dict[str, Any]], bool]] = {
    "subscribed": lambda s: (not s["opted_out"] and _sub(s, "newsletter") == "subscribed"
                             and _email(s)["status"] == "valid" and _email(s)["reachable"]),
    "opted_out": lambda s: s["opted_out"] and not _email(s)["reachable"],
    "channel_opted_out": lambda s: (not s["opted_out"] and s["channels"]["email"]["opted_out"]
                                    and not s["channels"]["sms"]["opted_out"]),
    "pending": lambda s: _sub(s, "newsletter") == "pending",
    "expired": lambda s: _sub(s, "newsletter") == "expired",
    "quarantined": lambda s: (_email(s)["status"], _email(s)["reason"])
    == ("quarantined", "user_unknown"),
    "mailbox_full": lambda s: (_email(s)["status"], _email(s)["reason"])
    == ("quarantined", "mailbox_full"),
    "erroneous": lambda s: _email(s)["status"] == "erroneous" and _email(s)["reachable"],
    "denylisted": lambda s: ((_email(s)["status"], _email(s)["reason"])
                             == ("denylisted", "complaint")
                             and _sub(s, "newsletter") == "unsubscribed"),
    "sms_stop": lambda s: ((_sms(s)["status"], _sms(s)["reason"]) == ("denylisted", "sms_stop")
                           and _sub(s, "sms-alerts") == "unsubscribed"),
    "allowlisted": lambda s: _email(s)["status"] == "allowlisted",
    "two_profiles": lambda s: s["opted_out"] and len(_email(s)["shared_with"]) == 1,
    "two_profiles_other": lambda s: (not s["opted_out"] and _email(s)["reachable"]
                                     and len(_email(s)["shared_with"]) == 1),
    "outage": lambda s: (_email(s)["status"], _email(s)["reason"])
    == ("quarantined", "user_unknown"),
}


def test_examples_resolve_and_are_in_the_state_their_name_says(engine: sa.Engine,
                                                               settings: Settings) -> None:
    summary = build_demo(engine, settings, profiles=SMALL)
    assert set(summary.examples) == set(EXPECTED)
    with engine.connect() as conn:
        shows = {name: profiles.show(conn, settings, profiles.resolve(conn, ref))
                 for name, ref in summary.examples.items()}
        for name, show in shows.items():
            assert EXPECTED[name](show), (name, summary.examples[name], show)
        # The two profiles share one address (matched case-insensitively): as a REF it is
        # ambiguous, and each names the other.
        crm, web = shows["two_profiles"], shows["two_profiles_other"]
        assert _email(crm)["shared_with"] == [web["id"]]
        assert _email(web)["shared_with"] == [crm["id"]]
        with pytest.raises(ConsentryError, match="held by 2 profiles"):
            profiles.resolve(conn, crm["email"])
    assert summary.examples["opted_out"] == "anna.schmidt@example.de"


def test_ledger_verifies_and_reads_in_time_order(engine: sa.Engine, settings: Settings) -> None:
    before = utcnow()
    build_demo(engine, settings, profiles=SMALL)
    with engine.connect() as conn:
        result = ledger.verify(conn)
        assert result.ok, str(result.problem)
        events = conn.execute(sa.select(ledger_events).order_by(ledger_events.c.id)
                              ).mappings().all()
    assert result.events == len(events) > SMALL
    sources = {e["source"] for e in events}
    assert {"landing_page", "import", "cli", "bounce", "complaint", "sms_keyword",
            "expiry", "one_click"} <= sources
    last_at: dict[int, Any] = {}
    for e in events:
        assert before - timedelta(days=761) <= e["at"] <= utcnow()
        if e["profile_id"] is not None:
            assert e["at"] >= last_at.get(e["profile_id"], e["at"]), e
            last_at[e["profile_id"]] = e["at"]
        if e["source"] == "landing_page":
            assert e["ip"] and e["user_agent"]
    signups = [e for e in events if e["source"] == "landing_page" and e["service"] ==
               "newsletter" and e["new_state"] in ("pending", "subscribed")]
    assert signups and any(e["wording"] == "newsletter-consent-v3" for e in signups)
    assert all(e["wording"] and e["wording"].startswith("newsletter-consent-v")
               for e in signups)
    hard = [e for e in events if e["new_state"] == "quarantined(user_unknown)"
            and e["channel"] == "email"]
    assert hard and all(e["evidence"]["type"] in ("dsn", "smtp") for e in hard)
    assert any(e["evidence"].get("message_id", "").startswith("<") for e in hard)
    mailbox_full = [e for e in events if e["channel"] == "email"
                    and e["source"] == "bounce" and e["new_state"].startswith("erroneous")]
    assert mailbox_full  # soft errors counted over several days before a quarantine


def test_a_second_build_is_refused(engine: sa.Engine, settings: Settings) -> None:
    build_demo(engine, settings, profiles=60)
    with pytest.raises(ConsentryError, match="already holds profiles"):
        build_demo(engine, settings, profiles=60)
    with engine.connect() as conn:
        assert _scalar(conn, "SELECT count(*) FROM profiles") == 60
        assert ledger.verify(conn).ok


def test_too_few_profiles_is_a_user_error(engine: sa.Engine, settings: Settings) -> None:
    with pytest.raises(ConsentryError, match="at least"):
        build_demo(engine, settings, profiles=10)
    with engine.connect() as conn:
        assert _scalar(conn, "SELECT count(*) FROM services") == 0


def _wipe(engine: sa.Engine) -> None:
    """Back to an empty, migrated database (on both kinds)."""
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
        conn.execute(ledger_heads.insert(), [{"partition": p, "seq": 0, "hash": GENESIS}
                                             for p in range(PARTITIONS)])


def test_same_seed_same_demo(engine: sa.Engine, settings: Settings) -> None:
    first = build_demo(engine, settings, profiles=150, seed=11)
    _wipe(engine)
    again = build_demo(engine, settings, profiles=150, seed=11)
    assert again == first
    assert isinstance(again, DemoSummary)
    _wipe(engine)
    other = build_demo(engine, settings, profiles=150, seed=12)
    assert other != first
    with engine.connect() as conn:
        assert ledger.verify(conn).ok
