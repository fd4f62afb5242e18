"""`consentry feedback classify/ingest/review/rates` as a user runs them, on files, an mbox and
a maildir, on both databases; and the ingestion pipeline with worker processes."""

from __future__ import annotations

import json
import mailbox
from pathlib import Path

import sqlalchemy as sa

from consentry.domain.addresses import normalize_email
from consentry.feedback.ingest import Message, ingest
from consentry.quarantine import service as quarantine
from consentry.settings import Settings
from consentry.store.engine import make_engine
from consentry.store.schema import feedback_messages
from consentry.tokens import Signer
from helpers import cli

CORPUS = Path(__file__).parent / "data" / "feedback"


def dsn(recipient: str, status: str = "5.1.1", message_id: str = "dsn-1@mx.example.net",
        diagnostic: str = "550 5.1.1 User unknown") -> bytes:
    return f"""\
From: MAILER-DAEMON@mx.example.net
To: bounces@bounces.example.com
Subject: Undelivered Mail Returned to Sender
Message-ID: <{message_id}>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="XYZ-{message_id}"

--XYZ-{message_id}
Content-Type: text/plain

Your message could not be delivered.

--XYZ-{message_id}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; {recipient}
Action: failed
Status: {status}
Diagnostic-Code: smtp; {diagnostic}

--XYZ-{message_id}--
""".encode()


ARF = b"""\
From: fbl@isp.example
To: fbl@bounces.example.com
Subject: Abuse report
Message-ID: <arf-1@isp.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="B"

--B
Content-Type: text/plain

This is an abuse report.

--B
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ISP-FBL/1.0
Version: 1
Original-Rcpt-To: <angry@example.org>

--B
Content-Type: text/rfc822-headers

From: news@example.com
To: angry@example.org
Subject: News

--B--
"""


def _status(db_url: str, address: str) -> str:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return quarantine.show(conn, normalize_email(address),
                                   Settings(database_url=db_url).quarantine)["status"]
    finally:
        engine.dispose()


def test_classify_prints_the_contract_lines_and_changes_nothing(db_url, tmp_path):
    (tmp_path / "one.eml").write_bytes(dsn("gone@example.com"))
    (tmp_path / "two.eml").write_bytes(ARF)
    result = cli(db_url, "feedback", "classify", str(tmp_path / "one.eml"),
                 str(tmp_path / "two.eml"))
    assert result.exit_code == 0, result.stderr
    lines = result.json_lines()
    assert lines[0] == {"source": str(tmp_path / "one.eml"), "kind": "bounce", "recipients": [
        {"address": "gone@example.com", "status": "5.1.1", "class": "hard",
         "reason": "user_unknown", "diagnostic": "550 5.1.1 User unknown"}]}
    assert lines[1]["kind"] == "complaint"
    assert lines[1]["recipients"][0]["address"] == "angry@example.org"
    assert lines[1]["recipients"][0]["class"] == "complaint"
    assert _status(db_url, "gone@example.com") == "valid"


def test_classify_reads_the_corpus_folders_without_failing(db_url):
    result = cli(db_url, "feedback", "classify", str(CORPUS / "sisimai"))
    assert result.exit_code == 0, result.stderr
    lines = result.json_lines()
    assert len(lines) >= 80
    assert {line["kind"] for line in lines} >= {"bounce", "complaint", "autoreply"}
    assert all(set(line) == {"source", "kind", "recipients"} for line in lines)


def test_ingest_files_mbox_and_maildir_once(db_url, tmp_path):
    box = mailbox.mbox(tmp_path / "bounces.mbox")
    box.add(dsn("mbox1@example.com", message_id="m1@mx"))
    box.add(dsn("mbox2@example.com", status="4.2.2", message_id="m2@mx",
                diagnostic="452 4.2.2 Mailbox full"))
    box.close()
    maildir = mailbox.Maildir(tmp_path / "Maildir", create=True)
    maildir.add(ARF)
    maildir.close()
    single = tmp_path / "single.eml"
    single.write_bytes(dsn("file@example.com", message_id="f1@mx"))
    args = ["feedback", "ingest", str(tmp_path / "bounces.mbox"), str(tmp_path / "Maildir"),
            str(single), "--json"]
    first = cli(db_url, *args)
    assert first.exit_code == 0, first.stderr
    assert first.json() == {"messages": 4, "applied": 4, "ignored": 0, "review": 0,
                            "duplicates": 0, "changes": 4}
    assert _status(db_url, "mbox1@example.com") == "quarantined"
    assert _status(db_url, "mbox2@example.com") == "erroneous"
    assert _status(db_url, "angry@example.org") == "denylisted"
    assert _status(db_url, "file@example.com") == "quarantined"
    again = cli(db_url, *args)
    assert again.json()["duplicates"] == 4 and again.json()["changes"] == 0


def test_ingest_reports_an_unreadable_path_and_applies_the_rest(db_url, tmp_path):
    good = tmp_path / "good.eml"
    good.write_bytes(dsn("still@example.com"))
    result = cli(db_url, "feedback", "ingest", str(tmp_path / "missing.eml"), str(good),
                 "--json")
    assert result.exit_code == 1
    assert "missing.eml: no such file or directory" in result.stderr
    assert result.json()["applied"] == 1
    assert _status(db_url, "still@example.com") == "quarantined"


def test_review_lists_unreadable_messages_and_shows_them(db_url, tmp_path):
    junk = tmp_path / "junk.eml"
    junk.write_bytes(b"\x00\x01 not a message at all \xff")
    assert cli(db_url, "feedback", "ingest", str(junk)).exit_code == 0
    listed = cli(db_url, "feedback", "review", "--json").json()
    assert [r["kind"] for r in listed] == ["unknown"]
    shown = cli(db_url, "feedback", "review", "--show", str(listed[0]["id"]))
    assert "not a message at all" in shown.stdout


def test_rates_for_a_day_without_traffic(db_url):
    result = cli(db_url, "feedback", "rates", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == {"days": [], "thresholds": {
        "bounce_rate_alert": 0.05, "complaint_rate_warn": 0.001, "complaint_rate_alert": 0.003}}
    assert cli(db_url, "feedback", "rates", "--days", "0").exit_code == 1


def test_ingest_with_worker_processes_matches_one_process(engine, settings):
    """The pipeline classifies in worker processes and applies in order; the outcome is the
    same as classifying here."""
    messages = [Message(dsn(f"user{i}@example.com", message_id=f"w{i}@mx"), f"m{i}")
                for i in range(450)]
    with engine.begin() as conn:
        signer = Signer.for_database(conn, settings)
    seen: list[tuple[int, int]] = []
    totals = ingest(engine, settings, signer, messages, via="test", workers=2,
                    progress=lambda done, total: seen.append((done, total)))
    assert totals.to_json() == {"messages": 450, "applied": 450, "ignored": 0, "review": 0,
                                "duplicates": 0, "changes": 450}
    assert seen == [(200, 450), (400, 450), (450, 450)]
    with engine.connect() as conn:
        sources = conn.execute(sa.select(feedback_messages.c.source)
                               .order_by(feedback_messages.c.id)).scalars().all()
    assert sources == [f"m{i}" for i in range(450)]
    again = ingest(engine, settings, signer, messages[:10], via="test", workers=1)
    assert again.duplicates == 10
    assert json.dumps(again.to_json())
