"""The demo data (`consentry demo`): counts, examples, ledger, refusal, determinism."""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import phonenumbers
import pytest
import sqlalchemy as sa

from browser_helpers import wait_for, wait_for_health
from consentry.consent import service as consent
from consentry.demo import DemoSummary, build_demo
from consentry.domain.errors import ConsentryError
from consentry.domain.ledger import GENESIS, PARTITIONS
from consentry.ledger import service as ledger
from consentry.profiles import service as profiles
from consentry.settings import Settings
from consentry.store.engine import make_engine
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
from helpers import free_ports

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


# --- `consentry demo` running: web app, outbox, the printed links --------------------------


def _get(client: httpx.Client, url: str) -> httpx.Response:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code, response.text)
    return response


def test_demo_serves_the_pages_and_keeps_the_confirmation_in_its_outbox(tmp_path):
    database = f"sqlite:///{tmp_path / 'demo.db'}"  # not migrated: demo does it
    web_port, outbox_port = free_ports(2)
    base = f"http://127.0.0.1:{web_port}"
    output = tmp_path / "demo.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTRY_")}
    # A relay configured in the environment is not used: demo mail goes to the outbox only.
    env["CONSENTRY_SMTP_URL"] = "smtp://127.0.0.1:9"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "consentry", "demo", "--profiles", "60", "--port",
             str(web_port), "--outbox-port", str(outbox_port), "--database", database],
            cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for_health(base, process, output)
        log = output.read_text()
        assert f"{base}/s/newsletter" in log and f"{base}/demo/outbox" in log, log
        [preferences] = re.findall(rf"{re.escape(base)}/p/\S+", log)
        with httpx.Client(timeout=30) as client:
            center = _get(client, preferences).text  # the showcase profile's, prefilled
            assert "j•••@example.de" in center and 'type="checkbox"' in center
            assert "No messages yet" in _get(client, f"{base}/demo/outbox").text

            form = _get(client, f"{base}/s/newsletter?lang=en").text
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
            wording = re.search(r'name="wording" value="([^"]+)"', form).group(1)
            answer = client.post(f"{base}/s/newsletter?lang=en", data={
                "csrf_token": csrf, "wording": wording, "address": "new.reader@example.org",
                "consent": "yes"})
            assert answer.status_code == 200, answer.text

            listing = wait_for(lambda: "/demo/outbox/1" in (
                text := client.get(f"{base}/demo/outbox?lang=en").text) and text,
                "the confirmation in the outbox")
            assert "Please confirm your subscription" in listing
            shown = _get(client, f"{base}/demo/outbox/1?lang=en")
            assert shown.headers["cache-control"] == "no-store"
            [link] = set(re.findall(rf'href="({re.escape(base)}/c/[^"]+)"', shown.text))
            confirm = _get(client, link).text
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', confirm).group(1)
            done = client.post(link, data={"csrf_token": csrf})
            assert done.status_code == 200 and "You are subscribed" in done.text
            assert client.get(f"{base}/demo/outbox/99").status_code == 404
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, output.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = output.read_text()
    assert "demo stopped" in log and "Traceback" not in log, log
    engine = make_engine(database)
    try:
        with engine.connect() as conn:
            pid = profiles.resolve(conn, "new.reader@example.org")
            states = {s["service"]: s["state"] for s in
                      consent.subscriptions_of(conn, pid)}
            assert states == {"newsletter": "subscribed"}
            assert ledger.verify(conn).ok
    finally:
        engine.dispose()


def test_serve_has_no_outbox(engine, settings):
    from fastapi.testclient import TestClient

    from consentry.web.app import create_app

    assert TestClient(create_app(settings, engine)).get("/demo/outbox").status_code == 404


def test_demo_no_serve_builds_and_prints_the_tips(db_url):
    from helpers import cli

    run = cli(db_url, "demo", "--profiles", "60", "--no-serve")
    assert run.exit_code == 0, run.stderr
    assert "Demo data in" in run.stdout and "ledger verify" in run.stdout
    again = cli(db_url, "demo", "--no-serve")
    assert again.exit_code == 0 and "already" in again.stdout
