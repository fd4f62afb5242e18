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
    feedback: FeedbackSettings = field(default_factory=lambda: FeedbackSettings())
    hooks: HookSettings = field(default_factory=lambda: HookSettings())
    # Inbound SMS keywords and replies: "default" and per sender number (E.164 or short code),
    # each a table of stop/start/help (lists of words) and stop_reply/start_reply/help_reply.
    sms_keywords: dict[str, dict[str, Any]] = field(default_factory=dict)
    web: WebSettings = field(default_factory=lambda: WebSettings())


@dataclass(frozen=True)
class WebSettings:
    confirm_hours: float = 72.0  # double opt-in confirmation links expire after this
    pending_purge_days: float = 30.0  # unconfirmed subscriptions are deleted after this
    # Forms that send a message (subscribe, opt-out by address): per client IP and per
    # address, at most this many in `form_limit_window` seconds.
    form_limit_per_ip: int = 10
    form_limit_per_address: int = 3
    form_limit_window: float = 3600.0


@dataclass(frozen=True)
class FeedbackSettings:
    # Domains the inbound SMTP receiver accepts mail for besides bounce_domain; nothing else
    # is accepted (it is not a relay).
    domains: tuple[str, ...] = ()
    max_message_bytes: int = 10_000_000
    # Alert thresholds: Adobe's bounce alert, Gmail's spam-rate guidance (warn, never exceed).
    bounce_rate_alert: float = 0.05
    complaint_rate_warn: float = 0.001
    complaint_rate_alert: float = 0.003
    # A bounce mailbox polled over IMAP: imaps://user:password@host[:port]/FOLDER
    imap_url: str | None = None
    imap_processed_folder: str = "Processed"
    imap_every: float = 60.0  # seconds between polls under `serve` / `worker`


@dataclass(frozen=True)
class HookSettings:
    # Amazon SNS: the signing certificate must come from a URL matching this pattern, and the
    # topic must be listed (empty: the SES hook is off).
    sns_cert_url_pattern: str = r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/"
    sns_topic_arns: tuple[str, ...] = ()
    sendgrid_public_key: str | None = None  # the Event Webhook's verification key (base64)
    postmark_username: str | None = None  # Postmark webhooks use basic auth
    postmark_password: str | None = None
    mailgun_signing_key: str | None = None
    twilio_auth_token: str | None = None  # X-Twilio-Signature on inbound SMS
    sms_secret: str | None = None  # HMAC-SHA256 key of the generic JSON inbound-SMS hook
    max_age_seconds: int = 900  # signed timestamps older than this are refused as replays


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

# Secrets of the feedback paths, also settable from the environment: (table, field).
_NESTED_ENV = {
    "CONSENTRY_IMAP_URL": ("feedback", "imap_url"),
    "CONSENTRY_SENDGRID_PUBLIC_KEY": ("hooks", "sendgrid_public_key"),
    "CONSENTRY_POSTMARK_USERNAME": ("hooks", "postmark_username"),
    "CONSENTRY_POSTMARK_PASSWORD": ("hooks", "postmark_password"),
    "CONSENTRY_MAILGUN_SIGNING_KEY": ("hooks", "mailgun_signing_key"),
    "CONSENTRY_TWILIO_AUTH_TOKEN": ("hooks", "twilio_auth_token"),
    "CONSENTRY_SMS_HOOK_SECRET": ("hooks", "sms_secret"),
    "CONSENTRY_SNS_TOPIC_ARNS": ("hooks", "sns_topic_arns"),  # comma-separated
}


def _tuple(value: Any) -> tuple[str, ...]:
    return _split_keys(value)


_FEEDBACK_KEYS: dict[str, tuple[str, Any]] = {key: (key, convert) for key, convert in {
    "domains": _tuple, "max_message_bytes": int, "bounce_rate_alert": float,
    "complaint_rate_warn": float, "complaint_rate_alert": float, "imap_url": str,
    "imap_processed_folder": str, "imap_every": float,
}.items()}

_WEB_KEYS: dict[str, tuple[str, Any]] = {key: (key, convert) for key, convert in {
    "confirm_hours": float, "pending_purge_days": float, "form_limit_per_ip": int,
    "form_limit_per_address": int, "form_limit_window": float,
}.items()}

_HOOK_KEYS: dict[str, tuple[str, Any]] = {key: (key, convert) for key, convert in {
    "sns_cert_url_pattern": str, "sns_topic_arns": _tuple, "sendgrid_public_key": str,
    "postmark_username": str, "postmark_password": str, "mailgun_signing_key": str,
    "twilio_auth_token": str, "sms_secret": str, "max_age_seconds": int,
}.items()}

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
            elif key == "feedback" and isinstance(value, dict):
                settings = replace(settings, feedback=FeedbackSettings(
                    **_table(toml_path, key, value, _FEEDBACK_KEYS)))
            elif key == "web" and isinstance(value, dict):
                settings = replace(settings, web=WebSettings(
                    **_table(toml_path, key, value, _WEB_KEYS)))
            elif key == "hooks" and isinstance(value, dict):
                settings = replace(settings, hooks=HookSettings(
                    **_table(toml_path, key, value, _HOOK_KEYS)))
            elif key == "sms_keywords" and isinstance(value, dict):
                settings = replace(settings, sms_keywords=_sms_keywords(toml_path, value))
            elif key in _ENV.values():
                settings = _apply(settings, key, value)
            else:
                raise ConsentryError(f"{toml_path}: unknown setting {key!r}")
    for var, name in _ENV.items():
        if env.get(var):
            settings = _apply(settings, name, env[var])
    for var, (section, name) in _NESTED_ENV.items():
        if env.get(var):
            value: Any = env[var]
            if isinstance(getattr(getattr(settings, section), name), tuple):
                value = _split_keys(value)
            settings = replace(settings, **{
                section: replace(getattr(settings, section), **{name: value})})
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


_SMS_KEYWORD_KEYS = frozenset({"stop", "start", "help", "stop_reply", "start_reply",
                               "help_reply"})


def _sms_keywords(path: Path, tables: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`[sms_keywords.default]` and `[sms_keywords."+49151..."]`: word lists and replies."""
    result: dict[str, dict[str, Any]] = {}
    for sender, table in tables.items():
        if not isinstance(table, dict):
            raise ConsentryError(f"{path}: sms_keywords.{sender} must be a table")
        for key, value in table.items():
            if key not in _SMS_KEYWORD_KEYS:
                raise ConsentryError(f"{path}: unknown setting sms_keywords.{sender}.{key}; "
                                     f"expected one of {', '.join(sorted(_SMS_KEYWORD_KEYS))}")
            if key.endswith("_reply") and not isinstance(value, str):
                raise ConsentryError(f"{path}: sms_keywords.{sender}.{key} must be a string")
            if not key.endswith("_reply") and not (
                    isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ConsentryError(f"{path}: sms_keywords.{sender}.{key} must be a list "
                                     "of words")
        result[str(sender)] = dict(table)
    return result
