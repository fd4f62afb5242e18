"""Feedback arriving by mail: the inbound SMTP receiver (a real SMTP client, smtplib, talking to
it), the IMAP poller (against a real dovecot) and `consentry serve` as a whole, on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from consentry.domain.addresses import normalize_email
from consentry.feedback import imap_poll, smtp_receiver
from consentry.feedback.imap_poll import parse_imap_url, poll
from consentry.feedback.smtp_receiver import FeedbackReceiver
from consentry.quarantine import service as quarantine
from consentry.settings import FeedbackSettings, Settings
from consentry.store.engine import make_engine
from consentry.store.schema import feedback_messages
from dovecot import PASSWORD, USER, Dovecot
from helpers import cli, free_ports

BOUNCES = "bounces@bounces.example.com"  # a bounce address without a VERP tag


def dsn(recipient: str, *, message_id: str, to: str = BOUNCES, status: str = "5.1.1",
        padding: int = 0) -> bytes:
    """An RFC 3464 delivery status notification, as Postfix writes one."""
    lines = [
        "Return-Path: <>",
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)",
        f"To: {to}",
        "Subject: Undelivered Mail Returned to Sender",
        f"Message-ID: <{message_id}>",
        f"Date: {formatdate()}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        'Content-Type: multipart/report; report-type=delivery-status; boundary="dsn-b"',
        "",
        "--dsn-b",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "This is the mail system at host mx.example.net.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients.",
        "",
        f"<{recipient}>: host mx.example.net said: 550 {status} <{recipient}>:",
        "    Recipient address rejected: User unknown in virtual mailbox table",
        *(["x" * 70] * padding),
        "",
        "--dsn-b",
        "Content-Type: message/delivery-status",
        "",
        "Reporting-MTA: dns; mx.example.net",
        f"Arrival-Date: {formatdate()}",
        "",
        f"Final-Recipient: rfc822; {recipient}",
        f"Original-Recipient: rfc822;{recipient}",
        "Action: failed",
        f"Status: {status}",
        "Remote-MTA: dns; mx.example.net",
        f"Diagnostic-Code: smtp; 550 {status} <{recipient}>: Recipient address rejected:",
        "    User unknown in virtual mailbox table",
        "",
        "--dsn-b",
        "Content-Type: text/rfc822-headers",
        "",
        "From: News <news@shop.example>",
        f"To: {recipient}",
        "Subject: Spring offers",
        f"Message-ID: <original.{message_id}>",
        "",
        "--dsn-b--",
        "",
    ]
    return "\r\n".join(lines).encode()


def arf(complainer: str, *, message_id: str, to: str = "fbl@bounces.example.com") -> bytes:
    """An RFC 5965 abuse report (a feedback loop's complaint)."""
    lines = [
        "From: Feedback Loop <fbl@isp.example>",
        f"To: {to}",
        "Subject: Abuse report",
        f"Message-ID: <{message_id}>",
        f"Date: {formatdate()}",
        "MIME-Version: 1.0",
        'Content-Type: multipart/report; report-type=feedback-report; boundary="arf-b"',
        "",
        "--arf-b",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "This is an email abuse report for an email message received from IP",
        "192.0.2.25 on " + formatdate() + ".",
        "",
        "--arf-b",
        "Content-Type: message/feedback-report",
        "",
        "Feedback-Type: abuse",
        "User-Agent: SomeFBL/1.0",
        "Version: 1",
        f"Original-Mail-From: <{BOUNCES}>",
        f"Original-Rcpt-To: <{complainer}>",
        f"Arrival-Date: {formatdate()}",
        "Reported-Domain: shop.example",
        "Source-IP: 192.0.2.25",
        "",
        "--arf-b",
        "Content-Type: message/rfc822",
        "",
        "From: News <news@shop.example>",
        "To: undisclosed-recipients:;",
        "Subject: Spring offers",
        f"Message-ID: <original.{message_id}>",
        "",
        "Our spring offers.",
        "",
        "--arf-b--",
        "",
    ]
    return "\r\n".join(lines).encode()


def status_of(engine: sa.Engine, settings: Settings, address: str) -> str:
    with engine.begin() as conn:
        return str(quarantine.show(conn, normalize_email(address), settings.quarantine)["status"])


def stored_messages(engine: sa.Engine) -> int:
    with engine.begin() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(feedback_messages))
                   .scalar_one())


# --- the SMTP receiver --------------------------------------------------------------------------

@pytest.fixture
def receiver_settings(settings: Settings) -> Settings:
    return replace(settings, feedback=replace(settings.feedback, domains=("Lists.Example.COM",),
                                              max_message_bytes=50_000))


@pytest.fixture
def receiver(engine: sa.Engine, receiver_settings: Settings) -> Iterator[FeedbackReceiver]:
    with FeedbackReceiver(receiver_settings, engine, port=0) as running:
        assert running.port != 0
        yield running


def smtp(receiver: FeedbackReceiver) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", receiver.port, timeout=10)


def test_dsn_and_arf_by_smtp(receiver, engine, receiver_settings):
    with smtp(receiver) as client:
        client.ehlo("mx.example.net")
        assert not client.has_extn("auth"), "the receiver offers no AUTH"
        assert client.has_extn("size")
        refused = client.sendmail("", [BOUNCES], dsn("gone@example.com", message_id="dsn-1@mx"))
        assert refused == {}
        client.sendmail("", ["FBL@Bounces.Example.COM"],
                        arf("angry@example.org", message_id="arf-1@isp"))
    assert status_of(engine, receiver_settings, "gone@example.com") == "quarantined"
    assert status_of(engine, receiver_settings, "angry@example.org") == "denylisted"
    assert status_of(engine, receiver_settings, "bystander@example.org") == "valid"
    kinds = [(r.results[0].kind, r.results[0].status) for r in receiver.handler.received]
    assert kinds == [("bounce", "applied"), ("complaint", "applied")]
    with engine.begin() as conn:
        rows = conn.execute(sa.select(feedback_messages.c.via, feedback_messages.c.source)
                            .order_by(feedback_messages.c.id)).all()
    assert [tuple(r) for r in rows] == [("smtp", "127.0.0.1"), ("smtp", "127.0.0.1")]


def test_the_same_message_twice_counts_once(receiver, engine, receiver_settings):
    message = dsn("twice@example.com", message_id="dsn-twice@mx")
    for _ in range(2):
        with smtp(receiver) as client:
            client.sendmail("", [BOUNCES], message)
    assert [r.results[0].status for r in receiver.handler.received] == ["applied", "duplicate"]
    assert stored_messages(engine) == 1
    with engine.begin() as conn:
        shown = quarantine.show(conn, normalize_email("twice@example.com"),
                                receiver_settings.quarantine)
    assert shown["status"] == "quarantined" and shown["error_count"] == 1


def test_mail_for_other_domains_is_refused(receiver, engine):
    """Not an open relay: only the bounce domain and feedback.domains, exactly."""
    with smtp(receiver) as client:
        for address in ("victim@elsewhere.example", "x@sub.bounces.example.com",
                        "x@bounces.example.com.evil.example"):
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.sendmail("spammer@elsewhere.example", [address], b"Subject: hi\r\n\r\nhi")
            code, text = refused.value.recipients[address]
            assert (code, text) == (550, b"5.7.1 relaying denied")
        # One good recipient among bad ones: the message is taken for the good one only.
        refused_some = client.sendmail(
            "", ["victim@elsewhere.example", "unsubscribe@lists.example.com"],
            arf("someone@example.org", message_id="arf-mixed@isp"))
        assert list(refused_some) == ["victim@elsewhere.example"]
    assert receiver.handler.received[0].rcpt_tos == ["unsubscribe@lists.example.com"]
    assert stored_messages(engine) == 1


def test_too_many_recipients(receiver):
    with smtp(receiver) as client:
        client.ehlo()
        assert client.mail("")[0] == 250
        codes = [client.rcpt(f"r{i}@bounces.example.com")[0]
                 for i in range(smtp_receiver.MAX_RECIPIENTS + 1)]
        assert codes[:-1] == [250] * smtp_receiver.MAX_RECIPIENTS
        assert codes[-1] == 452
        client.rset()


def test_message_over_the_size_limit_gets_552(receiver, engine):
    big = dsn("big@example.com", message_id="dsn-big@mx", padding=1000)  # about 72 kB
    assert len(big) > 50_000
    with smtp(receiver) as client:
        # A client that declares the size (smtplib does) is refused at MAIL FROM ...
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail("", [BOUNCES], big)
        assert refused.value.smtp_code == 552
        # ... one that does not, after its data.
        client.ehlo()
        assert client.mail("")[0] == 250
        assert client.rcpt(BOUNCES)[0] == 250
        code, _ = client.data(big)
        assert code == 552
    assert stored_messages(engine) == 0


def test_database_trouble_answers_451_and_the_retry_is_stored(receiver, engine,
                                                              receiver_settings, monkeypatch):
    def broken(*args, **kwargs):
        raise sa.exc.OperationalError("INSERT ...", {}, Exception("database is down"))

    message = dsn("retry@example.com", message_id="dsn-retry@mx")
    with monkeypatch.context() as patch:
        patch.setattr(smtp_receiver, "apply_batch", broken)
        with smtp(receiver) as client, pytest.raises(smtplib.SMTPDataError) as failed:
            client.sendmail("", [BOUNCES], message)
    assert failed.value.smtp_code == 451
    assert failed.value.smtp_error.startswith(b"4.3.0")
    assert stored_messages(engine) == 0
    with smtp(receiver) as client:
        client.sendmail("", [BOUNCES], message)  # the sender's retry
    assert status_of(engine, receiver_settings, "retry@example.com") == "quarantined"


def test_unreadable_mail_is_kept_for_review(receiver, engine):
    with smtp(receiver) as client:
        client.sendmail("someone@example.org", ["postmaster@bounces.example.com"],
                        b"From: someone@example.org\r\nSubject: hello\r\n"
                        b"Message-ID: <hello-1@example.org>\r\n\r\nJust saying hello.\r\n")
    [received] = receiver.handler.received
    assert received.results[0].status == "review"
    with engine.begin() as conn:
        assert conn.execute(sa.select(feedback_messages.c.status)).scalar_one() == "review"


def test_receiver_on_a_taken_port_fails_cleanly(receiver, engine, receiver_settings):
    with pytest.raises(OSError):
        FeedbackReceiver(receiver_settings, engine, port=receiver.port).start()


# --- the IMAP poller ----------------------------------------------------------------------------

def test_imap_url_parsing():
    mailbox = parse_imap_url("imaps://bounce%40corp:p%40ss%2Fw%3Ard@imap.example.com/"
                             "Bounces%20In")
    assert (mailbox.user, mailbox.password, mailbox.host, mailbox.port, mailbox.folder) == (
        "bounce@corp", "p@ss/w:rd", "imap.example.com", 993, "Bounces In")
    assert parse_imap_url("imaps://u:p@[::1]:1993").folder == "INBOX"
    assert parse_imap_url("imaps://u:p@[::1]:1993").port == 1993
    assert "p@ss" not in parse_imap_url("imaps://u:p%40ss@h/INBOX").describe()
    for bad in ("imap://u:p@h/INBOX", "imaps://h/INBOX", "imaps://u:p@h:port/INBOX"):
        with pytest.raises(Exception, match="imap_url"):
            parse_imap_url(bad)


def test_folder_names_are_quoted_and_encoded():
    assert imap_poll._mailbox_name("Processed") == '"Processed"'
    assert imap_poll._mailbox_name('A "b" \\c') == '"A \\"b\\" \\\\c"'
    assert imap_poll._mailbox_name("Erledigt & Gelöscht") == '"Erledigt &- Gel&APY-scht"'


def imap_settings(settings: Settings, server: Dovecot) -> Settings:
    return replace(settings, feedback=FeedbackSettings(imap_url=server.url("INBOX"),
                                                       imap_processed_folder="Processed"))


@pytest.mark.parametrize("without_move", [False, True], ids=["move", "copy-expunge"])
def test_imap_poll_applies_and_moves(engine, settings, tmp_path, without_move):
    with Dovecot.start(tmp_path, without_move=without_move) as server:
        config = imap_settings(settings, server)
        server.append(dsn("gone@example.com", message_id="imap-dsn@mx"),
                      arf("angry@example.org", message_id="imap-arf@isp"),
                      b"From: someone@example.org\r\nSubject: hello\r\n"
                      b"Message-ID: <hello-2@example.org>\r\n\r\nhello\r\n")
        with server.connect() as client:
            capabilities = client.capability()[1][0].upper().split()
        assert (b"MOVE" in capabilities) is not without_move
        result = poll(config, engine, ssl_context=server.client_context())
        assert result.to_json() == {"fetched": 3, "applied": 2, "duplicates": 0, "review": 1,
                                    "failed": 0, "moved": 3}
        assert status_of(engine, config, "gone@example.com") == "quarantined"
        assert status_of(engine, config, "angry@example.org") == "denylisted"
        assert server.messages("INBOX") == []
        assert len(server.messages("Processed")) == 3
        with engine.begin() as conn:
            vias = conn.execute(sa.select(feedback_messages.c.via)).scalars().all()
        assert vias == ["imap"] * 3

        again = poll(config, engine, ssl_context=server.client_context())
        assert again.fetched == 0 and again.moved == 0
        # A copy of a message already applied (delivered twice) counts as a duplicate.
        server.append(dsn("gone@example.com", message_id="imap-dsn@mx"))
        third = poll(config, engine, ssl_context=server.client_context())
        assert (third.fetched, third.duplicates, third.applied, third.moved) == (1, 1, 0, 1)
        assert stored_messages(engine) == 3
        assert len(server.messages("Processed")) == 4


def test_imap_message_that_fails_stays_in_the_inbox(engine, settings, tmp_path, monkeypatch):
    real = imap_poll.incoming_message

    def flaky(raw: bytes, **kwargs):
        if b"flaky@example.com" in raw:
            raise ValueError("cannot read this one today")
        return real(raw, **kwargs)

    with Dovecot.start(tmp_path) as server:
        config = imap_settings(settings, server)
        server.append(dsn("flaky@example.com", message_id="flaky@mx"),
                      dsn("fine@example.com", message_id="fine@mx"))
        with monkeypatch.context() as patch:
            patch.setattr(imap_poll, "incoming_message", flaky)
            result = poll(config, engine, ssl_context=server.client_context(), batch_size=1)
        assert (result.fetched, result.applied, result.failed, result.moved) == (2, 1, 1, 1)
        [left] = server.messages("INBOX")
        assert b"flaky@example.com" in left
        assert status_of(engine, config, "fine@example.com") == "quarantined"
        assert status_of(engine, config, "flaky@example.com") == "valid"

        later = poll(config, engine, ssl_context=server.client_context())
        assert (later.fetched, later.applied, later.failed) == (1, 1, 0)
        assert server.messages("INBOX") == []
        assert status_of(engine, config, "flaky@example.com") == "quarantined"


def test_imap_refuses_an_untrusted_certificate_and_a_wrong_password(engine, settings,
                                                                   tmp_path):
    from consentry.domain.errors import ConsentryError

    with Dovecot.start(tmp_path) as server:
        config = imap_settings(settings, server)
        server.append(dsn("kept@example.com", message_id="kept@mx"))
        with pytest.raises(ConsentryError, match="CERTIFICATE_VERIFY_FAILED"):
            poll(config, engine)  # the system's CAs do not know the test CA
        wrong = f"imaps://{USER}:wrong@127.0.0.1:{server.port}/INBOX"
        with pytest.raises(ConsentryError, match="login failed"):
            poll(config, engine, ssl_context=server.client_context(), url=wrong)
        assert len(server.messages("INBOX")) == 1
        assert quote(PASSWORD, safe="") in server.url()


# --- consentry serve ----------------------------------------------------------------------------

def _wait_for_health(port: int, process: subprocess.Popen[bytes], output: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            pytest.fail(f"serve exited with {process.returncode}:\n{output.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                assert json.loads(resp.read()) == {"status": "ok"}
                return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"serve did not answer /healthz:\n{output.read_text()}")
            time.sleep(0.2)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], output: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                client.noop()
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the SMTP receiver did not answer:\n{output.read_text()}")
            time.sleep(0.2)


def test_poll_imap_command(db_url, tmp_path, monkeypatch):
    """`consentry feedback poll-imap`, with the production TLS context: the test CA is
    trusted the way an operator would do it, through SSL_CERT_FILE."""
    with Dovecot.start(tmp_path) as server:
        server.append(dsn("polled@example.com", message_id="cli-poll@mx"))
        monkeypatch.setenv("CONSENTRY_IMAP_URL", server.url())
        monkeypatch.setenv("SSL_CERT_FILE", str(server.ca))
        monkeypatch.chdir(tmp_path)
        result = cli(db_url, "feedback", "poll-imap", "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout) == {"fetched": 1, "applied": 1, "duplicates": 0,
                                             "review": 0, "failed": 0, "moved": 1}
        assert server.messages("INBOX") == []
    engine = make_engine(db_url)
    try:
        assert status_of(engine, Settings(database_url=db_url),
                         "polled@example.com") == "quarantined"
    finally:
        engine.dispose()


def test_serve_runs_web_app_smtp_receiver_and_imap_polling_and_stops_cleanly(tmp_path):
    database = f"sqlite:///{tmp_path / 'serve.db'}"  # not migrated: serve does it
    web_port, smtp_port = free_ports(2)
    output = tmp_path / "serve.log"
    with Dovecot.start(tmp_path) as server:
        server.append(dsn("imap-served@example.com", message_id="serve-imap@mx"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTRY_")}
        env |= {"CONSENTRY_IMAP_URL": server.url(), "SSL_CERT_FILE": str(server.ca)}
        with output.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "consentry", "serve", "--port", str(web_port),
                 "--feedback-smtp-port", str(smtp_port), "--database", database],
                cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            _wait_for_health(web_port, process, output)
            _wait_for_port(smtp_port, process, output)
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
                client.sendmail("", [BOUNCES], dsn("served@example.com", message_id="serve@mx"))
            deadline = time.monotonic() + 30
            while server.messages("INBOX"):  # the background thread polls at once
                assert time.monotonic() < deadline, output.read_text()
                time.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, output.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    log = output.read_text()
    assert f"feedback SMTP receiver listening on 127.0.0.1:{smtp_port}" in log, log
    assert "IMAP: 1 fetched, 1 applied" in log, log
    assert "stopped" in log and "Traceback" not in log and "tried again later" not in log, log
    engine = make_engine(database)
    try:
        settings = Settings(database_url=database)
        assert status_of(engine, settings, "served@example.com") == "quarantined"
        assert status_of(engine, settings, "imap-served@example.com") == "quarantined"
    finally:
        engine.dispose()
