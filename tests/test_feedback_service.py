"""Applying feedback reports: quarantine, denylist, unsubscribe, review, once per message,
the delivery and target found through VERP; and the alerting figures. Both databases."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from consentry.consent import service as consent
from consentry.delivery import service as deliveries
from consentry.delivery.content import Content
from consentry.domain.addresses import normalize_email
from consentry.domain.channels import Channel
from consentry.domain.feedback import Kind, RecipientResult, Report
from consentry.domain.ledger import Origin
from consentry.domain.quarantine import FailureClass
from consentry.feedback import rates
from consentry.feedback import service as feedback
from consentry.profiles import service as profiles
from consentry.quarantine import service as quarantine
from consentry.store.schema import delivery_targets, feedback_messages, ledger_events
from consentry.tokens import Signer

OP = Origin(source="cli", actor="os:tester")
T0 = datetime(2026, 6, 1, 9, tzinfo=UTC)
MAIL = Content(subject="News", text="Hi\nUnsubscribe: {{ unsubscribe_url }}\n",
               html="<p>Hi</p><a href='{{ unsubscribe_url }}'>x</a>")


def _hard(address: str, diagnostic: str = "550 5.1.1 no such user") -> RecipientResult:
    return RecipientResult(address, "5.1.1", FailureClass.HARD, "user_unknown", diagnostic,
                           "failed")


def _item(report: Report, key: str, raw: bytes = b"raw message") -> feedback.Incoming:
    return feedback.Incoming(report, key, "file", "test", raw)


def _status(conn, settings, address: str) -> str:
    return quarantine.show(conn, normalize_email(address), settings.quarantine)["status"]


def _signer(engine, settings) -> Signer:
    with engine.begin() as conn:
        return Signer.for_database(conn, settings)


def test_hard_bounce_quarantines_once_with_evidence(engine, settings):
    signer = _signer(engine, settings)
    report = Report(Kind.BOUNCE, (_hard("Gone@Example.com"),), message_id="dsn-1@mx")
    with engine.begin() as conn:
        [first] = feedback.apply_batch(conn, settings, signer, [_item(report, "mid:dsn-1@mx")])
    assert first.status == "applied"
    assert first.changes == [{"address": "Gone@example.com", "channel": "email",
                              "before": "valid", "after": "quarantined(user_unknown)"}]
    with engine.begin() as conn:
        assert _status(conn, settings, "gone@example.com") == "quarantined"
        [again] = feedback.apply_batch(conn, settings, signer, [_item(report, "mid:dsn-1@mx")])
        assert again.status == "duplicate" and again.changes == []
        events = conn.execute(sa.select(ledger_events.c.source, ledger_events.c.evidence)
                              .where(ledger_events.c.kind == "quarantine")).all()
        stored = conn.execute(sa.select(feedback_messages.c.raw, feedback_messages.c.status)).all()
    assert len(events) == 1 and events[0].source == "bounce"
    evidence = events[0].evidence
    evidence = json.loads(evidence) if isinstance(evidence, str) else evidence
    assert evidence["feedback"] == "mid:dsn-1@mx" and evidence["status"] == "5.1.1"
    assert evidence["diagnostic"] == "550 5.1.1 no such user"
    assert [(bytes(r.raw), r.status) for r in stored] == [(b"raw message", "applied")]


def test_complaint_denylists_and_soft_bounce_counts(engine, settings):
    signer = _signer(engine, settings)
    complaint = Report(Kind.COMPLAINT, (RecipientResult(
        "angry@example.org", None, FailureClass.COMPLAINT, "complaint", "abuse"),),
        feedback_type="abuse")
    soft = Report(Kind.BOUNCE, (RecipientResult(
        "full@example.org", "4.2.2", FailureClass.SOFT, "mailbox_full", "quota"),))
    ignored = Report(Kind.AUTOREPLY, (RecipientResult(
        "away@example.org", None, FailureClass.IGNORED, "autoreply", "out of office"),))
    with engine.begin() as conn:
        results = feedback.apply_batch(conn, settings, signer, [
            _item(complaint, "k1"), _item(soft, "k2"), _item(ignored, "k3"),
            _item(soft, "k2")])  # the same message twice in one batch counts once
        assert [r.status for r in results] == ["applied", "applied", "ignored", "duplicate"]
        assert _status(conn, settings, "angry@example.org") == "denylisted"
        shown = quarantine.show(conn, normalize_email("full@example.org"), settings.quarantine)
        assert (shown["status"], shown["error_count"]) == ("erroneous", 1)
        assert _status(conn, settings, "away@example.org") == "valid"


def test_delivered_report_resets_an_erroneous_address(engine, settings):
    signer = _signer(engine, settings)
    with engine.begin() as conn:
        quarantine.apply(conn, normalize_email("soft@example.net"),
                         quarantine.rules.Failure("unreachable"), OP, settings.quarantine)
        assert _status(conn, settings, "soft@example.net") == "erroneous"
        delayed = Report(Kind.DELIVERED, (RecipientResult(
            "soft@example.net", "4.4.7", FailureClass.IGNORED, "unreachable", "delayed",
            "delayed"),))
        delivered = Report(Kind.DELIVERED, (RecipientResult(
            "soft@example.net", "2.0.0", FailureClass.IGNORED, "not_defined", "ok",
            "delivered"),))
        feedback.apply_batch(conn, settings, signer, [_item(delayed, "d1")])
        assert _status(conn, settings, "soft@example.net") == "erroneous"
        feedback.apply_batch(conn, settings, signer, [_item(delivered, "d2")])
        assert _status(conn, settings, "soft@example.net") == "valid"


def test_unreadable_messages_are_kept_for_review(engine, settings):
    signer = _signer(engine, settings)
    with engine.begin() as conn:
        [unknown, empty, bad_address] = feedback.apply_batch(conn, settings, signer, [
            _item(Report(Kind.UNKNOWN), "u1", b"\x00garbage"),
            _item(Report(Kind.BOUNCE), "u2"),
            _item(Report(Kind.BOUNCE, (_hard("not an address"),)), "u3")])
        assert (unknown.status, empty.status) == ("review", "review")
        assert bad_address.status == "review"
        assert "not an address" in bad_address.notes[0]
        listed = feedback.review(conn)
        assert {r["summary"]["kind"] for r in listed} == {"unknown", "bounce"}
        assert feedback.raw_message(conn, listed[-1]["id"]) in (b"\x00garbage", b"raw message")


def _sent_delivery(engine, settings, *, service: bool) -> tuple[int, dict[str, int], int]:
    """A marketing delivery to two profiles, analysed; targets marked sent."""
    with engine.begin() as conn:
        news = consent.create_service(conn, "news", Channel.EMAIL, "News")
        ids = {}
        for email in ("ann@example.com", "bob@example.com"):
            ids[email] = profiles.create(conn, settings, profiles.NewProfile(email=email), OP)
            consent.subscribe(conn, ids[email], news, OP, confirmed=True)
        did = deliveries.create(conn, settings, deliveries.NewDelivery(
            "June", Channel.EMAIL, service="news" if service else None,
            audience="service" if service else "all", content=MAIL), "tester")
        deliveries.analyze(conn, settings, did)
        conn.execute(delivery_targets.update().where(delivery_targets.c.delivery_id == did)
                     .values(state="sent", sent_at=T0))
        targets = dict(conn.execute(sa.select(delivery_targets.c.address_key,
                                              delivery_targets.c.id)
                                    .where(delivery_targets.c.delivery_id == did)).all())
    return did, targets, ids["ann@example.com"]


def test_verp_return_path_names_delivery_and_target(engine, settings):
    """The DSN names a forwarding destination; the signed return path says who we sent to."""
    did, targets, _ = _sent_delivery(engine, settings, service=True)
    signer = _signer(engine, settings)
    tag = signer.address_tag("b", did, targets["ann@example.com"])
    report = Report(Kind.BOUNCE, (_hard("ann.forwarded@elsewhere.example"),),
                    envelope_to=(f"{tag}@{settings.bounce_domain}",))
    forged = Report(Kind.BOUNCE, (_hard("ghost@example.com"),),
                    envelope_to=(f"b-{did}-{targets['bob@example.com']}-{'0' * 20}@x",))
    with engine.begin() as conn:
        [applied, other] = feedback.apply_batch(conn, settings, signer, [
            _item(report, "v1"), _item(forged, "v2")])
        assert applied.delivery_id == did
        assert _status(conn, settings, "ann@example.com") == "quarantined"
        assert _status(conn, settings, "ann.forwarded@elsewhere.example") == "valid"
        # A forged tag names nobody: the report's own recipient is what it is about.
        assert other.delivery_id is None
        assert _status(conn, settings, "bob@example.com") == "valid"
        figures = rates.for_delivery(conn, did)
    assert (figures.attempted, figures.bounces, figures.hard_bounces) == (2, 1, 1)
    assert figures.bounce_rate == 0.5
    assert figures.alerts(settings.feedback) == [
        {"metric": "bounce_rate", "value": 0.5, "threshold": 0.05, "level": "alert"}]


def test_complaint_found_through_our_message_id_counts_for_the_delivery(engine, settings):
    did, targets, _ = _sent_delivery(engine, settings, service=True)
    signer = _signer(engine, settings)
    target = targets["bob@example.com"]
    # ARF reports often redact the recipient; our Message-ID in the original still names it.
    report = Report(Kind.COMPLAINT, (RecipientResult(
        "", None, FailureClass.COMPLAINT, "complaint", "abuse"),),
        original_message_id=f"{did}.{target}.0123456789ab@{settings.bounce_domain}")
    with engine.begin() as conn:
        [applied] = feedback.apply_batch(conn, settings, signer, [_item(report, "c1")])
        assert applied.status == "applied" and applied.delivery_id == did
        assert _status(conn, settings, "bob@example.com") == "denylisted"
        figures = rates.for_delivery(conn, did)
    assert (figures.sent, figures.complaints) == (2, 1)
    assert [a["level"] for a in figures.alerts(settings.feedback)] == ["alert"]


def test_mailto_unsubscribe_leaves_the_service_of_the_message(engine, settings):
    did, targets, ann = _sent_delivery(engine, settings, service=True)
    signer = _signer(engine, settings)
    tag = signer.address_tag("u", did, targets["ann@example.com"])
    report = Report(Kind.UNSUBSCRIBE, envelope_to=(f"{tag}@{settings.bounce_domain}",))
    untagged = Report(Kind.UNSUBSCRIBE, envelope_to=("unsubscribe@example.com",))
    with engine.begin() as conn:
        [done, kept] = feedback.apply_batch(conn, settings, signer, [
            _item(report, "m1"), _item(untagged, "m2")])
        assert done.status == "applied" and kept.status == "review"
        states = {s["service"]: s["state"] for s in consent.subscriptions_of(conn, ann)}
        assert states == {"news": "unsubscribed"}
        sources = conn.execute(sa.select(ledger_events.c.source).where(
            ledger_events.c.profile_id == ann, ledger_events.c.kind == "subscription")
            .order_by(ledger_events.c.id)).scalars().all()
    assert sources[-1] == "mail_unsubscribe"


def test_mailto_unsubscribe_without_service_opts_out_of_the_channel(engine, settings):
    did, targets, ann = _sent_delivery(engine, settings, service=False)
    signer = _signer(engine, settings)
    tag = signer.address_tag("u", did, targets["ann@example.com"])
    report = Report(Kind.UNSUBSCRIBE, envelope_to=(f"{tag.upper()}@{settings.bounce_domain}",))
    with engine.begin() as conn:
        [done] = feedback.apply_batch(conn, settings, signer, [_item(report, "m3")])
        assert done.changes == [{"profile": ann, "channel": "email", "after": "opted_out"}]
        assert consent.optouts(conn, ann).scopes == {"email"}


def test_daily_rates(engine, settings):
    did, _, _ = _sent_delivery(engine, settings, service=True)
    signer = _signer(engine, settings)
    with engine.begin() as conn:
        conn.execute(sa.update(deliveries.sql.d).where(deliveries.sql.d.c.id == did)
                     .values(started_at=T0))
        feedback.apply_batch(conn, settings, signer, [
            _item(Report(Kind.BOUNCE, (_hard("ann@example.com"),)), "r1")], now=T0)
        days = rates.per_day(conn, days=3, now=T0 + timedelta(days=1))
    assert [(day, r.attempted, r.bounces) for day, r in days] == [("2026-06-01", 2, 1)]


def test_erasure_drops_the_feedback_about_a_profile(engine, settings):
    from consentry.privacy import service as privacy
    from consentry.store.schema import feedback_results

    did, targets, ann = _sent_delivery(engine, settings, service=True)
    signer = _signer(engine, settings)
    tag = signer.address_tag("b", did, targets["ann@example.com"])
    with engine.begin() as conn:
        feedback.apply_batch(conn, settings, signer, [_item(Report(
            Kind.BOUNCE, (_hard("ann@example.com"),), envelope_to=(f"{tag}@x.example",)),
            "e1", b"To: ann")])
        privacy.erase(conn, settings, ann, OP)
        message = conn.execute(sa.select(feedback_messages)).mappings().one()
        result = conn.execute(sa.select(feedback_results)).mappings().one()
        assert (message["raw"], message["summary"], message["source"]) == (None, None, None)
        assert (result["address_key"], result["profile_id"]) == (None, None)
        assert rates.for_delivery(conn, did).bounces == 1  # the figures stay
