"""Sending deliveries through a real SMTP server (aiosmtpd on loopback): headers in the received
bytes, every exclusion honoured up to the last moment, bounces fed to quarantine, crash safety
and several workers."""

from __future__ import annotations

import email
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from email import policy
from pathlib import Path

import pytest
import sqlalchemy as sa

from consentry.consent import service as consent
from consentry.delivery import sending
from consentry.delivery import service as deliveries
from consentry.delivery.content import Content
from consentry.delivery.transports import transport_for
from consentry.domain import quarantine as qrules
from consentry.domain.addresses import normalize_email, normalize_phone, normalize_push_token
from consentry.domain.channels import Channel
from consentry.domain.ledger import Origin
from consentry.profiles import service as profiles
from consentry.quarantine import service as quarantine
from consentry.settings import SendingSettings, Settings
from consentry.store.schema import delivery_targets, ledger_events
from consentry.tokens import Signer
from http_sink import Reply, http_sink
from smtp_sink import SmtpSink

OP = Origin(source="cli", actor="os:tester")
MAIL = Content(subject="Hallo {{ profile.first_name }}",
               text="Hallo {{ profile.first_name }},\nabmelden: {{ unsubscribe_url }}\n",
               html="<p>Hallo {{ profile.first_name }}</p>"
                    "<a href=\"{{ unsubscribe_url }}\">Abmelden</a>")


@pytest.fixture
def sink():
    with SmtpSink() as s:
        yield s


def _settings(settings: Settings, sink: SmtpSink, **sending) -> Settings:
    return replace(settings, smtp_url=sink.url, base_url="https://news.example.org",
                   bounce_domain="bounce.example.org",
                   sending=SendingSettings(rate=0, per_domain_rate=0, concurrency=4,
                                           **{"batch_size": 50, **sending}))


def _delivery(engine, settings, n: int, **kw) -> tuple[int, list[int]]:
    with engine.begin() as conn:
        news = consent.create_service(conn, "news", Channel.EMAIL, "Newsletter")
        ids = []
        for i in range(n):
            pid = profiles.create(conn, settings, profiles.NewProfile(
                email=f"p{i}@example.com", first_name=f"Vorname{i}"), OP)
            consent.subscribe(conn, pid, news, OP)
            ids.append(pid)
        did = deliveries.create(conn, settings, deliveries.NewDelivery(
            name="Juni", channel=Channel.EMAIL, service="news", content=MAIL, **kw), None)
    return did, ids


def _send(engine, settings, did):
    with engine.begin() as conn:
        deliveries.analyze(conn, settings, did)
    return sending.send(engine, settings, did, transport_for("email", settings))


def _targets(engine, did) -> dict[int, tuple[str, str | None]]:
    with engine.connect() as conn:
        return {r.profile_id: (r.state, r.reason) for r in conn.execute(sa.select(
            delivery_targets).where(delivery_targets.c.delivery_id == did))}


def test_received_messages_carry_headers_and_honour_exclusions(engine, settings, sink):
    s = _settings(settings, sink)
    did, ids = _delivery(engine, s, 6)
    with engine.begin() as conn:
        consent.opt_out(conn, ids[1], None, OP)
        consent.opt_out(conn, ids[2], Channel.SMS, OP)  # another channel: still gets email
        quarantine.apply(conn, normalize_email("p3@example.com"),
                         qrules.Failure("user_unknown"), OP, s.quarantine)
        quarantine.set_status(conn, normalize_email("p4@example.com"),
                              qrules.Status.DENYLISTED, "complaint", OP, s.quarantine)
    stats = _send(engine, s, did)
    assert (stats.sent, stats.failed) == (3, 0)
    got = {m.rcpt_tos[0]: m for m in sink.messages}
    assert set(got) == {"p0@example.com", "p2@example.com", "p5@example.com"}
    with engine.connect() as conn:
        signer = Signer.for_database(conn, s)
    for address, received in got.items():
        msg = email.message_from_bytes(received.data, policy=policy.SMTP)
        index = int(address[1])
        assert msg["Subject"] == f"Hallo Vorname{index}"
        assert msg["To"] == address and msg["Message-ID"].endswith("@bounce.example.org>")
        unsubscribe = msg["List-Unsubscribe"]
        assert unsubscribe.startswith("<https://news.example.org/u/")
        assert "<mailto:u-" in unsubscribe and "@bounce.example.org>" in unsubscribe
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["List-Id"] == '"Newsletter" <news.bounce.example.org>'
        kind, delivery_id, target_id = signer.read_address_tag(
            received.mail_from.split("@")[0])
        assert (kind, delivery_id) == ("b", did)
        with engine.connect() as conn:
            assert conn.execute(sa.select(delivery_targets.c.profile_id).where(
                delivery_targets.c.id == target_id)).scalar_one() == ids[index]
        text = msg.get_body(("plain",)).get_content()
        html = msg.get_body(("html",)).get_content()
        link = unsubscribe[1:unsubscribe.index(">")]
        assert link in text and link in html
        profile_id, token_delivery, service, channel = signer.read_unsubscribe_token(
            link.rsplit("/", 1)[1])
        assert (profile_id, token_delivery, service, channel) == (ids[index], did, "news",
                                                                  "email")
    with engine.begin() as conn:
        report = deliveries.report(conn, did)
    assert report["state"] == "done"
    assert report["states"] == {"sent": 3, "excluded": 3}
    assert report["excluded"] == {"opted_out": 1, "quarantined": 1, "denylisted": 1}


def test_user_unknown_reply_quarantines_the_address(engine, settings, sink):
    s = _settings(settings, sink)
    did, ids = _delivery(engine, s, 3)
    sink.reject("p1@example.com", "550 5.1.1 <p1@example.com>: Recipient address rejected: "
                                  "User unknown")
    stats = _send(engine, s, did)
    assert (stats.sent, stats.failed, stats.failures) == (2, 1, {"user_unknown": 1})
    assert _targets(engine, did)[ids[1]] == ("failed", "user_unknown")
    with engine.connect() as conn:
        shown = quarantine.show(conn, normalize_email("p1@example.com"), s.quarantine)
        event = conn.execute(sa.select(ledger_events).where(
            ledger_events.c.kind == "quarantine")).mappings().one()
    assert shown["status"] == "quarantined" and shown["reason"] == "user_unknown"
    assert event["source"] == "bounce" and "5.1.1" in event["evidence"]["reply"]
    assert event["evidence"]["delivery"] == did
    # One failure in three attempts: over Adobe's 5% bounce alert.
    with engine.connect() as conn:
        figures = deliveries.report(conn, did, s.feedback)["feedback"]
    assert (figures["attempted"], figures["bounces"], figures["hard_bounces"]) == (3, 1, 1)
    assert [a["metric"] for a in figures["alerts"]] == ["bounce_rate"]
    # The next analysis leaves it out.
    with engine.begin() as conn:
        again = deliveries.create(conn, s, deliveries.NewDelivery(
            name="again", channel=Channel.EMAIL, service="news", content=MAIL), None)
        assert deliveries.analyze(conn, s, again)["excluded"] == {"quarantined": 1}


def test_success_puts_an_erroneous_address_back_to_valid(engine, settings, sink):
    s = _settings(settings, sink)
    did, _ = _delivery(engine, s, 2)
    with engine.begin() as conn:
        quarantine.apply(conn, normalize_email("p0@example.com"),
                         qrules.Failure("unreachable"), OP, s.quarantine)
    _send(engine, s, did)
    with engine.connect() as conn:
        assert quarantine.show(conn, normalize_email("p0@example.com"),
                               s.quarantine)["status"] == "valid"


class _Interfering:
    """The real SMTP transport, plus something that happens after its first batch: the
    opt-out that arrives while a large delivery is going out."""

    def __init__(self, inner, after_first_batch) -> None:
        self.inner, self.after, self.batches = inner, after_first_batch, 0
        self.channel = inner.channel

    async def send(self, messages):
        outcomes = await self.inner.send(messages)
        self.batches += 1
        if self.batches == 1:
            self.after()
        return outcomes

    async def aclose(self):
        await self.inner.aclose()


def test_optout_during_a_send_is_honoured_for_the_rest_of_it(engine, settings, sink):
    s = _settings(settings, sink, batch_size=5)
    did, ids = _delivery(engine, s, 30)
    with engine.begin() as conn:
        deliveries.analyze(conn, s, did)

    def meanwhile() -> None:
        with engine.begin() as conn:
            consent.opt_out(conn, ids[20], None, OP)
            consent.unsubscribe(conn, ids[22], consent.get_service(conn, "news"), OP)
            quarantine.set_status(conn, normalize_email("p25@example.com"),
                                  qrules.Status.DENYLISTED, "complaint", OP, s.quarantine)

    stats = sending.send(engine, s, did, _Interfering(transport_for("email", s), meanwhile))
    received = sorted(m.rcpt_tos[0] for m in sink.messages)
    assert len(received) == len(set(received)) == 27
    assert {"p20@example.com", "p22@example.com", "p25@example.com"}.isdisjoint(received)
    targets = _targets(engine, did)
    assert targets[ids[20]] == ("excluded_at_send", "opted_out")
    assert targets[ids[22]] == ("excluded_at_send", "not_subscribed")
    assert targets[ids[25]] == ("excluded_at_send", "denylisted")
    assert stats.excluded_at_send == 3
    with engine.begin() as conn:
        assert deliveries.report(conn, did)["excluded_at_send"] == {
            "opted_out": 1, "not_subscribed": 1, "denylisted": 1}


def test_throttling_reply_slows_down_and_everything_arrives_once(engine, settings, sink):
    s = _settings(settings, sink)
    did, _ = _delivery(engine, s, 20)
    sink.throttle_first(4)
    started = time.monotonic()
    stats = _send(engine, s, did)
    assert stats.sent == 20 and stats.failed == 0
    received = [m.rcpt_tos[0] for m in sink.messages]
    assert len(received) == len(set(received)) == 20
    assert time.monotonic() - started >= 1.0  # the first retry waits retry_delays[0] = 1 s


def _cli_env(tmp_path: Path, db_url: str, sink: SmtpSink, **sending_values) -> dict[str, str]:
    lines = [f'smtp_url = "{sink.url}"', 'bounce_domain = "bounce.example.org"', "[sending]"]
    lines += [f"{k} = {v}" for k, v in {"rate": 0, "per_domain_rate": 0, "concurrency": 2,
                                         **sending_values}.items()]
    (tmp_path / "consentry.toml").write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTRY_")}
    env["CONSENTRY_DATABASE_URL"] = db_url
    return env


def test_killed_sender_resumes_without_sending_anyone_twice(engine, settings, sink, db_url,
                                                              tmp_path):
    did, ids = _delivery(engine, settings, 120)
    with engine.begin() as conn:
        deliveries.analyze(conn, settings, did)
    env = _cli_env(tmp_path, db_url, sink, rate=60, batch_size=10)
    command = [sys.executable, "-m", "consentry", "delivery", "send", str(did), "--json"]
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while sink.count < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert 40 <= sink.count < 120, "the sender was not killed mid-delivery"

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 0, second.stderr
    received = [m.rcpt_tos[0] for m in sink.messages]
    assert len(received) == len(set(received)), "someone got the message twice"
    targets = _targets(engine, did)
    states = [state for state, _ in targets.values()]
    assert set(states) <= {"sent", "unknown"}
    sent = {f"p{ids.index(pid)}@example.com" for pid, (st, _) in targets.items() if st == "sent"}
    assert sent <= set(received)
    result = json.loads(second.stdout)
    assert result["unknown"] == states.count("unknown") <= 20
    assert states.count("sent") + states.count("unknown") == 120
    with engine.begin() as conn:
        report = deliveries.report(conn, did)
    assert report["state"] == "done" and report["states"].get("unknown", 0) == result["unknown"]


def test_two_workers_share_one_delivery_on_postgresql(pg_engine, pg_url, sink, tmp_path):
    settings = Settings(database_url=pg_url)
    did, _ = _delivery(pg_engine, settings, 200)
    with pg_engine.begin() as conn:
        deliveries.analyze(conn, settings, did)
        sending.start(conn, did)
    env = _cli_env(tmp_path, pg_url, sink, rate=100, batch_size=10)
    workers = [subprocess.Popen([sys.executable, "-m", "consentry", "worker", "--once",
                                 "--poll", "0.2"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
    received = [m.rcpt_tos[0] for m in sink.messages]
    assert len(received) == len(set(received)) == 200
    with pg_engine.connect() as conn:
        by_worker = conn.execute(sa.select(delivery_targets.c.worker, sa.func.count()).where(
            delivery_targets.c.delivery_id == did).group_by(delivery_targets.c.worker)).all()
        state = deliveries.get(conn, did)["state"]
    assert len(by_worker) == 2 and all(n >= 20 for _, n in by_worker), by_worker
    assert state == "done"


def test_sms_delivery_through_the_http_connector(engine, settings):
    def answer(request):
        if request.json()["to"] == "+4915100000002":
            return Reply(400, {"error": "invalid_number", "message": "no such subscriber"})
        return Reply(200, {"id": "sms-" + request.json()["to"][-2:]})

    with http_sink(answer) as sms:
        s = replace(settings, sms_url=sms.url + "/send", sms_from="Consentry", sms_token="t0k",
                    sending=SendingSettings(rate=0, per_domain_rate=0))
        with engine.begin() as conn:
            consent.create_service(conn, "alerts", Channel.SMS, "Alerts")
            ids = [profiles.create(conn, s, profiles.NewProfile(
                phone=f"+49151000000{i:02d}", first_name=f"N{i}"), OP) for i in range(4)]
            for pid in ids:
                consent.subscribe(conn, pid, consent.get_service(conn, "alerts"), OP)
            consent.opt_out(conn, ids[3], Channel.SMS, OP)
            did = deliveries.create(conn, s, deliveries.NewDelivery(
                name="alert", channel=Channel.SMS, service="alerts",
                content=Content(text="Hallo {{ profile.first_name }}, STOP zum Abmelden")), None)
            deliveries.analyze(conn, s, did)
        stats = sending.send(engine, s, did, transport_for("sms", s))
        bodies = sorted((r.json()["to"], r.json()["text"]) for r in sms.requests)
    assert bodies == [("+4915100000000", "Hallo N0, STOP zum Abmelden"),
                      ("+4915100000001", "Hallo N1, STOP zum Abmelden"),
                      ("+4915100000002", "Hallo N2, STOP zum Abmelden")]
    assert (stats.sent, stats.failed) == (2, 1)
    targets = _targets(engine, did)
    assert targets[ids[2]] == ("failed", "user_unknown")
    assert targets[ids[3]] == ("excluded", "channel_opted_out")
    with engine.connect() as conn:
        assert quarantine.show(conn, normalize_phone("+4915100000002"),
                               s.quarantine)["status"] == "quarantined"


def test_unregistered_push_token_is_quarantined(engine, settings):
    def answer(request):
        token = request.json()["message"]["token"]
        if token == "token-gone-0000":
            return Reply(404, {"error": {"code": 404, "status": "NOT_FOUND",
                                         "message": "Requested entity was not found.",
                                         "details": [{"errorCode": "UNREGISTERED"}]}})
        return Reply(200, {"name": f"projects/demo/messages/{token}"})

    with http_sink(answer) as push:
        s = replace(settings, push_url=push.url + "/v1/messages:send", push_token="bearer",
                    sending=SendingSettings(rate=0, per_domain_rate=0))
        with engine.begin() as conn:
            a = profiles.create(conn, s, profiles.NewProfile(push_tokens=(
                profiles.PushToken("token-live-0000", "app", "android"),
                profiles.PushToken("token-gone-0000", "app", "ios"))), OP)
            profiles.create(conn, s, profiles.NewProfile(email="nopush@example.com"), OP)
            did = deliveries.create(conn, s, deliveries.NewDelivery(
                name="push", channel=Channel.PUSH, audience="all",
                content=Content(subject="Sale", text="Hi {{ profile.first_name }}")), None)
            result = deliveries.analyze(conn, s, did)
        assert result["audience"] == 3 and result["excluded"] == {"address_missing": 1}
        stats = sending.send(engine, s, did, transport_for("push", s))
        titles = {r.json()["message"]["notification"]["title"] for r in push.requests}
    assert (stats.sent, stats.failed) == (1, 1) and titles == {"Sale"}
    with engine.connect() as conn:
        entry = quarantine.show(conn, normalize_push_token("token-gone-0000"), s.quarantine)
        shown = profiles.show(conn, s, a)
    assert entry["status"] == "quarantined" and entry["reason"] == "user_unknown"
    assert {x["address"]: x["status"] for x in shown["addresses"]} == {
        "token-live-0000": "valid", "token-gone-0000": "quarantined"}


def test_unreachable_relay_fails_softly_without_touching_quarantine(engine, settings):
    from consentry.delivery.email_transport import SmtpTransport, parse_smtp_url
    from smtp_sink import free_port

    s = replace(settings, smtp_url=f"smtp://127.0.0.1:{free_port()}",
                sending=SendingSettings(rate=0, per_domain_rate=0))
    did, _ = _delivery(engine, s, 3)
    with engine.begin() as conn:
        deliveries.analyze(conn, s, did)
    transport = SmtpTransport(parse_smtp_url(s.smtp_url), s.sending, email_from=s.email_from,
                              retry_delays=(0.05, 0.1))
    stats = sending.send(engine, s, did, transport)
    assert (stats.sent, stats.failed, stats.failures) == (0, 3, {"unreachable": 3})
    assert all(v == ("failed", "unreachable") for v in _targets(engine, did).values())
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ledger_events).where(
            ledger_events.c.kind == "quarantine")).scalar() == 0


def test_background_sender_leaves_a_paused_delivery_paused(engine, settings, sink):
    """`serve` and `worker` send what is `sending`; a pause made meanwhile holds, and only an
    explicit `delivery send` resumes it."""
    from consentry.cli.serve_cmd import DeliverySender

    s = _settings(settings, sink)
    did, _ = _delivery(engine, s, 3)
    with engine.begin() as conn:
        deliveries.analyze(conn, s, did)
        sending.start(conn, did)
        conn.execute(sa.update(deliveries.sql.d).where(deliveries.sql.d.c.id == did)
                     .values(state="paused"))
        assert sending.sendable(conn) == []
    reports: list[str] = []
    sender = DeliverySender(engine, s, report=reports.append)
    assert sender.step() == []
    # Even when handed the id directly (a pause landing between sendable() and send()).
    sending.send(engine, s, did, transport_for("email", s), resume_paused=False)
    assert sink.messages == []
    with engine.connect() as conn:
        assert deliveries.get(conn, did)["state"] == "paused"
    stats = sending.send(engine, s, did, transport_for("email", s))  # `delivery send`
    assert stats.sent == 3 and len(sink.messages) == 3
