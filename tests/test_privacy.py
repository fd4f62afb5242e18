"""Export and erasure (GDPR Art. 15/17/20); suppressions outlive the erased profile."""

from __future__ import annotations

import json

import sqlalchemy as sa

from consentry.consent import service as consent
from consentry.domain import quarantine as rules
from consentry.domain.addresses import normalize_email, normalize_phone
from consentry.domain.channels import Channel
from consentry.domain.ledger import Origin
from consentry.ledger import service as ledger
from consentry.privacy import service as privacy
from consentry.profiles import service as profiles
from consentry.quarantine import service as quarantine
from consentry.store.schema import ledger_events, suppressions
from consentry.store.schema import profiles as profiles_table
from helpers import cli

OP = Origin(source="cli", actor="os:tester")
IMPORT = Origin(source="import", actor="os:tester")


def _new(conn, settings, **kw) -> int:
    return profiles.create(conn, settings, profiles.NewProfile(**kw), OP)


def test_export_has_data_subscriptions_and_ledger(engine, settings, db_url):
    with engine.begin() as conn:
        pid = _new(conn, settings, email="eva@example.de", first_name="Eva", phone="+4915123456789",
                   attributes={"tier": "gold"})
        service = consent.create_service(conn, "news", Channel.EMAIL, "News")
        consent.subscribe(conn, pid, service, OP)
        consent.opt_out(conn, pid, Channel.SMS, OP)
    run = cli(db_url, "privacy", "export", "eva@example.de")
    assert run.exit_code == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["profile"]["first_name"] == "Eva"
    assert data["profile"]["attributes"] == {"tier": "gold"}
    assert data["profile"]["subscriptions"][0]["service"] == "news"
    assert [e["kind"] for e in data["ledger"]] == ["subscription", "opt_out"]


def test_erase_removes_personal_data_and_keeps_suppression(engine, settings):
    with engine.begin() as conn:
        pid = _new(conn, settings, email="Gone@Example.de", phone="0151 23456789",
                   first_name="Gone")
        consent.opt_out(conn, pid, None, OP)
        result = privacy.erase(conn, settings, pid, OP)
        assert result["suppressed_addresses"] == 2
        assert conn.execute(sa.select(sa.func.count()).select_from(profiles_table)).scalar() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(suppressions)).scalar() == 2
        dump = json.dumps([dict(r) for r in conn.execute(sa.select(ledger_events)).mappings()],
                          default=str).lower()
        assert "gone@example.de" not in dump and "4915123456789" not in dump
        assert "gone@example.de" not in json.dumps(
            [dict(r) for r in conn.execute(sa.select(suppressions)).mappings()], default=str)
        assert ledger.verify(conn).ok


def test_recreated_address_is_suppressed_again_and_recorded(engine, settings):
    with engine.begin() as conn:
        pid = _new(conn, settings, email="back@example.de", phone="+4915123456789")
        consent.opt_out(conn, pid, Channel.EMAIL, OP)
        quarantine.set_status(conn, normalize_phone("+4915123456789"), rules.Status.DENYLISTED,
                              "sms_stop", OP, settings.quarantine)
        privacy.erase(conn, settings, pid, OP)
        # The quarantine row held the number in clear: it went with the erasure.
        assert quarantine.show(conn, normalize_phone("+4915123456789"),
                               settings.quarantine)["status"] == "valid"

        again = profiles.create(conn, settings, profiles.NewProfile(
            email="BACK@example.de", phone="0151 23456789"), IMPORT)
        shown = profiles.show(conn, settings, again)
        assert shown["channels"]["email"]["opted_out"]
        assert shown["channels"]["email"]["detail"]["source"] == "suppression"
        sms = next(a for a in shown["addresses"] if a["channel"] == "sms")
        assert sms["status"] == "denylisted" and sms["reason"] == "sms_stop"
        events = ledger.history(conn, again, ["back@example.de", "+4915123456789"])
    kinds = {(e["kind"], e["source"]) for e in events}
    assert ("suppression", "import") in kinds and ("quarantine", "import") in kinds


def test_erasure_suppresses_even_without_a_prior_optout(engine, settings):
    with engine.begin() as conn:
        pid = _new(conn, settings, email="quiet@example.de")
        privacy.erase(conn, settings, pid, OP)
        again = _new(conn, settings, email="quiet@example.de")
        assert consent.optouts(conn, again).blocks("email")


def test_shared_address_keeps_its_quarantine_for_the_other_profile(engine, settings):
    with engine.begin() as conn:
        a = _new(conn, settings, email="family@example.de")
        b = _new(conn, settings, email="family@example.de")
        quarantine.set_status(conn, normalize_email("family@example.de"),
                              rules.Status.DENYLISTED, "complaint", OP, settings.quarantine)
        privacy.erase(conn, settings, a, OP)
        shown = profiles.show(conn, settings, b)
        assert shown["addresses"][0]["status"] == "denylisted"
        # The other person's history of the address is not redacted.
        address_events = conn.execute(sa.select(ledger_events).where(
            ledger_events.c.kind == "quarantine")).mappings().all()
        assert [e["address"] for e in address_events] == ["family@example.de"]
        assert ledger.verify(conn).ok


def test_erase_cli_needs_confirmation(engine, settings, db_url):
    with engine.begin() as conn:
        _new(conn, settings, email="x@example.de")
    refused = cli(db_url, "privacy", "erase", "x@example.de", input="n\n")
    assert refused.exit_code == 1
    done = cli(db_url, "privacy", "erase", "x@example.de", "--yes", "--json")
    assert done.exit_code == 0 and done.json()["suppressed_addresses"] == 1
    assert cli(db_url, "profiles", "show", "x@example.de").exit_code == 1


def test_an_erased_profiles_id_is_never_reused(engine, settings):
    """The ledger keeps an erased profile's id; a new profile must not inherit its history."""
    with engine.begin() as conn:
        first = _new(conn, settings, email="old@example.de")
        consent.opt_out(conn, first, None, OP)
        privacy.erase(conn, settings, first, OP)
        second = _new(conn, settings, email="new@example.de")
        assert second != first
        assert ledger.history(conn, second, ["new@example.de"]) == []
