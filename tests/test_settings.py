"""Settings: defaults, consentry.toml, environment, flags."""

from __future__ import annotations

from datetime import timedelta

import pytest

from consentry.domain.errors import ConsentryError
from consentry.settings import DEFAULT_DATABASE_URL, load_settings


def test_defaults(tmp_path):
    s = load_settings(cwd=tmp_path, environ={})
    assert s.database_url == DEFAULT_DATABASE_URL == "sqlite:///consentry.db"
    assert s.base_url == "http://127.0.0.1:8000" and s.default_region == "DE"
    assert s.smtp_url is None and s.secret_keys == ()
    assert s.quarantine.soft_error_max == 5
    assert s.quarantine.soft_error_interval == timedelta(days=1)
    assert s.quarantine.erroneous_reset_after == timedelta(days=10)
    assert s.quarantine.mailbox_full_release_after == timedelta(days=30)


def test_toml_then_environment_then_flag(tmp_path):
    (tmp_path / "consentry.toml").write_text(
        'database_url = "sqlite:///from-toml.db"\ndefault_region = "at"\n'
        'secret_keys = ["k1", "k2"]\n[quarantine]\nsoft_error_max = 3\n'
        "erroneous_reset_days = 7\nsoft_error_interval_hours = 12\n")
    s = load_settings(cwd=tmp_path, environ={})
    assert s.database_url == "sqlite:///from-toml.db" and s.default_region == "AT"
    assert s.secret_keys == ("k1", "k2")
    assert s.quarantine.soft_error_max == 3
    assert s.quarantine.erroneous_reset_after == timedelta(days=7)
    assert s.quarantine.soft_error_interval == timedelta(hours=12)
    env = {"CONSENTRY_DATABASE_URL": "sqlite:///env.db", "CONSENTRY_SECRET_KEYS": "a, b ,c"}
    s = load_settings(cwd=tmp_path, environ=env)
    assert s.database_url == "sqlite:///env.db" and s.secret_keys == ("a", "b", "c")
    assert load_settings("sqlite:///flag.db", cwd=tmp_path, environ=env).database_url == \
        "sqlite:///flag.db"


@pytest.mark.parametrize("text", ["nonsense = 1\n", "[quarantine]\nsoft_error_max = 'x'\n",
                                  "[quarantine]\nspeed = 1\n", "not toml ["])
def test_bad_toml_is_a_clear_error(tmp_path, text):
    (tmp_path / "consentry.toml").write_text(text)
    with pytest.raises(ConsentryError, match=r"consentry\.toml"):
        load_settings(cwd=tmp_path, environ={})
