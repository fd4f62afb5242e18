"""`profiles import`: columns (ours and Adobe's), reading, rejects with their physical lines,
upserts, consent changes in the ledger, --service, suppressions, and the phone fast path."""

from __future__ import annotations

import csv
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
import sqlalchemy as sa

from consentry.consent import service as consent
from consentry.domain.addresses import normalize_phone
from consentry.domain.channels import Channel
from consentry.domain.errors import ConsentryError, InvalidAddress, NotFound
from consentry.domain.ledger import Origin
from consentry.ledger import service as ledger
from consentry.privacy import service as privacy
from consentry.profiles import service as profiles
from consentry.profiles.csv_import import ImportResult, ImportTuning, phone_value, run_import
from consentry.profiles.csv_io import import_profiles
from consentry.settings import Settings
from consentry.store.schema import ledger_events, opt_outs, push_tokens, subscriptions
from consentry.store.schema import profiles as profiles_table
from consentry.store.types import utcnow

ORIGIN = Origin(source="import", actor="os:tester")
OPERATOR = Origin(source="cli", actor="os:tester")


def _import(engine: sa.Engine, settings: Settings, tmp_path: Path, content: str | bytes, *,
            service: str | None = None, tuning: ImportTuning | None = None,
            name: str = "in.csv") -> tuple[ImportResult, list[list[str]]]:
    """Import `content`; the result and the rejects file's rows (header first)."""
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    rejects = tmp_path / f"{name}.rejects.csv"
    result = run_import(engine, settings, path, rejects_path=rejects, service_slug=service,
                        origin=ORIGIN, tuning=tuning)
    text = rejects.read_text(encoding="utf-8-sig")
    delimiter = ";" if text.startswith("line_number;") else ","
    return result, list(csv.reader(text.splitlines(keepends=True), delimiter=delimiter))


def _profiles(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    """Profiles by external id (or by email key when they have none)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(profiles_table).order_by(profiles_table.c.id)).mappings()
        return {r["external_id"] or r["email_key"]: dict(r) for r in rows}


def _opt_outs(engine: sa.Engine) -> set[tuple[int, str]]:
    with engine.connect() as conn:
        return {(r.profile_id, r.scope) for r in conn.execute(sa.select(opt_outs))}


def _events(engine: sa.Engine) -> list[dict[str, Any]]:
    """Ledger events, the import's in file order (the ledger stores a batch partition by
    partition), others before them."""
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(
            sa.select(ledger_events).order_by(ledger_events.c.id)).mappings()]
    return sorted(rows, key=lambda e: ((e["evidence"] or {}).get("line", 0), e["id"]))


def _new(engine: sa.Engine, settings: Settings, **fields: Any) -> int:
    with engine.begin() as conn:
        return profiles.create(conn, settings, profiles.NewProfile(**fields), OPERATOR)


# --- Columns and reading --------------------------------------------------------------------


def test_adobe_columns_bom_and_semicolons(engine, settings, tmp_path):
    content = (
        "\ufeffPKey;email;mobilePhone;firstName;lastName;blackList;blackListEmail;"
        "blackListMobile;blackListPushnotification;push_token;Segment\n"
        "A-1;Anna.Schmidt@Example.DE;0151 23456789;Anna;Schmidt;0;1;;;;gold\n"
        'A-2;"bob@example.com";+44 7911 123456;Bob;"Smith; Jr.";ja;;nein;yes;tok-12345678;\n'
    )
    result, rejects = _import(engine, settings, tmp_path, content)
    assert result == ImportResult(imported=2, updated=0, rejected=0)
    assert rejects == [["line_number", "reason", "PKey", "email", "mobilePhone", "firstName",
                        "lastName", "blackList", "blackListEmail", "blackListMobile",
                        "blackListPushnotification", "push_token", "Segment"]]
    found = _profiles(engine)
    anna, bob = found["A-1"], found["A-2"]
    assert (anna["email"], anna["email_key"]) == ("Anna.Schmidt@example.de",
                                                  "anna.schmidt@example.de")
    assert anna["phone"] == "+4915123456789"
    assert (anna["first_name"], anna["last_name"]) == ("Anna", "Schmidt")
    assert anna["attributes"] == {"Segment": "gold"}
    assert bob["last_name"] == "Smith; Jr."
    assert bob["phone"] == normalize_phone("+44 7911 123456").value
    assert bob["attributes"] is None
    assert _opt_outs(engine) == {(anna["id"], "email"), (bob["id"], "all"), (bob["id"], "push")}
    with engine.connect() as conn:
        assert conn.execute(sa.select(push_tokens.c.profile_id, push_tokens.c.token)).all() == [
            (bob["id"], "tok-12345678")]
    events = [(e["kind"], e["source"], e["actor"], e["profile_id"], e["channel"],
               e["new_state"], e["evidence"]) for e in _events(engine)]
    assert events == [
        ("opt_out", "import", "os:tester", anna["id"], "email", "opted_out",
         {"file": "in.csv", "line": 2}),
        ("opt_out", "import", "os:tester", bob["id"], "all", "opted_out",
         {"file": "in.csv", "line": 3}),
        ("opt_out", "import", "os:tester", bob["id"], "push", "opted_out",
         {"file": "in.csv", "line": 3}),
    ]
    with engine.connect() as conn:
        assert ledger.verify(conn).ok


def test_yes_no_spellings_and_empty_leaves_alone(engine, settings, tmp_path):
    kept = _new(engine, settings, external_id="KEEP")
    cleared = _new(engine, settings, external_id="CLEAR")
    with engine.begin() as conn:
        consent.opt_out(conn, kept, None, OPERATOR)
        consent.opt_out(conn, cleared, None, OPERATOR)
    yes = ["1", "true", "TRUE", "yes", "ja", "Ja", "y", "Y"]
    no = ["0", "false", "no", "nein", "N"]
    lines = ["external_id,opted_out"]
    lines += [f"Y{i},{v}" for i, v in enumerate(yes)] + [f"N{i},{v}" for i, v in enumerate(no)]
    lines += ["KEEP,", "CLEAR, nein "]
    result, _ = _import(engine, settings, tmp_path, "\n".join(lines) + "\n")
    assert result == ImportResult(imported=len(yes) + len(no), updated=2, rejected=0)
    found = _profiles(engine)
    opted = {pid for pid, scope in _opt_outs(engine) if scope == "all"}
    assert {found[f"Y{i}"]["id"] for i in range(len(yes))} | {kept} == opted
    opt_ins = [e for e in _events(engine) if e["kind"] == "opt_in"]
    assert [(e["profile_id"], e["channel"], e["source"]) for e in opt_ins] == [
        (cleared, "all", "import")]


def test_quoted_multiline_fields_keep_line_numbers(engine, settings, tmp_path):
    content = (
        "external_id,email,note\n"
        'Q1,q1@example.com,"first line\n'
        'second, with a comma\n'
        'and ""quotes"""\n'
        "Q2,broken@,plain\n"
        'Q3,q3@example.com,"a\r\nb"\r\n'
        "Q4,q4@@example.com,x\n"
    )
    result, rejects = _import(engine, settings, tmp_path, content)
    assert (result.imported, result.rejected) == (2, 2)
    assert [r[0] for r in rejects[1:]] == ["5", "8"]
    assert _profiles(engine)["Q1"]["attributes"] == {
        "note": 'first line\nsecond, with a comma\nand "quotes"'}
    assert _profiles(engine)["Q3"]["attributes"] == {"note": "a\r\nb"}


def test_header_problems_fail_the_whole_import(engine, settings, tmp_path):
    cases = {
        "external_id,email,Email\n": "mean the same thing",
        "external_id,blackList,opted_out\n": "mean the same thing",
        "external_id,,email\n": "column 2 of the header has no name",
        "external_id,push_app_id\n": "needs a push_token column",
        "\n": "no header line",
        b"external_id,M\xfcller\n": "not valid UTF-8",
    }
    for content, message in cases.items():
        with pytest.raises(ConsentryError, match=message):
            _import(engine, settings, tmp_path, content)
    assert _profiles(engine) == {}


# --- Rejects ----------------------------------------------------------------------------------

BAD_FILE = b"".join([
    b"external_id,email,phone,first_name,locale,opted_out,subscriptions,note\n",  # 1
    b'G1,g1@example.com,,Good,,,,"multi\n',  # 2
    b'line note"\n',  # 3
    b"B1,not-an-email,,,,,,\n",  # 4
    b"B2,,12345,,,,,\n",  # 5
    b"B3,b3@example.com,,,,maybe,,\n",  # 6
    b"B4,b4@example.com,,,xx_yyyyyyyyyyy!,,,\n",  # 7
    b"B5,b5@example.com,,\n",  # 8
    b"B6,b6@example.com,,M\xfcller,,,,\n",  # 9
    b"G1,dup@example.com,,,,,,\n",  # 10
    b",G1@example.com,,,,,,\n",  # 11
    b"B7,b7@example.com,,,,,nope:subscribed,\n",  # 12
    b",,,Nobody,,,,\n",  # 13
    b'B8,"b8@example.com,,,,,,\n',  # 14
    b"G2,g2@example.com,,Second,,,,\n",  # 15
    b'G3,g3@example.com,,Third,,,,"x"\n',  # 16
    b"X" * 256 + b",b9@example.com,,,,,,\n",  # 17
    b"\n",  # 18
    b",,,,,,,\n",  # 19
    b"G4,G4@Example.com,0151 23456789,Fourth,de_at,ja,,\n",  # 20
])

EXPECTED_REJECTS = {
    4: ["bad email address 'not-an-email'", "must have an @-sign"],
    5: ["bad phone number '12345'"],
    6: ["opted_out 'maybe' is not a yes/no value"],
    7: ["invalid locale 'xx_yyyyyyyyyyy!'"],
    8: ["wrong column count: 4 fields, the header has 8"],
    9: ["line 9 is not valid UTF-8 (byte 0xFC at position 21)"],
    10: ["duplicate external_id 'G1': line 2 of this file has it already"],
    11: ["duplicate email 'G1@example.com': line 2 of this file has it already"],
    12: ["unknown service 'nope' in subscriptions"],
    13: ["no external_id, email, phone or push token"],
    14: ["not readable as CSV: a quoted field must end at a delimiter or the end of the line",
         "the 2 line(s) after it were read again on their own"],
    17: ["external_id is longer than 255 characters"],
}


def _check_bad_file(rejects: list[list[str]]) -> None:
    by_line = {int(r[0]): r for r in rejects[1:]}
    assert sorted(by_line) == sorted(EXPECTED_REJECTS)
    for line, phrases in EXPECTED_REJECTS.items():
        for phrase in phrases:
            assert phrase in by_line[line][1], (line, by_line[line][1])
    assert by_line[4][2:] == ["B1", "not-an-email", "", "", "", "", "", ""]
    assert by_line[9][2:] == ["B6", "b6@example.com", "", "M\\xfcller", "", "", "", ""]
    assert by_line[10][2:] == ["G1", "dup@example.com", "", "", "", "", "", ""]
    assert by_line[8][2:] == ["B5", "b5@example.com", "", ""]
    assert by_line[14][2:] == ['B8,"b8@example.com,,,,,,']


def test_every_bad_row_is_rejected_with_its_line_and_every_good_row_lands(engine, settings,
                                                                          tmp_path):
    result, rejects = _import(engine, settings, tmp_path, BAD_FILE)
    assert result == ImportResult(imported=4, updated=0, rejected=len(EXPECTED_REJECTS))
    _check_bad_file(rejects)
    found = _profiles(engine)
    assert sorted(found) == ["G1", "G2", "G3", "G4"]
    assert found["G1"]["attributes"] == {"note": "multi\nline note"}
    assert found["G3"]["attributes"] == {"note": "x"}
    assert (found["G4"]["email"], found["G4"]["phone"], found["G4"]["locale"]) == (
        "G4@example.com", "+4915123456789", "de-AT")
    assert _opt_outs(engine) == {(found["G4"]["id"], "all")}


def test_cutting_the_file_anywhere_gives_the_same_result(engine, settings, tmp_path):
    """Blocks of a few bytes (cuts inside records, inside quoted fields) and worker processes
    read the file as one pass from start to end does."""
    first, rejects = _import(engine, settings, tmp_path, BAD_FILE)
    for tuning in (ImportTuning(chunk_bytes=40, workers=1),
                   ImportTuning(chunk_bytes=7, workers=2, pool_min_bytes=0)):
        again, same = _import(engine, settings, tmp_path, BAD_FILE, tuning=tuning)
        assert again == ImportResult(imported=0, updated=first.imported,
                                     rejected=first.rejected)
        assert same == rejects


def test_a_record_that_runs_on_with_the_wrong_field_count(engine, settings, tmp_path):
    # The quote opened on line 2 closes on line 4, before a delimiter: a well-formed record of
    # four fields where three are expected. Its first line is rejected, the others read again.
    content = 'external_id,first_name,note\nU1,"Una,x\nU2,Udo,y\nU3",Uwe,z\nU4,Ute,w\n'
    result, rejects = _import(engine, settings, tmp_path, content)
    assert [r[:2] for r in rejects[1:]] == [[
        "2", "unbalanced quote: a quoted field opened on this line runs on to line 4 and the "
             "record has 4 fields instead of 3; the lines after this one were read again on "
             "their own"]]
    assert rejects[1][2:] == ['U1,"Una,x']
    assert sorted(_profiles(engine)) == ["U2", 'U3"', "U4"]
    assert result.imported == 3


def test_a_quote_never_closed_at_the_end_of_the_file(engine, settings, tmp_path):
    content = 'external_id,note\nV1,fine\nV2,"open\nV3,after\n'
    _, rejects = _import(engine, settings, tmp_path, content)
    assert [r[:2] for r in rejects[1:]] == [[
        "3", "not readable as CSV: a quote opened on this line is never closed; the 1 line(s) "
             "after it were read again on their own"]]
    assert sorted(_profiles(engine)) == ["V1", "V3"]


def test_a_quote_that_fools_the_block_cutter(engine, settings, tmp_path):
    # `a"b` is a literal quote; `"c` opens a quoted field: two quotes, yet a field is open at the
    # end of the line, so a cut there splits a record. The worker hands it back.
    content = (
        "external_id,first_name,note\n"
        "T1,Tom,fine\n"
        'T2,a"b,"c\n'
        "T3,Tim,more\n"
        "T4,Tina,also\n"
        'T5,Tess,"closing"\n'
        "T6,Theo,end\n"
    )
    whole, whole_rejects = _import(engine, settings, tmp_path, content)
    again, rejects = _import(engine, settings, tmp_path, content,
                             tuning=ImportTuning(chunk_bytes=16, workers=1))
    assert rejects == whole_rejects
    assert [r[0] for r in rejects[1:]] == ["3"]
    assert (whole.imported, again.updated) == (5, 5)
    assert sorted(_profiles(engine)) == ["T1", "T3", "T4", "T5", "T6"]


def test_rejects_are_counted_without_a_rejects_file(engine, settings, tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(BAD_FILE)
    result = import_profiles(engine, settings, path, rejects_path=None, service_slug=None,
                             origin=ORIGIN)
    assert result.rejected == len(EXPECTED_REJECTS)


def test_a_corrected_rejects_file_imports_as_it_is(engine, settings, tmp_path):
    _, rejects = _import(engine, settings, tmp_path, BAD_FILE)
    fixed = [rejects[0]] + [r for r in rejects[1:] if r[0] in ("4", "6")]
    fixed[1][3] = "b1@example.com"
    fixed[2][7] = "yes"
    with (tmp_path / "fixed.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(fixed)
    result, _ = _import(engine, settings, tmp_path, (tmp_path / "fixed.csv").read_bytes(),
                        name="fixed2.csv")
    assert result == ImportResult(imported=2, updated=0, rejected=0)
    found = _profiles(engine)
    assert found["B1"]["email"] == "b1@example.com"
    assert (found["B3"]["id"], "all") in _opt_outs(engine)
    assert "line_number" not in (found["B1"]["attributes"] or {})


# --- Upserts -------------------------------------------------------------------------------


def test_update_by_external_id_changes_given_fields_only(engine, settings, tmp_path):
    pid = _new(engine, settings, external_id="E1", email="old@example.de",
               phone="+4915123456789", first_name="Old", last_name="Name", locale="de",
               attributes={"a": "1", "b": "2"})
    before = _profiles(engine)["E1"]
    content = "external_id,email,first_name,last_name,locale,b,c\nE1,,New,,,20,3\nE2,,Two,,,,\n"
    result, _ = _import(engine, settings, tmp_path, content)
    assert result == ImportResult(imported=1, updated=1, rejected=0)
    after = _profiles(engine)["E1"]
    assert after["id"] == pid
    assert (after["email"], after["phone"], after["last_name"], after["locale"]) == (
        "old@example.de", "+4915123456789", "Name", "de")
    assert after["first_name"] == "New"
    assert after["attributes"] == {"a": "1", "b": "20", "c": "3"}
    assert after["updated_at"] > before["updated_at"]
    # Nothing given differs: the profile is not written again.
    _import(engine, settings, tmp_path, content)
    assert _profiles(engine)["E1"]["updated_at"] == after["updated_at"]


def test_update_by_email_key(engine, settings, tmp_path):
    pid = _new(engine, settings, email="Carla.Diaz@Example.com", first_name="Carla")
    result, _ = _import(engine, settings, tmp_path,
                        "email,last_name\nCARLA.DIAZ@EXAMPLE.COM,Díaz\nnew@example.com,New\n")
    assert result == ImportResult(imported=1, updated=1, rejected=0)
    carla = _profiles(engine)["carla.diaz@example.com"]
    assert (carla["id"], carla["email"], carla["first_name"], carla["last_name"]) == (
        pid, "CARLA.DIAZ@example.com", "Carla", "Díaz")


def test_an_email_several_profiles_hold_is_ambiguous(engine, settings, tmp_path):
    first = _new(engine, settings, email="shared@example.com")
    second = _new(engine, settings, email="Shared@example.com")
    content = "external_id,email,first_name\n,shared@example.com,Who\nS3,shared@example.com,Me\n"
    result, rejects = _import(engine, settings, tmp_path, content)
    assert result == ImportResult(imported=1, updated=0, rejected=1)
    assert rejects[1][:2] == ["2", f"ambiguous email: 2 profiles hold it (ids {first}, "
                                   f"{second}); add an external_id to say which"]
    assert _profiles(engine)["S3"]["email_key"] == "shared@example.com"


def test_one_profile_reached_by_two_rows_is_updated_once(engine, settings, tmp_path):
    pid = _new(engine, settings, external_id="P1", email="p1@example.com")
    content = "external_id,email,first_name\nP1,,First\n,p1@example.com,Second\n"
    result, rejects = _import(engine, settings, tmp_path, content)
    assert result == ImportResult(imported=0, updated=1, rejected=1)
    assert rejects[1][:2] == ["3", f"line 2 of this file already updates the profile this row "
                                   f"matches (id {pid})"]
    assert _profiles(engine)["P1"]["first_name"] == "First"


def test_an_email_taken_away_earlier_in_the_file_does_not_find_its_old_profile(
        engine, settings, tmp_path):
    pid = _new(engine, settings, external_id="P1", email="old@example.com")
    content = ("external_id,email,first_name\n"
               "P1,new@example.com,Moved\n"
               ",OLD@example.com,Who\n")
    for tuning in (ImportTuning(), ImportTuning(chunk_bytes=8, workers=1)):
        with engine.begin() as conn:  # as before the import, for each way of cutting the file
            conn.execute(profiles_table.update().where(profiles_table.c.id == pid).values(
                email="old@example.com", email_key="old@example.com"))
        result, rejects = _import(engine, settings, tmp_path, content, tuning=tuning)
        assert result == ImportResult(imported=0, updated=1, rejected=1)
        assert rejects[1][:2] == ["3", "email 'OLD@example.com' is the one line 2 of this file "
                                       "replaces on its profile; add an external_id to say "
                                       "which profile this row is"]
        assert _profiles(engine)["P1"]["id"] == pid


# --- Consent -----------------------------------------------------------------------------------


def test_opt_out_changes_are_ledger_events_with_source_import(engine, settings, tmp_path):
    pid = _new(engine, settings, external_id="P1", phone="+4915123456789")
    with engine.begin() as conn:
        consent.opt_out(conn, pid, Channel.SMS, OPERATOR)
    content = "external_id,sms_opted_out,email_opted_out,push_opted_out\nP1,0,1,0\n"
    result, _ = _import(engine, settings, tmp_path, content)
    assert result.updated == 1
    assert _opt_outs(engine) == {(pid, "email")}
    events = [(e["kind"], e["source"], e["channel"], e["old_state"], e["new_state"],
               e["evidence"]) for e in _events(engine)][1:]
    assert events == [
        ("opt_out", "import", "email", "opted_in", "opted_out", {"file": "in.csv", "line": 2}),
        ("opt_in", "import", "sms", "opted_out", "opted_in", {"file": "in.csv", "line": 2}),
    ]
    _import(engine, settings, tmp_path, content)  # nothing changes: nothing recorded
    assert len(_events(engine)) == 3
    with engine.connect() as conn:
        assert ledger.verify(conn).ok


def test_service_subscribes_every_good_row(engine, settings, tmp_path):
    with engine.begin() as conn:
        news = consent.create_service(conn, "news", Channel.EMAIL, "News", double_opt_in=True,
                                      validity_days=30)
    subscribed = _new(engine, settings, external_id="S1")
    unsubscribed = _new(engine, settings, external_id="U1")
    with engine.begin() as conn:
        consent.subscribe(conn, subscribed, news, OPERATOR, confirmed=True)
        consent.subscribe(conn, unsubscribed, news, OPERATOR, confirmed=True)
        consent.unsubscribe(conn, unsubscribed, news, OPERATOR)
    start = utcnow()
    content = "external_id,email\nS1,\nU1,\nN1,n1@example.com\nBAD,bad@\n"
    result, _ = _import(engine, settings, tmp_path, content, service="news")
    assert result == ImportResult(imported=1, updated=2, rejected=1)
    found = _profiles(engine)
    with engine.connect() as conn:
        states = {r.profile_id: r for r in conn.execute(sa.select(subscriptions))}
    for external_id in ("S1", "U1", "N1"):
        row = states[found[external_id]["id"]]
        assert row.state == "subscribed"
        assert row.expires_at > start + timedelta(days=29)
    events = [(e["profile_id"], e["kind"], e["source"], e["service"], e["old_state"],
               e["new_state"]) for e in _events(engine) if e["source"] == "import"]
    assert events == [
        (unsubscribed, "subscription", "import", "news", "unsubscribed", "subscribed"),
        (found["N1"]["id"], "subscription", "import", "news", None, "subscribed"),
    ]


def test_an_unknown_service_fails_before_any_row_is_read(engine, settings, tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"not even,a,,header\xff\n")
    rejects = tmp_path / "rejects.csv"
    with pytest.raises(NotFound, match="unknown service 'nope'"):
        run_import(engine, settings, path, rejects_path=rejects, service_slug="nope",
                   origin=ORIGIN)
    assert not rejects.exists()


def test_subscriptions_column(engine, settings, tmp_path):
    with engine.begin() as conn:
        consent.create_service(conn, "news", Channel.EMAIL, "News")
        consent.create_service(conn, "alerts", Channel.SMS, "Alerts")
    content = (
        "external_id,subscriptions\n"
        "A1,news:subscribed|alerts:unsubscribed\n"
        "A2,news:maybe\n"
        "A3,weekly:subscribed\n"
        "A4,news:subscribed|news:pending\n"
        "A5,news:pending\n"
    )
    result, rejects = _import(engine, settings, tmp_path, content)
    assert result == ImportResult(imported=2, updated=0, rejected=3)
    assert [(r[0], r[1]) for r in rejects[1:]] == [
        ("3", "subscriptions entry 'news:maybe' is not SERVICE:STATE with a state of expired, "
              "pending, subscribed, unsubscribed"),
        ("4", "unknown service 'weekly' in subscriptions"),
        ("5", "service 'news' is twice in subscriptions"),
    ]
    with engine.connect() as conn:
        a1 = profiles.resolve(conn, "A1")
        a5 = profiles.resolve(conn, "A5")
        assert [(s["service"], s["state"]) for s in consent.subscriptions_of(conn, a1)] == [
            ("alerts", "unsubscribed"), ("news", "subscribed")]
        assert [s["state"] for s in consent.subscriptions_of(conn, a5)] == ["pending"]
    result, rejects = _import(engine, settings, tmp_path, content.replace("A2,news:maybe",
                                                                          "A2,news:unsubscribed"),
                              service="news")
    assert ("3", "subscriptions says news:unsubscribed but --service news subscribes every row"
            ) in [(r[0], r[1]) for r in rejects[1:]]


def test_push_tokens(engine, settings, tmp_path):
    content = (
        "external_id,push_token,push_app_id,push_platform,push_tokens\n"
        'P1,tok-aaaaaaaa,com.example.app,ios,"[{""token"": ""tok-bbbbbbbb"", '
        '""app_id"": ""com.example.app"", ""platform"": ""android""}]"\n'
        "P2,short,,,\n"
        "P3,,com.example.app,,\n"
    )
    result, rejects = _import(engine, settings, tmp_path, content)
    assert (result.imported, result.rejected) == (1, 2)
    assert [r[1] for r in rejects[1:]] == [
        "bad push token: a push token is 8 to 4096 printable ASCII characters",
        "push_app_id or push_platform without a push_token"]
    with engine.connect() as conn:
        tokens = conn.execute(sa.select(push_tokens.c.token, push_tokens.c.app_id,
                                        push_tokens.c.platform).order_by(push_tokens.c.token))
        assert tokens.all() == [("tok-aaaaaaaa", "com.example.app", "ios"),
                                ("tok-bbbbbbbb", "com.example.app", "android")]


def test_an_erased_suppressed_address_stays_suppressed(engine, settings, tmp_path):
    gone = _new(engine, settings, email="gone@example.de", phone="+4915123456789")
    with engine.begin() as conn:
        consent.opt_out(conn, gone, Channel.EMAIL, OPERATOR)
        privacy.erase(conn, settings, gone, OPERATOR)
    other = _new(engine, settings, external_id="OTHER", email="other@example.de")
    content = ("external_id,email,phone\nBACK,Gone@Example.DE,\nOTHER,,0151 23456789\n"
               "FRESH,f@x.de,\n")
    result, _ = _import(engine, settings, tmp_path, content)
    assert result == ImportResult(imported=2, updated=1, rejected=0)
    back = _profiles(engine)["BACK"]["id"]
    with engine.connect() as conn:
        details = consent.optout_details(conn, back)
    assert set(details) == {"email"}
    assert details["email"]["source"] == "suppression"
    assert (other, "sms") in _opt_outs(engine)  # its new number was suppressed too
    suppressed = {(e["profile_id"], e["channel"], e["source"]) for e in _events(engine)
                  if e["kind"] == "suppression"}
    assert suppressed == {(back, "email", "import"), (other, "sms", "import")}


# --- Many rows ---------------------------------------------------------------------------------


def _generated(rows: int, seed: int) -> tuple[bytes, set[int]]:
    """A CSV of `rows` rows, about one in twenty bad; the bad rows' lines."""
    r = random.Random(seed)
    out = ["external_id;email;phone;first_name;blackList;blackListEmail;note"]
    bad: set[int] = set()
    good: list[str] = []
    line = 1
    for i in range(rows):
        phone = r.choice(["", f"+49 151 {r.randint(10**7, 10**8 - 1)}",
                          f"0170/{r.randint(10**6, 10**7 - 1)}"])
        note = r.choice(["", "", "", '"zwei\nZeilen"', '"mit ""Zitat"""'])
        fields = [f"X{i}", f"user{i}@example.org", phone, r.choice(["Jörg", "Ann", ""]),
                  r.choice(["", "", "1", "0"]), r.choice(["", "ja", "nein"]), note]
        kind = r.random()
        if kind < 0.02:
            fields[1] = f"user{i}@"
        elif kind < 0.03:
            fields[2] = "12345"
        elif kind < 0.04:
            fields = fields[:3]
        elif kind < 0.05 and good:
            fields[0] = r.choice(good)  # the external id of an earlier good row
        line += 1
        if kind < 0.04 or (kind < 0.05 and good):
            bad.add(line)
        else:
            good.append(fields[0])
        out.append(";".join(fields))
        line += out[-1].count("\n")
    return ("\n".join(out) + "\n").encode(), bad


def test_a_few_thousand_rows_through_worker_processes(engine, settings, tmp_path):
    content, bad = _generated(3000, seed=5)
    result, rejects = _import(engine, settings, tmp_path, content,
                              tuning=ImportTuning(chunk_bytes=8192, workers=2, pool_min_bytes=0))
    assert {int(r[0]) for r in rejects[1:]} == bad
    assert result == ImportResult(imported=3000 - len(bad), updated=0, rejected=len(bad))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(profiles_table)).scalar() \
            == 3000 - len(bad)
        assert ledger.verify(conn).ok
    # In-process, in one block: the same answer.
    again, same = _import(engine, settings, tmp_path, content,
                          tuning=ImportTuning(chunk_bytes=1 << 24, workers=1))
    assert again == ImportResult(imported=0, updated=result.imported, rejected=result.rejected)
    assert same == rejects


# --- The phone fast path ----------------------------------------------------------------------


def _reference(raw: str, region: str) -> str:
    try:
        return normalize_phone(raw, region).value
    except InvalidAddress as exc:
        return f"invalid: {exc.why}"


def _fast(raw: str, region: str) -> str:
    try:
        return phone_value(raw, region)
    except InvalidAddress as exc:
        return f"invalid: {exc.why}"


def test_phone_fast_path_agrees_with_normalize_phone():
    formats = (phonenumbers.PhoneNumberFormat.E164, phonenumbers.PhoneNumberFormat.INTERNATIONAL,
               phonenumbers.PhoneNumberFormat.NATIONAL)
    cases = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE,
                     phonenumbers.PhoneNumberType.TOLL_FREE):
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                cases += [(phonenumbers.format_number(number, f), r)
                          for f in formats for r in (region, "DE")]
    r = random.Random(11)
    codes = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
    regions = ["DE", "AT", "CH", "GB", "US", "FR", "IT", "AR", "BR", "MX", "RU", "IN"]
    for _ in range(3000):
        digits = "".join(r.choice("0123456789") for _ in range(r.randint(0, 14)))
        cut = r.randint(0, len(digits))
        body = digits[:cut] + r.choice(["", " ", "-", "/", ".", " (0) "]) + digits[cut:]
        text = r.choice([f"+{r.choice(codes)} {body}", f"00{r.choice(codes)}{body}", body,
                         f"0{body}", f"({body[:3]}) {body[3:]}"])
        cases.append((text, r.choice(regions)))
    mismatches = [(raw, region, _reference(raw, region), _fast(raw, region))
                  for raw, region in cases if _reference(raw, region) != _fast(raw, region)]
    assert mismatches == []
