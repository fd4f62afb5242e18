"""Delivery analysis: every exclusion rule in domain.md's order, set-based, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from consentry.consent import service as consent
from consentry.delivery import service as deliveries
from consentry.delivery.content import Content, ContentError
from consentry.domain import quarantine as qrules
from consentry.domain.addresses import normalize_email
from consentry.domain.channels import Channel
from consentry.domain.errors import ConsentryError
from consentry.domain.ledger import Origin
from consentry.profiles import service as profiles
from consentry.quarantine import service as quarantine
from consentry.settings import Settings
from consentry.store.schema import analysis_duplicates, delivery_targets, ledger_events
from consentry.store.schema import profiles as profiles_table
from helpers import cli

OP = Origin(source="cli", actor="os:tester")
T0 = datetime(2026, 6, 1, 9, tzinfo=UTC)
MAIL = Content(subject="Hallo {{ profile.first_name }}",
               text="Hi {{ profile.first_name }}\nUnsubscribe: {{ unsubscribe_url }}\n",
               html="<p>Hi {{ profile.first_name }}</p><a href='{{ unsubscribe_url }}'>x</a>")


def _people(engine, settings) -> dict[str, int]:
    """One profile per exclusion rule, subscribed to `news` unless the rule says otherwise."""
    ids: dict[str, int] = {}
    with engine.begin() as conn:
        news = consent.create_service(conn, "news", Channel.EMAIL, "News")
        for name, kw in [
            ("ok", {"email": "ok@example.com"}),
            ("address_missing", {"phone": "+4915123456789"}),
            ("opted_out", {"email": "out@example.com"}),
            ("channel_opted_out", {"email": "chan@example.com"}),
            ("not_subscribed", {"email": "nosub@example.com"}),
            ("denylisted", {"email": "deny@example.com"}),
            ("quarantined", {"email": "quar@example.com"}),
            ("duplicate", {"email": "OK@example.com"}),
            ("allowlisted_ok", {"email": "allow@example.com"}),
            ("sms_optout_ok", {"email": "smsout@example.com"}),
            ("erroneous_ok", {"email": "soft@example.com"}),
        ]:
            ids[name] = profiles.create(conn, settings, profiles.NewProfile(**kw), OP, now=T0)
            consent.subscribe(conn, ids[name], news, OP, now=T0)
        consent.opt_out(conn, ids["opted_out"], None, OP)
        consent.opt_out(conn, ids["channel_opted_out"], Channel.EMAIL, OP)
        consent.opt_out(conn, ids["sms_optout_ok"], Channel.SMS, OP)
        consent.unsubscribe(conn, ids["not_subscribed"], news, OP)  # has a row, not active
        q = settings.quarantine
        quarantine.set_status(conn, normalize_email("deny@example.com"),
                              qrules.Status.DENYLISTED, "complaint", OP, q)
        quarantine.apply(conn, normalize_email("quar@example.com"),
                         qrules.Failure("user_unknown"), OP, q)
        quarantine.set_status(conn, normalize_email("allow@example.com"),
                              qrules.Status.ALLOWLISTED, "manual", OP, q)
        quarantine.apply(conn, normalize_email("soft@example.com"),
                         qrules.Failure("unreachable"), OP, q)
        # The duplicate is younger than "ok": the oldest profile keeps the address.
        conn.execute(profiles_table.update().where(profiles_table.c.id == ids["duplicate"])
                     .values(created_at=T0 + timedelta(hours=1)))
    return ids


def _reasons(engine, delivery_id) -> dict[int, tuple[str, str | None]]:
    with engine.connect() as conn:
        return {r.profile_id: (r.state, r.reason) for r in conn.execute(
            sa.select(delivery_targets).where(delivery_targets.c.delivery_id == delivery_id))}


@pytest.mark.parametrize("bind", ["engine", "connection"])
def test_every_rule_gives_its_reason(engine, settings, bind):
    """Given the engine, PostgreSQL writes the target in chunks on parallel connections; given
    a connection, everything happens in its transaction. Both give the same target."""
    ids = _people(engine, settings)
    with engine.begin() as conn:
        did = deliveries.create(conn, settings, deliveries.NewDelivery(
            name="June", channel=Channel.EMAIL, service="news", audience="all", content=MAIL),
            "os:tester")
        if bind == "connection":
            result = deliveries.analyze(conn, settings, did)
    if bind == "engine":
        result = deliveries.analyze(engine, settings, did)
    assert result == {"delivery": did, "audience": 11, "to_send": 4, "excluded": {
        "address_missing": 1, "opted_out": 1, "channel_opted_out": 1, "not_subscribed": 1,
        "denylisted": 1, "quarantined": 1, "duplicate": 1}}
    reasons = _reasons(engine, did)
    for name, pid in ids.items():
        expected = ("pending", None) if name.endswith("ok") else ("excluded", name)
        assert reasons[pid] == expected, name


def test_rule_order_first_failing_rule_wins(engine, settings):
    with engine.begin() as conn:
        pid = profiles.create(conn, settings, profiles.NewProfile(email="all@example.com"), OP)
        consent.opt_out(conn, pid, None, OP)
        consent.opt_out(conn, pid, Channel.EMAIL, OP)
        quarantine.set_status(conn, normalize_email("all@example.com"),
                              qrules.Status.DENYLISTED, "complaint", OP, settings.quarantine)
        did = deliveries.create(conn, settings, deliveries.NewDelivery(
            name="x", channel=Channel.EMAIL, audience="all", content=MAIL), None)
        deliveries.analyze(conn, settings, did)
        explained = deliveries.explain(conn, settings, pid, did)
    assert _reasons(engine, did)[pid] == ("excluded", "opted_out")
    assert explained["verdict"] == "excluded" and explained["reason"] == "opted_out"
    assert [(r["rule"], r["passed"]) for r in explained["rules"]][:7] == [
        ("address_missing", True), ("address_invalid", True), ("opted_out", False),
        ("channel_opted_out", False), ("not_subscribed", True), ("denylisted", False),
        ("quarantined", True)]


def test_transactional_skips_consent_but_not_quarantine(engine, settings):
    ids = _people(engine, settings)
    receipt = Content(subject="Your receipt", text="Thanks for your order.")
    with engine.begin() as conn:
        did = deliveries.create(conn, settings, deliveries.NewDelivery(
            name="receipt", channel=Channel.EMAIL, kind="transactional", service="news",
            audience="all", content=receipt), None)
    result = deliveries.analyze(engine, settings, did)
    assert result["excluded"] == {"address_missing": 1, "denylisted": 1, "quarantined": 1,
                                  "duplicate": 1}
    reasons = _reasons(engine, did)
    for name in ("opted_out", "channel_opted_out", "not_subscribed"):
        assert reasons[ids[name]] == ("pending", None)


def test_service_audience_is_the_services_subscription_rows(engine, settings):
    _people(engine, settings)
    with engine.begin() as conn:
        did = deliveries.create(conn, settings, deliveries.NewDelivery(
            name="news", channel=Channel.EMAIL, service="news", content=MAIL), None)
    result = deliveries.analyze(engine, settings, did)
    assert result["audience"] == 11 and result["excluded"]["not_subscribed"] == 1


def test_expired_subscription_counts_as_not_subscribed_before_the_task_runs(engine, settings):
    with engine.begin() as conn:
        trial = consent.create_service(conn, "trial", Channel.EMAIL, "Trial", validity_days=1)
        pid = profiles.create(conn, settings, profiles.NewProfile(email="t@example.com"), OP)
        consent.subscribe(conn, pid, trial, OP, now=T0)
        did = deliveries.create(conn, settings, deliveries.NewDelivery(
            name="x", channel=Channel.EMAIL, service="trial", content=MAIL), None)
        assert deliveries.analyze(conn, settings, did, now=T0 + timedelta(hours=23))[
            "to_send"] == 1
        assert deliveries.analyze(conn, settings, did, now=T0 + timedelta(days=1))[
            "excluded"] == {"not_subscribed": 1}


def test_fatigue_and_target_limit(engine, settings):
    with engine.begin() as conn:
        ids = [profiles.create(conn, settings, profiles.NewProfile(email=f"p{i}@example.com"),
                               OP) for i in range(20)]
        first = deliveries.create(conn, settings, deliveries.NewDelivery(
            name="first", channel=Channel.EMAIL, audience="all", content=MAIL), None)
        deliveries.analyze(conn, settings, first, now=T0)
        # Pretend the first five got it two days ago.
        conn.execute(delivery_targets.update().where(
            delivery_targets.c.delivery_id == first,
            delivery_targets.c.profile_id.in_(ids[:5])).values(state="sent",
                                                                sent_at=T0 - timedelta(days=2)))
        tired = deliveries.create(conn, settings, deliveries.NewDelivery(
            name="second", channel=Channel.EMAIL, audience="all", content=MAIL, fatigue_max=1,
            fatigue_days=7, target_limit=10), None)
    result = deliveries.analyze(engine, settings, tired, now=T0)
    with engine.begin() as conn:
        recent = deliveries.create(conn, settings, deliveries.NewDelivery(
            name="third", channel=Channel.EMAIL, audience="all", content=MAIL, fatigue_max=1,
            fatigue_days=1), None)
        assert deliveries.analyze(conn, settings, recent, now=T0)["to_send"] == 20
    assert result["excluded"] == {"fatigue": 5, "target_limit": 5} and result["to_send"] == 10
    reasons = _reasons(engine, tired)
    assert all(reasons[i] == ("excluded", "fatigue") for i in ids[:5])


def test_filter_audience_and_proofs(engine, settings):
    with engine.begin() as conn:
        de = profiles.create(conn, settings, profiles.NewProfile(
            email="de@example.com", locale="de-DE", attributes={"tier": "gold"}), OP)
        profiles.create(conn, settings, profiles.NewProfile(email="en@example.com",
                                                            locale="en-GB"), OP)
        did = deliveries.create(conn, settings, deliveries.NewDelivery(
            name="de", channel=Channel.EMAIL, audience="filter",
            audience_filter=(("locale", "de-DE"), ("attr.tier", "gold")), content=MAIL), None)
        assert deliveries.analyze(conn, settings, did)["to_send"] == 1
        targets = conn.execute(sa.select(delivery_targets.c.profile_id).where(
            delivery_targets.c.delivery_id == did)).scalars().all()
        assert targets == [de]
        proof = deliveries.create(conn, settings, deliveries.NewDelivery(
            name="proof", channel=Channel.EMAIL, audience="proof",
            proof_addresses=("seed@example.org",), content=MAIL), None)
        events_before = conn.execute(sa.select(sa.func.count()).select_from(ledger_events)
                                     ).scalar()
        assert deliveries.analyze(conn, settings, proof) == {
            "delivery": proof, "audience": 1, "excluded": {}, "to_send": 1}
        assert conn.execute(sa.select(sa.func.count()).select_from(ledger_events)
                            ).scalar() == events_before


@pytest.mark.parametrize(("content", "message"), [
    (Content(subject="x", text="no link", html="<a href='{{ unsubscribe_url }}'>u</a>"),
     "in its text part"),
    (Content(subject="x", text="{{ unsubscribe_url }}", html="<p>none</p>"), "in its html part"),
    (Content(subject="x", text="Hi {{ profile.first_name }\n{{ unsubscribe_url }}"),
     "text: line 1"),
    (Content(subject="x", text="line one\n{{ unsubscribe_url }}\n{{ nope.x }}"), "text: line 3"),
    (Content(subject="", text="{{ unsubscribe_url }}"), "subject"),
])
def test_content_checks(engine, settings, content, message):
    with engine.begin() as conn, pytest.raises(ContentError, match=message):
        deliveries.create(conn, settings, deliveries.NewDelivery(
            name="bad", channel=Channel.EMAIL, audience="all", content=content), None)


def test_creation_errors(engine, settings):
    with engine.begin() as conn:
        consent.create_service(conn, "alerts", Channel.SMS, "Alerts")
        for new in (
            deliveries.NewDelivery(name="x", channel=Channel.EMAIL, service="alerts",
                                   content=MAIL),
            deliveries.NewDelivery(name="x", channel=Channel.EMAIL, content=MAIL),
            deliveries.NewDelivery(name="x", channel=Channel.EMAIL, audience="all", kind="promo",
                                   content=MAIL),
            deliveries.NewDelivery(name="x", channel=Channel.EMAIL, audience="filter",
                                   audience_filter=(("password", "x"),), content=MAIL),
            deliveries.NewDelivery(name="x", channel=Channel.EMAIL, audience="all",
                                   fatigue_max=3, content=MAIL),
        ):
            with pytest.raises(ConsentryError):
                deliveries.create(conn, settings, new, None)


def test_analysis_through_the_cli(db_url, tmp_path):
    text = tmp_path / "mail.txt"
    text.write_text("Hallo {{ profile.first_name }}\n{{ unsubscribe_url }}\n", encoding="utf-8")
    cli(db_url, "services", "create", "news", "--channel", "email", "--label", "News")
    for i in range(3):
        cli(db_url, "profiles", "add", "--email", f"u{i}@example.com", "--first-name", f"U{i}")
        cli(db_url, "subscribe", f"u{i}@example.com", "news")
    cli(db_url, "optout", "u1@example.com")
    created = cli(db_url, "delivery", "create", "--name", "Hello", "--channel", "email",
                  "--service", "news", "--subject", "Hi", "--text", str(text), "--json")
    assert created.exit_code == 0, created.stderr
    did = created.json()["id"]
    analysed = cli(db_url, "delivery", "analyze", str(did), "--json")
    assert analysed.json() == {"delivery": did, "audience": 3, "excluded": {"opted_out": 1},
                               "to_send": 2}
    log = cli(db_url, "delivery", "exclusions", str(did), "--json").json_lines()
    assert [(r["address"], r["reason"]) for r in log] == [("u1@example.com", "opted_out")]
    explained = cli(db_url, "explain", "u1@example.com", str(did), "--json").json()
    assert explained["verdict"] == "excluded" and explained["reason"] == "opted_out"
    assert cli(db_url, "explain", "u0@example.com", str(did), "--json").json()[
        "verdict"] == "send"
    bad = cli(db_url, "delivery", "create", "--name", "x", "--channel", "email", "--audience",
              "all", "--subject", "s", "--text", str(tmp_path / "missing.txt"))
    assert bad.exit_code == 1 and "missing.txt" in bad.stderr


def test_push_targets_one_row_per_device_token(engine, settings):
    """Push: a row per token, a row recording address_missing for a profile without one, and
    a token two profiles hold sent once; the target ids stay unique within the delivery."""
    token_a, token_b = "tok-aaaaaaaaaaaa", "tok-bbbbbbbbbbbb"
    with engine.begin() as conn:
        two = profiles.create(conn, settings, profiles.NewProfile(push_tokens=(
            profiles.PushToken(token_a), profiles.PushToken(token_b))), OP, now=T0)
        none = profiles.create(conn, settings, profiles.NewProfile(email="x@example.com"), OP,
                               now=T0)
        shares = profiles.create(conn, settings, profiles.NewProfile(push_tokens=(
            profiles.PushToken(token_b),)), OP, now=T0 + timedelta(days=1))
        did = deliveries.create(conn, settings, deliveries.NewDelivery(
            "Push", Channel.PUSH, audience="all", content=Content(subject="Hi", text="Hello")),
            "tester")
    summary = deliveries.analyze(engine, settings, did)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(delivery_targets.c.id, delivery_targets.c.profile_id,
                                      delivery_targets.c.address, delivery_targets.c.reason)
                            .where(delivery_targets.c.delivery_id == did)).all()
    assert summary["to_send"] == 2
    assert sorted((r.profile_id, r.address, r.reason) for r in rows) == sorted([
        (two, token_a, None), (two, token_b, None), (none, None, "address_missing"),
        (shares, token_b, "duplicate")])
    assert len({r.id for r in rows}) == 4


def _crowd(engine, settings, n: int) -> list[int]:
    """n profiles subscribed to `news`, every fifth sharing its address with a profile a
    hundred ids earlier (so the two holders fall in different chunks), every seventh opted out
    and every eleventh address quarantined."""
    with engine.begin() as conn:
        news = consent.create_service(conn, "news", Channel.EMAIL, "News")
        ids = []
        for i in range(n):
            address = f"p{i - 100 if i % 5 == 0 and i >= 100 else i}@example.com"
            pid = profiles.create(conn, settings, profiles.NewProfile(email=address), OP,
                                  now=T0 + timedelta(minutes=i))
            consent.subscribe(conn, pid, news, OP, now=T0)
            if i % 7 == 3:
                consent.opt_out(conn, pid, None, OP)
            if i % 11 == 4:
                quarantine.apply(conn, normalize_email(address), qrules.Failure("user_unknown"),
                                 OP, settings.quarantine)
            ids.append(pid)
    return ids


def _new(engine, settings, name: str) -> int:
    with engine.begin() as conn:
        return deliveries.create(conn, settings, deliveries.NewDelivery(
            name=name, channel=Channel.EMAIL, service="news", content=MAIL), None)


def test_chunked_analysis_gives_the_target_of_a_single_transaction(engine, settings,
                                                                   monkeypatch):
    """Many small chunks: duplicates whose holders lie in different chunks are still ranked
    across the whole target, and the summary counted from the chunks matches the rows."""
    monkeypatch.setattr(deliveries, "CHUNKS_PER_CONNECTION", 12)
    ids = _crowd(engine, settings, 400)
    if engine.dialect.name == "postgresql":  # a histogram, so the duplicates split by address
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE profiles")
            bounds = conn.execute(deliveries.sql.key_histogram_pg("email")).scalar()
        assert len(deliveries.sql.key_ranges(bounds, 2)) == 2
    chunked, single = _new(engine, settings, "chunked"), _new(engine, settings, "single")
    result = deliveries.analyze(engine, settings, chunked)
    with engine.begin() as conn:
        assert deliveries.analyze(conn, settings, single) == {**result, "delivery": single}
        assert deliveries.summary(conn, chunked) == result
        verdicts_left = conn.execute(sa.select(sa.func.count()).select_from(
            analysis_duplicates)).scalar()
    assert _reasons(engine, chunked) == _reasons(engine, single)
    assert result["excluded"]["duplicate"] > 0 and result["excluded"]["opted_out"] > 0
    reasons = _reasons(engine, chunked)
    assert reasons[ids[100]] == ("excluded", "duplicate")  # shares p0's address, younger
    assert verdicts_left == 0
    # Rows the rules exclude keep no address of their own; the log shows the profile's.
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.select(delivery_targets.c.profile_id,
                                             delivery_targets.c.address)
                                   .where(delivery_targets.c.delivery_id == chunked)).all())
        log = deliveries.exclusion_log(conn, chunked, reason="opted_out", limit=10_000)
    assert stored[ids[3]] is None and stored[ids[1]] == "p1@example.com"
    assert {r["profile_id"]: r["address"] for r in log}[ids[3]] == "p3@example.com"
    assert len(log) == result["excluded"]["opted_out"]


def test_reanalysis_replaces_the_target(engine, settings):
    ids = _crowd(engine, settings, 30)
    did = _new(engine, settings, "again")
    first = deliveries.analyze(engine, settings, did)
    with engine.begin() as conn:
        consent.opt_out(conn, ids[0], None, OP)
    second = deliveries.analyze(engine, settings, did)
    assert second["audience"] == first["audience"] == 30
    assert second["excluded"]["opted_out"] == first["excluded"]["opted_out"] + 1
    assert _reasons(engine, did)[ids[0]] == ("excluded", "opted_out")


def test_failed_chunk_leaves_a_draft_and_no_rows(pg_engine, pg_url, monkeypatch):
    """A chunk that fails in the database: every row the other chunks wrote is removed and
    the delivery is a draft again, to be analysed once more."""
    settings = Settings(database_url=pg_url)
    monkeypatch.setattr(deliveries, "CHUNKS_PER_CONNECTION", 4)
    _crowd(pg_engine, settings, 60)
    did = _new(pg_engine, settings, "fails")
    real = deliveries.sql.insert_targets_counted
    calls = []

    def failing_third(delivery, now, profile_ids):
        calls.append(profile_ids)
        if len(calls) == 3:  # a statement PostgreSQL refuses: division by zero
            return sa.select(sa.literal(1) / sa.literal(0), sa.null(), sa.null())
        return real(delivery, now, profile_ids)

    monkeypatch.setattr(deliveries.sql, "insert_targets_counted", failing_third)
    with pytest.raises(sa.exc.DataError, match="division by zero"):
        deliveries.analyze(pg_engine, settings, did)
    with pg_engine.connect() as conn:
        assert deliveries.get(conn, did)["state"] == "draft"
        assert deliveries.summary(conn, did)["audience"] == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(analysis_duplicates)
                            ).scalar() == 0
    monkeypatch.setattr(deliveries.sql, "insert_targets_counted", real)
    assert deliveries.analyze(pg_engine, settings, did)["audience"] == 60


def test_one_analysis_of_a_delivery_at_a_time(pg_engine, pg_url):
    settings = Settings(database_url=pg_url)
    _crowd(pg_engine, settings, 5)
    did = _new(pg_engine, settings, "busy")
    with pg_engine.connect() as other:
        other.execute(deliveries.sql.TRY_ANALYSIS_LOCK_PG, {"delivery_id": did})
        with pytest.raises(ConsentryError, match="being analysed"):
            deliveries.analyze(pg_engine, settings, did)
        other.execute(deliveries.sql.ANALYSIS_UNLOCK_PG, {"delivery_id": did})
    assert deliveries.analyze(pg_engine, settings, did)["audience"] == 5


def test_quarantine_is_one_hash_for_the_whole_chunk(pg_engine, pg_url):
    """The chunk's plan looks the quarantine up in a hash built once: a plain subplan would
    scan the quarantined addresses again for every profile."""
    settings = Settings(database_url=pg_url)
    _crowd(pg_engine, settings, 40)
    did = _new(pg_engine, settings, "plan")
    with pg_engine.connect() as conn:
        delivery = deliveries.get(conn, did)
        quarantined = conn.execute(deliveries.sql.QUARANTINE_ROWS_PG).scalar_one()
        for statement in (deliveries.sql.ANALYSIS_SETTINGS_PG
                          + deliveries.sql.INSERT_SETTINGS_PG
                          + (deliveries.sql.chunk_work_mem(quarantined, 10**7),)):
            conn.exec_driver_sql(statement)
        chunk = deliveries.sql.insert_targets_counted(delivery, T0, (1, 10**7))
        text = str(chunk.compile(conn, compile_kwargs={"literal_binds": True}))
        plan = "\n".join(conn.exec_driver_sql(
            "EXPLAIN (VERBOSE) " + text.replace("%%", "%").replace("%", "%%")).scalars())
        conn.rollback()
    assert plan.count("hashed SubPlan") == 2, plan  # denylisted, quarantined


def test_chunk_work_mem_fits_the_quarantine_and_the_chunk():
    assert deliveries.sql.chunk_work_mem(1000, 1000) == "SET LOCAL work_mem = '64MB'"
    assert deliveries.sql.chunk_work_mem(2_000_000, 1000) == "SET LOCAL work_mem = '489MB'"
    assert deliveries.sql.chunk_work_mem(10, 5_000_000) == "SET LOCAL work_mem = '306MB'"


def test_key_ranges_split_at_the_histogram_and_cover_every_key():
    assert deliveries.sql.key_ranges(None, 4) == [(None, None)]
    assert deliveries.sql.key_ranges(["a", "b", "c", "d"], 1) == [(None, None)]
    assert deliveries.sql.key_ranges(["a", "b", "c", "d"], 2) == [(None, "c"), ("c", None)]
    assert deliveries.sql.key_ranges(["a", "b", "c", "d"], 4) == [
        (None, "b"), ("b", "c"), ("c", "d"), ("d", None)]
    assert deliveries.sql.key_ranges(["a", "a", "a"], 3) == [(None, "a"), ("a", None)]
