"""Address normalization and matching keys (domain.md section 7).

Email: trimmed; domain lowercased and IDNA-encoded; local part NFC-normalized and kept as
given for sending. The *matching key* additionally ASCII-lowercases the local part, because
nearly every provider treats it case-insensitively (Adobe's case-sensitive matching is a known
source of missed exclusions). Dots and +tags are significant and never stripped.

Phone: E.164 through phonenumbers, with a configurable default region for national numbers.
Push: the device token as given, trimmed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

from consentry.domain.channels import Channel
from consentry.domain.errors import InvalidAddress


@dataclass(frozen=True, slots=True)
class Address:
    channel: Channel
    value: str  # what we send to
    key: str  # what we match on (duplicates, quarantine, suppression)


_ASCII_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """Lowercase A-Z only; non-ASCII letters of an internationalized local part stay as they are."""
    return text.translate(_ASCII_UPPER)


# A fast path for the overwhelmingly common plain-ASCII address. email-validator costs about
# 40 µs an address, which alone would cap a CSV import below 25,000 rows/s; this pattern accepts
# only a strict subset of what email-validator accepts (dot-atom local part, LDH labels, an
# alphabetic TLD, no IDNA "xn--" labels, no special-use TLDs) and for that subset its
# normalization is exactly email-validator's. tests/test_addresses.py checks the equivalence
# with hypothesis; anything the pattern does not match goes through email-validator.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN_EMAIL = re.compile(
    rf"({_ATEXT}+(?:\.{_ATEXT}+)*)@((?:{_LABEL}\.)+[A-Za-z]{{2,63}})"
)
_SPECIAL_USE_TLDS = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test"})


def _fast_email(text: str) -> Address | None:
    match = _PLAIN_EMAIL.fullmatch(text)
    if match is None:
        return None
    local, domain = match.group(1), match.group(2).lower()
    if (
        len(local) > 64
        or len(text) > 254
        or len(domain) > 253
        or "--" in domain  # leaves "xn--" and other reserved label forms to email-validator
        or domain.rsplit(".", 1)[1] in _SPECIAL_USE_TLDS
    ):
        return None
    if local.lower() in CASE_INSENSITIVE_MAILBOX_NAMES:
        local = local.lower()  # as email-validator does for RFC 2142 role names (INFO@...)
    value = f"{local}@{domain}"
    return Address(Channel.EMAIL, value, f"{ascii_lower(local)}@{domain}")


def normalize_email(raw: str) -> Address:
    text = raw.strip()
    if not text:
        raise InvalidAddress("email", raw, "empty")
    fast = _fast_email(text)
    if fast is not None:
        return fast
    try:
        info = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidAddress("email", raw, str(exc)) from None
    value = f"{info.local_part}@{info.ascii_domain}"
    return Address(Channel.EMAIL, value, f"{ascii_lower(info.local_part)}@{info.ascii_domain}")


def normalize_phone(raw: str, default_region: str = "DE") -> Address:
    text = raw.strip()
    if not text:
        raise InvalidAddress("sms", raw, "empty")
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidAddress("sms", raw, f"not a phone number ({exc})") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidAddress("sms", raw, "not a valid phone number for its region")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return Address(Channel.SMS, e164, e164)


_TOKEN = re.compile(r"[\x21-\x7e]{8,4096}")


def normalize_push_token(raw: str) -> Address:
    text = raw.strip()
    if not _TOKEN.fullmatch(text):
        raise InvalidAddress("push", raw, "a push token is 8 to 4096 printable ASCII characters")
    return Address(Channel.PUSH, text, text)


def normalize(channel: Channel | str, raw: str, default_region: str = "DE") -> Address:
    channel = Channel(channel)
    if channel is Channel.EMAIL:
        return normalize_email(raw)
    if channel is Channel.SMS:
        return normalize_phone(raw, default_region)
    return normalize_push_token(raw)


def guess_channel(raw: str) -> Channel:
    """The channel an address written without one belongs to (for CLI and CSV input)."""
    text = raw.strip()
    if "@" in text:
        return Channel.EMAIL
    if re.fullmatch(r"[+0-9 ()./-]{3,}", text):
        return Channel.SMS
    return Channel.PUSH


def email_domain(key: str) -> str:
    return key.rpartition("@")[2]
