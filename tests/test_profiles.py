"""Profiles: creation, addresses, references, duplicates."""

from __future__ import annotations

import pytest

from consentry.domain.errors import Conflict, ConsentryError, InvalidAddress, NotFound
from consentry.domain.ledger import Origin
from consentry.profiles import service as profiles

OP = Origin(source="cli", actor="os:tester")


def test_addresses_are_normalized_and_kept_for_sending(engine, settings):
    with engine.begin() as conn:
        pid = profiles.create(conn, settings, profiles.NewProfile(
            email="  Jürgen.Müller+news@BÜCHER.example ", phone="0049 30 901820",
            locale="en_gb", first_name="  Jürgen "), OP)
        row = profiles.get(conn, pid)
    assert row["email"] == "Jürgen.Müller+news@xn--bcher-kva.example"
    assert row["email_key"] == "jürgen.müller+news@xn--bcher-kva.example"
    assert row["phone"] == "+4930901820"
    assert row["locale"] == "en-GB" and row["first_name"] == "Jürgen"


def test_bad_input_is_refused_and_nothing_is_stored(engine, settings):
    with engine.begin() as conn:
        for bad in (profiles.NewProfile(email="two@@example.com"),
                    profiles.NewProfile(phone="+49 123"),
                    profiles.NewProfile(locale="Deutsch!"),
                    profiles.NewProfile(push_tokens=(profiles.PushToken("short"),))):
            with pytest.raises(ConsentryError):
                profiles.create(conn, settings, bad, OP)
        with pytest.raises(InvalidAddress, match="email"):
            profiles.create(conn, settings, profiles.NewProfile(email="x@localhost"), OP)
        assert profiles.duplicates(conn) == []
        with pytest.raises(NotFound):
            profiles.resolve(conn, "1")


def test_external_id_is_unique(engine, settings):
    with engine.begin() as conn:
        profiles.create(conn, settings, profiles.NewProfile(external_id="CRM-1"), OP)
        with pytest.raises(Conflict):
            profiles.create(conn, settings, profiles.NewProfile(external_id="CRM-1"), OP)


def test_references_resolve_by_id_external_id_email_and_phone(engine, settings):
    with engine.begin() as conn:
        a = profiles.create(conn, settings, profiles.NewProfile(
            email="Ann@Example.com", phone="+44 7911 123456", external_id="42"), OP)
        b = profiles.create(conn, settings, profiles.NewProfile(email="bob@example.com"), OP)
        assert profiles.resolve(conn, str(a)) == a
        assert profiles.resolve(conn, "42") == a  # no profile 42: the external id
        assert profiles.resolve(conn, "ANN@example.com") == a
        assert profiles.resolve(conn, "+447911123456") == a
        assert profiles.resolve(conn, "bob@EXAMPLE.com") == b
        profiles.create(conn, settings, profiles.NewProfile(email="bob@example.com"), OP)
        with pytest.raises(ConsentryError, match="held by 2 profiles"):
            profiles.resolve(conn, "bob@example.com")
        with pytest.raises(NotFound):
            profiles.resolve(conn, "nobody@example.com")


def test_duplicates_cover_every_channel(engine, settings):
    token = profiles.PushToken("fcm-token-0123456789", "app", "android")
    with engine.begin() as conn:
        a = profiles.create(conn, settings, profiles.NewProfile(
            email="x@example.com", phone="+4915123456789", push_tokens=(token,)), OP)
        b = profiles.create(conn, settings, profiles.NewProfile(
            email="X@example.com", phone="015123456789", push_tokens=(token,)), OP)
        profiles.create(conn, settings, profiles.NewProfile(email="y@example.com"), OP)
        rows = profiles.duplicates(conn)
    assert rows == [
        {"channel": "email", "address": "x@example.com", "profiles": [a, b]},
        {"channel": "push", "address": "fcm-token-0123456789", "profiles": [a, b]},
        {"channel": "sms", "address": "+4915123456789", "profiles": [a, b]},
    ]
