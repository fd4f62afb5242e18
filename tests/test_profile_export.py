"""`profiles export`: every profile with its consent columns, streamed, in a form that
`profiles import` reads back (same database: nothing changes; an empty one: the same profiles)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from consentry.consent import service as consent
from consentry.domain.channels import Channel
from consentry.domain.ledger import Origin
from consentry.profiles import service as profiles
from consentry.profiles.csv_io import EXPORT_COLUMNS, ImportResult, export_profiles, run_import
from consentry.settings import Settings
from consentry.store.engine import make_engine, upgrade
from consentry.store.schema import ledger_events

OPERATOR = Origin(source="cli", actor="os:tester")
IMPORT = Origin(source="import", actor="os:tester")


def _export(engine: sa.Engine, settings: Settings, path: Path) -> tuple[int, list[dict[str, str]],
                                                                       list[tuple[int, int]]]:
    """(rows written, the file's rows, the progress calls)."""
    calls: list[tuple[int, int]] = []
    written = export_profiles(engine, settings, path,
                              progress=lambda done, total: calls.append((done, total)))
    with path.open(newline="", encoding="utf-8") as f:
        return written, list(csv.DictReader(f)), calls


def _populate(engine: sa.Engine, settings: Settings) -> dict[str, int]:
    with engine.begin() as conn:
        news = consent.create_service(conn, "news", Channel.EMAIL, "News")
        alerts = consent.create_service(conn, "alerts", Channel.SMS, "Alerts")
        full = profiles.create(conn, settings, profiles.NewProfile(
            email="Eva.Berg@Example.de", phone="0151 23456789", first_name="Eva",
            last_name="Berg, geb. Groß", locale="de-DE", external_id="CRM-1",
            attributes={"tier": "gold", "note": "zwei\nZeilen"},
            push_tokens=(profiles.PushToken("tok-12345678", "com.example.app", "ios"),)),
            OPERATOR)
        bare = profiles.create(conn, settings, profiles.NewProfile(email="bare@example.com"),
                               OPERATOR)
        consent.opt_out(conn, full, None, OPERATOR)
        consent.opt_out(conn, full, Channel.SMS, OPERATOR)
        consent.subscribe(conn, full, news, OPERATOR, confirmed=True)
        consent.subscribe(conn, full, alerts, OPERATOR, confirmed=True)
        consent.unsubscribe(conn, full, alerts, OPERATOR)
    return {"full": full, "bare": bare}


def test_export_writes_profiles_with_their_consent(engine, settings, tmp_path):
    ids = _populate(engine, settings)
    written, rows, calls = _export(engine, settings, tmp_path / "out.csv")
    assert written == 2
    assert calls == [(2, 2)]
    assert list(rows[0]) == [*EXPORT_COLUMNS, "note", "tier"]
    full, bare = rows
    assert {k: full[k] for k in EXPORT_COLUMNS if k != "created_at"} == {
        "id": str(ids["full"]), "external_id": "CRM-1", "email": "Eva.Berg@example.de",
        "phone": "+4915123456789", "first_name": "Eva", "last_name": "Berg, geb. Groß",
        "locale": "de-DE", "opted_out": "1", "email_opted_out": "0", "sms_opted_out": "1",
        "push_opted_out": "0", "subscriptions": "alerts:unsubscribed|news:subscribed",
        "push_tokens": '[{"token":"tok-12345678","app_id":"com.example.app",'
                       '"platform":"ios"}]'}
    assert (full["tier"], full["note"]) == ("gold", "zwei\nZeilen")
    assert full["created_at"].endswith("+00:00")
    assert {k: bare[k] for k in ("id", "email", "external_id", "opted_out", "subscriptions",
                                 "push_tokens", "tier")} == {
        "id": str(ids["bare"]), "email": "bare@example.com", "external_id": "",
        "opted_out": "0", "subscriptions": "", "push_tokens": "", "tier": ""}


def test_an_empty_database_exports_a_header(engine, settings, tmp_path):
    written, rows, calls = _export(engine, settings, tmp_path / "out.csv")
    assert (written, rows, calls) == (0, [], [])
    assert (tmp_path / "out.csv").read_text().strip() == ",".join(EXPORT_COLUMNS)


def _ledger_size(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(ledger_events)).scalar_one()


def test_reimporting_an_export_changes_nothing(engine, settings, tmp_path):
    _populate(engine, settings)
    _, before, _ = _export(engine, settings, tmp_path / "before.csv")
    events = _ledger_size(engine)
    result = run_import(engine, settings, tmp_path / "before.csv",
                        rejects_path=tmp_path / "rejects.csv", service_slug=None, origin=IMPORT)
    assert result == ImportResult(imported=0, updated=2, rejected=0)
    assert _ledger_size(engine) == events
    _, after, _ = _export(engine, settings, tmp_path / "after.csv")
    assert after == before


def _comparable(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in ("id", "created_at")} for row in rows]


def test_an_export_recreates_the_profiles_in_an_empty_database(engine, settings, tmp_path):
    """From either database into a fresh SQLite one: the same profiles, consent, subscriptions,
    tokens and attributes come back."""
    _populate(engine, settings)
    _, exported, _ = _export(engine, settings, tmp_path / "out.csv")
    target_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    target = make_engine(target_url)
    try:
        upgrade(target)
        target_settings = Settings(database_url=target_url)
        with target.begin() as conn:
            consent.create_service(conn, "news", Channel.EMAIL, "News")
            consent.create_service(conn, "alerts", Channel.SMS, "Alerts")
        result = run_import(target, target_settings, tmp_path / "out.csv",
                            rejects_path=tmp_path / "rejects.csv", service_slug=None,
                            origin=IMPORT)
        assert result == ImportResult(imported=2, updated=0, rejected=0)
        _, recreated, _ = _export(target, target_settings, tmp_path / "again.csv")
        assert _comparable(recreated) == _comparable(exported)
    finally:
        target.dispose()


def test_export_streams_in_batches(engine, settings, tmp_path):
    lines = ["external_id,email,opted_out"] + [
        f"B{i},b{i}@example.org,{'1' if i % 7 == 0 else ''}" for i in range(6000)]
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    run_import(engine, settings, tmp_path / "in.csv", rejects_path=None, service_slug=None,
               origin=IMPORT)
    written, rows, calls = _export(engine, settings, tmp_path / "out.csv")
    assert written == 6000
    assert calls == [(5000, 6000), (6000, 6000)]
    opted: dict[str, Any] = {row["external_id"]: row["opted_out"] for row in rows}
    assert opted["B0"] == "1" and opted["B1"] == "0" and opted["B5998"] == "0"
    assert sum(row["opted_out"] == "1" for row in rows) == len(range(0, 6000, 7))
