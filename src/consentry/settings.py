"""Settings: defaults, then `consentry.toml` in the current directory, then the environment,
then command-line flags. Thresholds default to Adobe Campaign's (domain.md section 4)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from consentry.domain.errors import ConsentryError
from consentry.domain.quarantine import QuarantineSettings

DEFAULT_DATABASE_URL = "sqlite:///consentry.db"


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    base_url: str = "http://127.0.0.1:8000"
    # Empty: the keys generated once per database and kept there are used.
    secret_keys: tuple[str, ...] = ()
    smtp_url: str | None = None
    default_region: str = "DE"
    quarantine: QuarantineSettings = field(default_factory=QuarantineSettings)
    # Email sending: From header, the domain of VERP return paths and mailto unsubscribes.
    email_from: str = "Consentry <noreply@example.com>"
    bounce_domain: str = "bounces.example.com"
    sending: SendingSettings = field(default_factory=lambda: SendingSettings())
    # SMS and push connectors (HTTP): provider "generic" (JSON) or "twilio" for SMS.
    sms_url: str | None = None
    sms_provider: str = "generic"
    sms_from: str | None = None
    sms_token: str | None = None  # bearer token, or "ACCOUNT_SID:AUTH_TOKEN" for twilio
    push_url: str | None = None  # FCM v1 shaped: POST {push_url} with {"message": {...}}
    push_token: str | None = None


@dataclass(frozen=True)
class SendingSettings:
    rate: float = 200.0  # messages per second over all connections (0: unlimited)
    concurrency: int = 8  # SMTP connections / HTTP requests in parallel
    per_domain_rate: float = 50.0  # messages per second to one recipient domain (0: unlimited)
    batch_size: int = 500  # rows claimed, re-checked and sent together
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    dkim_key_file: str | None = None  # PEM private key


_ENV = {
    "CONSENTRY_DATABASE_URL": "database_url",
    "CONSENTRY_BASE_URL": "base_url",
    "CONSENTRY_SECRET_KEYS": "secret_keys",
    "CONSENTRY_SMTP_URL": "smtp_url",
    "CONSENTRY_DEFAULT_REGION": "default_region",
    "CONSENTRY_EMAIL_FROM": "email_from",
    "CONSENTRY_BOUNCE_DOMAIN": "bounce_domain",
    "CONSENTRY_SMS_URL": "sms_url",
    "CONSENTRY_SMS_PROVIDER": "sms_provider",
    "CONSENTRY_SMS_FROM": "sms_from",
    "CONSENTRY_SMS_TOKEN": "sms_token",
    "CONSENTRY_PUSH_URL": "push_url",
    "CONSENTRY_PUSH_TOKEN": "push_token",
}

_SENDING_KEYS: dict[str, tuple[str, Any]] = {key: (key, convert) for key, convert in {
    "rate": float, "concurrency": int, "per_domain_rate": float, "batch_size": int,
    "dkim_selector": str, "dkim_domain": str, "dkim_key_file": str,
}.items()}

_QUARANTINE_KEYS = {
    "soft_error_max": ("soft_error_max", int),
    "soft_error_interval_hours": ("soft_error_interval", lambda v: timedelta(hours=float(v))),
    "erroneous_reset_days": ("erroneous_reset_after", lambda v: timedelta(days=float(v))),
    "mailbox_full_release_days": ("mailbox_full_release_after",
                                  lambda v: timedelta(days=float(v))),
}


def _split_keys(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else str(value).split(",")
    return tuple(k.strip() for k in items if str(k).strip())


def _apply(settings: Settings, name: str, value: Any) -> Settings:
    if name == "secret_keys":
        return replace(settings, secret_keys=_split_keys(value))
    if name == "default_region":
        return replace(settings, default_region=str(value).upper())
    return replace(settings, **{name: str(value)})


def load_settings(database: str | None = None, *, cwd: Path | None = None,
                  environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    settings = Settings()
    toml_path = (cwd or Path.cwd()) / "consentry.toml"
    if toml_path.is_file():
        try:
            data = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConsentryError(f"{toml_path}: not valid TOML ({exc})") from None
        for key, value in data.items():
            if key == "quarantine" and isinstance(value, dict):
                settings = replace(settings, quarantine=QuarantineSettings(
                    **_table(toml_path, key, value, _QUARANTINE_KEYS)))
            elif key == "sending" and isinstance(value, dict):
                settings = replace(settings, sending=SendingSettings(
                    **_table(toml_path, key, value, _SENDING_KEYS)))
            elif key in _ENV.values():
                settings = _apply(settings, key, value)
            else:
                raise ConsentryError(f"{toml_path}: unknown setting {key!r}")
    for var, name in _ENV.items():
        if env.get(var):
            settings = _apply(settings, name, env[var])
    if database:
        settings = replace(settings, database_url=database)
    return settings


def _table(path: Path, section: str, table: dict[str, Any],
           keys: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """A `[section]` table of consentry.toml as dataclass fields, each value converted."""
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key not in keys:
            raise ConsentryError(f"{path}: unknown setting {section}.{key}; expected one of "
                                 f"{', '.join(keys)}")
        name, convert = keys[key]
        try:
            values[name] = convert(raw)
        except (TypeError, ValueError):
            raise ConsentryError(f"{path}: {section}.{key} has the wrong type "
                                 f"({type(raw).__name__})") from None
    return values
