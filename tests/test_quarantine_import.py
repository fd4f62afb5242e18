"""`quarantine import` (quarantine/csv_import.py) on both databases: our columns and an Adobe
Campaign export, every kind of bad row rejected with its physical line, releases, re-imports,
chunk boundaries, error history and the ledger."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from consentry.domain import quarantine as rules
from consentry.domain.addresses import Address, normalize_email, normalize_phone
from consentry.domain.channels import Channel
from consentry.domain.errors import ConsentryError
from consentry.domain.ledger import Origin
from consentry.ledger import service as ledger
from consentry.quarantine import csv_import
from consentry.quarantine import service as quarantine
from consentry.quarantine.csv_import import QuarantineImportResult, import_quarantine
from consentry.settings import Settings
from consentry.store.schema import ledger_events

IMPORT = Origin(source="import", actor="os:tester")
OP = Origin(source="cli", actor="os:tester")


def write(path: Path, text: str, *, bom: bool = False, encoding: str = "utf-8") -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode(encoding))
    return path


def run(engine: sa.Engine, settings: Settings, path: Path, rejects: Path | None = None,
        progress: list[tuple[int, int]] | None = None) -> QuarantineImportResult:
    return import_quarantine(
        engine, settings, path, rejects_path=rejects, origin=IMPORT,
        progress=(lambda done, total: progress.append((done, total)))
        if progress is not None else None)


def show(engine: sa.Engine, settings: Settings, address: Address,
         now: datetime | None = None) -> dict[str, Any]:
    with engine.connect() as conn:
        return quarantine.show(conn, address, settings.quarantine, now)


def events(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ledger_events).order_by(ledger_events.c.id)).mappings()
        return [dict(r) for r in rows]


def stored_address(engine: sa.Engine, key: str) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT address FROM quarantine WHERE address_key = :k"),
                            {"k": key}).scalar_one()


def read_rejects(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        text = f.read()
    delimiter = ";" if text.split("\n", 1)[0].count(";") else ","
    return list(csv.DictReader(text.splitlines(), delimiter=delimiter))


def test_our_columns(engine: sa.Engine, settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path / "list.csv",
                 "address,channel,status,reason,note\n"
                 " Max.Mustermann+news@Example.DE ,email,quarantined,user_unknown,old ESP\n"
                 "+49 151 23456789,sms,denylisted,sms_stop,\n"
                 "0151 98765432,,denylisted,,\n"  # channel guessed, national number: region DE
                 "vip@example.com,email,allowlisted,,\n"
                 "fcm-token-0123456789abcdef,push,quarantined,user_unknown,\n")
    assert run(engine, settings, path) == QuarantineImportResult(imported=5, rejected=0)

    max_ = show(engine, settings, normalize_email("max.mustermann+news@example.de"))
    assert (max_["status"], max_["reason"]) == ("quarantined", "user_unknown")
    assert stored_address(engine, "max.mustermann+news@example.de") == (
        "Max.Mustermann+news@example.de")  # kept as given, for sending
    assert (max_["source"], max_["note"]) == ("import", "old ESP")
    assert show(engine, settings, normalize_phone("+4915123456789"))["reason"] == "sms_stop"
    national = show(engine, settings, normalize_phone("+4915198765432"))
    assert (national["status"], national["reason"]) == ("denylisted", "import")
    assert show(engine, settings, normalize_email("VIP@example.com"))["status"] == "allowlisted"
    push = Address(Channel.PUSH, "fcm-token-0123456789abcdef", "fcm-token-0123456789abcdef")
    assert show(engine, settings, push)["status"] == "quarantined"

    logged = sorted(events(engine), key=lambda e: e["evidence"]["line"])  # ids follow partitions
    assert len(logged) == 5
    assert {e["source"] for e in logged} == {"import"}
    assert {e["actor"] for e in logged} == {"os:tester"}
    first = logged[0]
    assert (first["address"], first["old_state"], first["new_state"]) == (
        "max.mustermann+news@example.de", "valid", "quarantined(user_unknown)")
    assert first["note"] == "old ESP"
    assert first["evidence"] == {"file": "list.csv", "line": 2}
    with engine.connect() as conn:
        assert ledger.verify(conn).ok


ADOBE_EXPORT = (
    "Address;Type;Status;Failure reason;Error count;Last error date;Last error text\n"
    "jane@Example.com;0;Quarantine;Unknown user;1;2025-01-10 09:15:00;550 5.1.1 no such user\n"
    "john@example.com;email;On denylist;Not defined;0;;\n"
    "boss@example.com;Email;Allowlisted;;;;\n"
    "full@example.com;0;In quarantine;Mailbox full;3;2025-02-20 12:00:00;452 4.2.2 quota\n"
    "gone@example.org;0;Quarantine;Invalid domain;1;12/24/2024 10:30:00 PM;\n"
    "+4915111122233;1;Quarantine;Unreachable;5;2025-02-01T08:00:00Z;\n"
    "+4915111122244;Mobile;Denylisted;;;;STOP\n"
    "off@example.com;0;Quarantine;Account disabled;2;2025-02-02 00:00:00;\n"
    "spam@example.com;0;Quarantine;Refused;1;2025-02-03 00:00:00;\n"
    "old@example.com;0;Blacklisted;;;;\n"
    "friend@example.com;0;Whitelisted;;;;\n"
    "phone@example.com;;Quarantine;Not connected;1;2025-02-04 00:00:00;\n"
    "again@example.com;0;Valid;;0;;\n"
)


def test_adobe_export(engine: sa.Engine, settings: Settings, tmp_path: Path) -> None:
    """Adobe's column names and labels, a BOM, semicolons, its date formats."""
    path = write(tmp_path / "adobe.csv", ADOBE_EXPORT, bom=True)
    assert run(engine, settings, path) == QuarantineImportResult(imported=13, rejected=0)

    def state(address: str, channel: str = "email") -> tuple[Any, ...]:
        addr = normalize_email(address) if channel == "email" else normalize_phone(address)
        shown = show(engine, settings, addr, now=datetime(2025, 3, 1, tzinfo=UTC))
        return shown["status"], shown["reason"], shown["error_count"]

    assert state("jane@example.com") == ("quarantined", "user_unknown", 1)
    assert state("john@example.com") == ("denylisted", "not_defined", 0)
    assert state("boss@example.com") == ("allowlisted", "import", 0)
    assert state("full@example.com") == ("quarantined", "mailbox_full", 3)
    assert state("gone@example.org") == ("quarantined", "invalid_domain", 1)
    assert state("+4915111122233", "sms") == ("quarantined", "unreachable", 5)
    assert state("+4915111122244", "sms") == ("denylisted", "import", 0)
    assert state("off@example.com") == ("quarantined", "account_disabled", 2)
    assert state("spam@example.com") == ("quarantined", "refused", 1)
    assert state("old@example.com") == ("denylisted", "import", 0)
    assert state("friend@example.com") == ("allowlisted", "import", 0)
    assert state("phone@example.com") == ("quarantined", "unreachable", 1)
    assert state("again@example.com") == ("valid", None, 0)

    jane = show(engine, settings, normalize_email("jane@example.com"))
    assert jane["last_error_at"] == "2025-01-10T09:15:00+00:00"
    assert jane["note"] == "550 5.1.1 no such user"  # Adobe's last error text
    gone = show(engine, settings, normalize_email("gone@example.org"))
    assert gone["last_error_at"] == "2024-12-24T22:30:00+00:00"
    assert len(events(engine)) == 12  # the valid address was unknown: nothing changed


def test_every_bad_row_is_rejected_with_its_line(engine: sa.Engine, settings: Settings,
                                                 tmp_path: Path) -> None:
    lines = [
        b"address,channel,status,reason,note",  # 1
        b"good1@example.com,email,quarantined,user_unknown,",  # 2
        b"not-an-address@,email,quarantined,,",  # 3 bad address
        b"good2@example.com,email,on holiday,,",  # 4 unknown status
        b"good3@example.com,email,quarantined,cosmic rays,",  # 5 unknown reason
        b"good4@example.com,fax,quarantined,,",  # 6 unknown channel
        b"good5@example.com,email,quarantined",  # 7 too few columns
        b"good6@example.com,email,quarantined,,,extra",  # 8 too many columns
        b"caf\xe9@example.com,email,quarantined,,",  # 9 Latin-1, not UTF-8
        b"",  # 10 blank: not a row
        b'"unbalanced@example.com,email,quarantined,,',  # 11 a quote never closed
        b"good7@example.com,email,denylisted,complaint,",  # 12 must survive line 11
        b",email,quarantined,,",  # 13 no address
        b"+49 12,sms,quarantined,,",  # 14 not a valid phone number
        b"good8@example.com,email,erroneous,mailbox_full,",  # 15 erroneous without a date
        b"good9@example.com,email,quarantined,,a note with \xc3\xa4 in it",  # 16 fine
    ]
    path = tmp_path / "list.csv"
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    rejects = tmp_path / "rejects.csv"
    progress: list[tuple[int, int]] = []
    assert run(engine, settings, path, rejects, progress) == QuarantineImportResult(
        imported=3, rejected=11)
    assert progress[-1] == (16 - 1, 16 - 1)

    found = {int(r["line_number"]): r for r in read_rejects(rejects)}
    assert sorted(found) == [3, 4, 5, 6, 7, 8, 9, 11, 13, 14, 15]
    assert "invalid email address" in found[3]["error"]
    assert "unknown status 'on holiday'" in found[4]["error"]
    assert "unknown reason 'cosmic rays'" in found[5]["error"]
    assert "unknown channel 'fax'" in found[6]["error"]
    assert found[7]["error"] == "expected 5 columns, found 3"
    assert found[8]["error"] == "expected 5 columns, found 6"
    assert found[9]["error"] == "not valid UTF-8: byte 0xE9 in address"
    assert found[9]["address"] == "caf\ufffd@example.com"
    assert "expected 5 columns" in found[11]["error"]
    assert found[13]["error"] == "address is empty"
    assert "invalid sms address '+49 12'" in found[14]["error"]
    assert "lastErrorDate" in found[15]["error"]
    assert found[3]["address"] == "not-an-address@" and found[3]["status"] == "quarantined"

    for address in ("good1@example.com", "good7@example.com", "good9@example.com"):
        assert show(engine, settings, normalize_email(address))["status"] != "valid"
    assert show(engine, settings, normalize_email("good9@example.com"))["note"] == (
        "a note with \u00e4 in it")


def test_quoted_line_breaks_are_one_row(engine: sa.Engine, settings: Settings,
                                        tmp_path: Path) -> None:
    """A note may hold a line break; the line numbers after it stay physical."""
    path = write(tmp_path / "list.csv",
                 'address,status,note\n'
                 'a@example.com,denylisted,"two\nlines"\n'
                 'b@example.com,nonsense,\n')
    rejects = tmp_path / "rejects.csv"
    assert run(engine, settings, path, rejects) == QuarantineImportResult(1, 1)
    assert show(engine, settings, normalize_email("a@example.com"))["note"] == "two\nlines"
    assert [r["line_number"] for r in read_rejects(rejects)] == ["4"]


def test_rejects_file_mirrors_the_input_and_imports_once_fixed(
        engine: sa.Engine, settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path / "adobe.csv",
                 "Address;Status;failureReason\n"
                 "typo@@example.com;Quarantine;Unknown user\n"
                 "ok@example.com;Quarantine;Unknown user\n", bom=True)
    rejects = tmp_path / "rejects.csv"
    assert run(engine, settings, path, rejects) == QuarantineImportResult(1, 1)
    raw = rejects.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfline_number;error;Address;Status;failureReason\n")
    rejects.write_bytes(raw.replace(b"typo@@example.com", b"typo@example.com"))
    assert run(engine, settings, rejects) == QuarantineImportResult(1, 0)
    assert show(engine, settings, normalize_email("typo@example.com"))["status"] == "quarantined"


def test_valid_releases_and_statuses_replace(engine: sa.Engine, settings: Settings,
                                             tmp_path: Path) -> None:
    held = normalize_email("held@example.com")
    moved = normalize_email("moved@example.com")
    with engine.begin() as conn:
        quarantine.set_status(conn, held, rules.Status.QUARANTINED, "user_unknown", OP,
                              settings.quarantine)
        quarantine.set_status(conn, moved, rules.Status.QUARANTINED, "user_unknown", OP,
                              settings.quarantine)
    before = len(events(engine))
    path = write(tmp_path / "list.csv", "address,status\nHELD@example.com,valid\n"
                                        "moved@example.com,allowlisted\n")
    assert run(engine, settings, path) == QuarantineImportResult(2, 0)
    assert show(engine, settings, held)["status"] == "valid"
    assert show(engine, settings, moved)["status"] == "allowlisted"
    new = events(engine)[before:]
    assert sorted((e["address"], e["old_state"], e["new_state"], e["source"]) for e in new) == [
        ("held@example.com", "quarantined(user_unknown)", "valid", "import"),
        ("moved@example.com", "quarantined(user_unknown)", "allowlisted(import)", "import")]


def test_reimport_changes_nothing(engine: sa.Engine, settings: Settings,
                                  tmp_path: Path) -> None:
    path = write(tmp_path / "adobe.csv", ADOBE_EXPORT)
    first = run(engine, settings, path)
    count = len(events(engine))
    with engine.connect() as conn:
        table = conn.execute(sa.text("SELECT address_key, status, reason, error_count, "
                                     "last_error_at FROM quarantine ORDER BY id")).all()
    assert run(engine, settings, path) == first
    assert len(events(engine)) == count
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT address_key, status, reason, error_count, "
                                    "last_error_at FROM quarantine ORDER BY id")).all() == table


def test_one_address_several_times_across_chunks(engine: sa.Engine, settings: Settings,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows apply in file order whether they share a chunk or not; the ledger has each step."""
    monkeypatch.setattr(csv_import, "CHUNK_ROWS", 2)
    path = write(tmp_path / "list.csv",
                 "address,status,reason\n"
                 "Twice@Example.com,quarantined,user_unknown\n"
                 "twice@example.com,denylisted,complaint\n"  # same key, same chunk
                 "other@example.com,denylisted,\n"
                 "TWICE@example.com,valid,\n"  # next chunk
                 "twice@example.com,quarantined,mailbox_full\n")
    progress: list[tuple[int, int]] = []
    assert run(engine, settings, path, progress=progress) == QuarantineImportResult(5, 0)
    assert progress == [(2, 5), (4, 5), (5, 5), (5, 5)]
    twice = show(engine, settings, normalize_email("twice@example.com"))
    assert (twice["status"], twice["reason"]) == ("quarantined", "mailbox_full")
    assert stored_address(engine, "twice@example.com") == "Twice@example.com"  # first seen
    steps = [(e["old_state"], e["new_state"], e["evidence"]["line"]) for e in events(engine)
             if e["address"] == "twice@example.com"]
    assert steps == [("valid", "quarantined(user_unknown)", 2),
                     ("quarantined(user_unknown)", "denylisted(complaint)", 3),
                     ("denylisted(complaint)", "valid", 5),
                     ("valid", "quarantined(mailbox_full)", 6)]
    with engine.connect() as conn:
        assert ledger.verify(conn).ok


def test_error_history_drives_time_releases(engine: sa.Engine, settings: Settings,
                                            tmp_path: Path) -> None:
    """An imported erroneous address and mailbox-full quarantine are released by time like
    ours: from the last error's date in the file."""
    last = datetime(2025, 2, 1, 12, tzinfo=UTC)
    path = write(tmp_path / "list.csv",
                 "address,status,reason,errorCount,lastErrorDate,firstErrorDate\n"
                 "soft@example.com,erroneous,unreachable,2,2025-02-01T12:00:00Z,2025-01-20\n"
                 "full@example.com,quarantined,mailbox_full,1,2025-02-01 12:00:00,\n"
                 "soon@example.com,erroneous,,,2999-01-01,\n")
    rejects = tmp_path / "rejects.csv"
    assert run(engine, settings, path, rejects) == QuarantineImportResult(2, 1)
    assert "in the future" in read_rejects(rejects)[0]["error"]
    soft = normalize_email("soft@example.com")
    shown = show(engine, settings, soft, now=last)
    assert (shown["status"], shown["error_count"]) == ("erroneous", 2)
    assert shown["first_error_at"] == "2025-01-20T00:00:00+00:00"

    q = settings.quarantine
    with engine.begin() as conn:
        assert quarantine.release_due(conn, q, now=last + q.erroneous_reset_after
                                      - timedelta(microseconds=1)) == 0
        assert quarantine.release_due(conn, q, now=last + q.erroneous_reset_after) == 1
        # The next soft error inside the interval of the imported one would not count either.
        assert quarantine.release_due(conn, q, now=last + q.mailbox_full_release_after) == 1
    assert show(engine, settings, soft)["status"] == "valid"
    assert show(engine, settings, normalize_email("full@example.com"))["status"] == "valid"


def test_imported_erroneous_counts_on(engine: sa.Engine, settings: Settings,
                                      tmp_path: Path) -> None:
    """Adobe's count carries on: 4 imported soft errors + 1 of ours = quarantined (max 5)."""
    last = datetime(2025, 2, 1, 12, tzinfo=UTC)
    path = write(tmp_path / "list.csv",
                 "address,status,reason,errorCount,lastErrorDate\n"
                 "soft@example.com,erroneous,unreachable,4,2025-02-01T12:00:00Z\n")
    assert run(engine, settings, path).imported == 1
    soft = normalize_email("soft@example.com")
    bounce = Origin(source="bounce")
    with engine.begin() as conn:
        inside = quarantine.apply(conn, soft, rules.Failure("unreachable"), bounce,
                                  settings.quarantine, last + timedelta(hours=1))
        assert inside.after.error_count == 4  # inside the interval: not counted
        after = quarantine.apply(conn, soft, rules.Failure("unreachable"), bounce,
                                 settings.quarantine, last + timedelta(days=2))
        assert after.after.status is rules.Status.QUARANTINED


def test_plain_suppression_list(engine: sa.Engine, settings: Settings, tmp_path: Path) -> None:
    """A file of addresses only is a suppression list: every address denylisted."""
    path = write(tmp_path / "list.csv", "Email\nA@example.com\n\nb@example.com\n")
    assert run(engine, settings, path) == QuarantineImportResult(2, 0)
    for address in ("a@example.com", "b@example.com"):
        shown = show(engine, settings, normalize_email(address))
        assert (shown["status"], shown["reason"]) == ("denylisted", "import")


def test_whole_file_problems(engine: sa.Engine, settings: Settings, tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.csv", "")
    with pytest.raises(ConsentryError, match="expected a header line"):
        run(engine, settings, empty)
    no_address = write(tmp_path / "na.csv", "mail;status\nx@example.com;quarantined\n")
    with pytest.raises(ConsentryError, match="no address column"):
        run(engine, settings, no_address)
    with pytest.raises(ConsentryError, match="cannot be the imported file"):
        run(engine, settings, no_address, no_address)
    with pytest.raises(ConsentryError, match="cannot read"):
        run(engine, settings, tmp_path / "missing.csv")
    assert no_address.read_text() == "mail;status\nx@example.com;quarantined\n"
    assert events(engine) == []


def test_concurrent_writer_of_a_new_address(engine: sa.Engine, settings: Settings,
                                            tmp_path: Path) -> None:
    """A bounce inserting an address the import is about to insert: the import waits for it,
    then applies on top of it (PostgreSQL: the chunk is retried after the unique violation;
    SQLite: the writers are serialized)."""
    import threading
    import time

    address = normalize_email("race@example.com")
    path = write(tmp_path / "list.csv", "address,status,reason\n"
                                        "race@example.com,denylisted,complaint\n"
                                        "calm@example.com,denylisted,\n")
    results: list[QuarantineImportResult] = []
    with engine.connect() as other:
        tx = other.begin()
        quarantine.apply(other, address, rules.Failure("user_unknown"), Origin(source="bounce"),
                         settings.quarantine)
        worker = threading.Thread(target=lambda: results.append(run(engine, settings, path)))
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive()  # waiting for the bounce's transaction
        tx.commit()
    worker.join(timeout=30)
    assert results == [QuarantineImportResult(2, 0)]
    shown = show(engine, settings, address)
    assert (shown["status"], shown["reason"]) == ("denylisted", "complaint")
    states = sorted((e["source"], e["old_state"], e["new_state"]) for e in events(engine)
                    if e["address"] == "race@example.com")
    assert states == [("bounce", "valid", "quarantined(user_unknown)"),
                      ("import", "quarantined(user_unknown)", "denylisted(complaint)")]
    with engine.connect() as conn:
        assert ledger.verify(conn).ok
