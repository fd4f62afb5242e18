"""Provider webhooks (domain.md section 5) as pure functions: checking what each provider signs,
and turning its JSON events into `Report`s with their dedupe keys.

Amazon SES through SNS (RSA signatures over SNS's canonical string, the certificate fetched by
the caller), SendGrid's Event Webhook (ECDSA P-256 over timestamp + body), Postmark (HTTP basic
auth) and Mailgun (HMAC-SHA256 over timestamp + token). Anything that fails a check raises
`Refused`, before the caller touches the database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from consentry.domain import failures
from consentry.domain.feedback import Kind, RecipientResult, Report
from consentry.domain.quarantine import FailureClass
from consentry.settings import HookSettings


class Refused(Exception):
    """The request is not one the provider signed (or not a well-formed one): answer `status`
    with `error` and write nothing."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


@dataclass(frozen=True)
class Parsed:
    """One provider event: its dedupe key and report (None: an event we do not act on, such as
    an open, a click or a deferral), and the bytes kept as evidence."""

    key: str
    report: Report | None
    raw: bytes


def check_age(timestamp: float, now: float, max_age: int) -> None:
    """A signed timestamp too far from now (either way) is a replay, or a clock we distrust."""
    if abs(now - timestamp) > max_age:
        raise Refused(403, "stale timestamp")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "body is not JSON") from None


# --- failure classification shared by the providers -------------------------------------------

_AUTOREPLY = re.compile(r"out of office|auto.?reply|vacation|abwesen", re.I)
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


def one_line(text: Any, limit: int = 500) -> str:
    return " ".join(str(text or "").split())[:limit]


def failure(address: str, text: str, *, status: Any = None, code: int | None = None,
            hint: str | None = None, default: str | None = None, transient: bool = False,
            fixed: bool = False) -> RecipientResult:
    """A failed recipient. What the MTA's words say beats the provider's specific category
    (`hint`), which beats the status code, which beats the provider's broad category
    (`default`, such as "a permanent bounce"); a `fixed` hint beats everything (the provider
    read the reply already and names something the words cannot overrule). A transient signal
    never makes a hard error."""
    line = one_line(text)
    given = str(status or "").strip()
    status = failures.enhanced_status(line) or (given if _STATUS.fullmatch(given) else None)
    code = code if code and 200 <= code < 600 else failures.basic_code(line)
    if fixed and hint:
        reason = hint
    elif _AUTOREPLY.search(line):
        reason = "autoreply"
    else:
        reason = (failures.text_reason(line, status) or hint
                  or failures.status_reason(status, code) or default
                  or ("unreachable" if transient else "not_defined"))
    klass = failures.class_for(reason, code, status)
    if transient and klass is FailureClass.HARD:
        klass = FailureClass.SOFT
    return RecipientResult(address.strip(), status, klass, reason, line, action="failed")


def complained(address: str, feedback_type: str | None) -> RecipientResult:
    return RecipientResult(address.strip(), None, FailureClass.COMPLAINT, "complaint",
                           one_line(feedback_type or "complaint"))


def delivered(address: str, text: str = "") -> RecipientResult:
    return RecipientResult(address.strip(), None, FailureClass.IGNORED, "not_defined",
                           one_line(text), action="delivered")


def _strip_id(value: Any) -> str | None:
    text = str(value or "").strip().strip("<>").strip()
    return text or None


def _event_hash(event: Any) -> str:
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


# --- Amazon SES through SNS -------------------------------------------------------------------

_SNS_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                 "TopicArn", "Type"),
}
_SNS_FIELDS["UnsubscribeConfirmation"] = _SNS_FIELDS["SubscriptionConfirmation"]
_SNS_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}


def sns_string_to_sign(message: Mapping[str, Any]) -> bytes:
    """SNS's canonical string: "Key\\nValue\\n" for each signed key present, in order."""
    fields = _SNS_FIELDS.get(str(message.get("Type")), ())
    return "".join(f"{key}\n{message[key]}\n" for key in fields
                   if message.get(key) is not None).encode()


def sns_check(message: Any, hooks: HookSettings, now: float) -> str:
    """What can be checked before fetching the certificate; returns the certificate URL."""
    if not isinstance(message, dict):
        raise Refused(400, "not an SNS message")
    kind = message.get("Type")
    if kind not in _SNS_FIELDS:
        raise Refused(400, "unknown SNS message type")
    required = [k for k in _SNS_FIELDS[kind] if k != "Subject"]
    if any(not isinstance(message.get(k), str) for k in required):
        raise Refused(400, "SNS message fields missing")
    if not message.get("Signature") or str(message.get("SignatureVersion")) not in _SNS_HASHES:
        raise Refused(401, "SNS signature missing")
    url = str(message.get("SigningCertURL") or "")
    if not re.match(hooks.sns_cert_url_pattern, url):
        raise Refused(403, "signing certificate URL not allowed")
    # Without a list of our topics any AWS account could subscribe its own topic and have SNS
    # sign its forged bounces for real: the hook is off until the topics are configured.
    if not hooks.sns_topic_arns:
        raise Refused(403, "not configured: set hooks.sns_topic_arns")
    if message["TopicArn"] not in hooks.sns_topic_arns:
        raise Refused(403, "topic not allowed")
    try:
        stamp = datetime.fromisoformat(message["Timestamp"])
    except ValueError:
        raise Refused(400, "SNS Timestamp not readable") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    check_age(stamp.timestamp(), now, hooks.max_age_seconds)
    return url


def sns_verify(message: Mapping[str, Any], cert_pem: bytes, now: float) -> None:
    """The signature, by the certificate's RSA key (PKCS#1 v1.5; SHA1 for version 1, SHA256
    for version 2). The certificate must be within its validity period."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise Refused(403, "signing certificate not readable") from None
    at = datetime.fromtimestamp(now, UTC)
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise Refused(403, "signing certificate expired")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise Refused(403, "signing certificate has no RSA key")
    try:
        signature = base64.b64decode(str(message["Signature"]), validate=True)
        algorithm = _SNS_HASHES[str(message["SignatureVersion"])]()
        key.verify(signature, sns_string_to_sign(message), padding.PKCS1v15(), algorithm)
    except (binascii.Error, ValueError, InvalidSignature):
        raise Refused(403, "SNS signature does not verify") from None


def sns_url_allowed(url: str, hooks: HookSettings) -> bool:
    """A SubscribeURL is only followed on the hosts a signing certificate may come from."""
    return bool(re.match(hooks.sns_cert_url_pattern, url))


# SES bounce subtypes and the reason each names (None: the diagnostic decides).
_SES_SUBTYPES: dict[str, str | None] = {
    "NoEmail": "user_unknown", "Suppressed": "user_unknown",
    "OnAccountSuppressionList": "user_unknown", "MailboxFull": "mailbox_full",
    "MessageTooLarge": "message_invalid", "ContentRejected": "refused",
    "AttachmentRejected": "message_invalid", "General": None, "Undetermined": None,
}


def ses_events(notification: Mapping[str, Any], raw: bytes) -> list[Parsed]:
    """A verified SNS Notification: its Message is one SES notification or event."""
    try:
        message = json.loads(notification["Message"])
    except ValueError:
        raise Refused(400, "SNS Message is not JSON") from None
    if not isinstance(message, dict):
        raise Refused(400, "SNS Message is not an SES notification")
    return [Parsed("ses:" + str(notification["MessageId"]), ses_report(message), raw)]


def ses_report(message: Mapping[str, Any]) -> Report | None:
    kind = message.get("notificationType") or message.get("eventType")
    mail = _dict(message.get("mail"))
    common = _dict(mail.get("commonHeaders"))
    headers = {str(h.get("name", "")).lower(): h.get("value") for h in _dicts(mail.get("headers"))}
    # mail.source is the envelope sender: our VERP return path, which names delivery and target.
    ident: dict[str, Any] = {
        "envelope_to": tuple(a for a in (mail.get("source"), headers.get("return-path")) if a),
        "original_message_id": _strip_id(headers.get("message-id") or common.get("messageId")),
        "subject": common.get("subject"), "reporter": "amazon-ses",
        "extra": {"ses_message_id": mail.get("messageId")},
    }
    if kind == "Bounce":
        bounce = _dict(message.get("bounce"))
        btype = bounce.get("bounceType")
        hint = _SES_SUBTYPES.get(str(bounce.get("bounceSubType")))
        # A permanent bounce neither the diagnostic nor the status says more about.
        default = "user_unknown" if btype == "Permanent" else None
        recipients = tuple(
            failure(str(r.get("emailAddress") or ""), str(r.get("diagnosticCode") or ""),
                    status=r.get("status"), hint=hint, default=default,
                    transient=btype != "Permanent")
            for r in _dicts(bounce.get("bouncedRecipients")))
        return Report(Kind.BOUNCE, recipients, message_id=bounce.get("feedbackId"), **ident)
    if kind == "Complaint":
        complaint = _dict(message.get("complaint"))
        ftype = complaint.get("complaintFeedbackType")
        if ftype == "not-spam":
            return None  # the recipient said the message is *not* spam
        recipients = tuple(complained(str(r.get("emailAddress") or ""), ftype)
                           for r in _dicts(complaint.get("complainedRecipients")))
        return Report(Kind.COMPLAINT, recipients, message_id=complaint.get("feedbackId"),
                      feedback_type=ftype, **ident)
    if kind == "Delivery":
        delivery = _dict(message.get("delivery"))
        recipients = tuple(delivered(str(a), str(delivery.get("smtpResponse") or ""))
                           for a in delivery.get("recipients") or () if isinstance(a, str))
        return Report(Kind.DELIVERED, recipients, **ident)
    return None  # sends, opens, clicks, rejects, delays, subscription notices


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


# --- SendGrid ---------------------------------------------------------------------------------

def sendgrid_verify(public_key: str, signature: str | None, timestamp: str | None,
                    body: bytes, now: float, max_age: int) -> None:
    """ECDSA P-256 / SHA-256 over the timestamp header followed by the raw body; the key as
    SendGrid shows it (base64 DER SubjectPublicKeyInfo), or PEM."""
    if not signature or not timestamp:
        raise Refused(401, "signature missing")
    try:
        stamp = float(timestamp)
    except ValueError:
        raise Refused(403, "timestamp not readable") from None
    check_age(stamp, now, max_age)
    key = _ec_key(public_key)
    try:
        der = base64.b64decode(signature, validate=True)
        key.verify(der, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise Refused(403, "signature does not verify") from None


def _ec_key(text: str) -> ec.EllipticCurvePublicKey:
    try:
        if "-----BEGIN" in text:
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode("".join(text.split())))
    except (binascii.Error, ValueError):
        raise Refused(403, "verification key not readable") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise Refused(403, "verification key is not an EC key")
    return key


# SendGrid's bounce_classification and the reason it names (None: the text decides).
_SENDGRID_CLASSES: dict[str, str | None] = {
    "Invalid Address": "user_unknown", "Technical": "unreachable", "Content": "refused",
    "Reputation": "refused", "Frequency/Volume": "refused", "Mailbox Unavailable": None,
    "Unclassified": None,
}


def sendgrid_events(body: bytes) -> list[Parsed]:
    events = parse_json(body)
    if not isinstance(events, list):
        raise Refused(400, "expected an array of events")
    parsed = []
    for event in events:
        if not isinstance(event, dict):
            raise Refused(400, "expected an array of events")
        key = "sendgrid:" + str(event.get("sg_event_id") or _event_hash(event))
        raw = json.dumps(event, sort_keys=True).encode()
        parsed.append(Parsed(key, sendgrid_report(event), raw))
    return parsed


def sendgrid_report(event: Mapping[str, Any]) -> Report | None:
    name = event.get("event")
    address = str(event.get("email") or "")
    ident: dict[str, Any] = {
        "message_id": event.get("sg_event_id"), "reporter": "sendgrid",
        # smtp-id is the Message-ID SendGrid saw: ours when we relay through it.
        "original_message_id": _strip_id(event.get("smtp-id")),
        "extra": {"sg_message_id": event.get("sg_message_id")},
    }
    text = str(event.get("reason") or "")
    if name == "bounce" and event.get("type") == "blocked":
        # A block is the receiver refusing the sender (reputation, policy): never the address.
        return Report(Kind.BOUNCE, (failure(address, text, status=event.get("status"),
                                            hint="refused", transient=True, fixed=True),),
                      **ident)
    if name == "bounce":
        status = str(event.get("status") or "")
        hint = _SENDGRID_CLASSES.get(str(event.get("bounce_classification")))
        return Report(Kind.BOUNCE, (failure(address, text, status=status, hint=hint,
                                            transient=status.startswith("4")),), **ident)
    if name == "dropped":
        # SendGrid did not send: only its suppression reasons say something about the address.
        if text in ("Bounced Address", "Invalid"):
            hard = RecipientResult(address.strip(), None, FailureClass.HARD, "user_unknown",
                                   one_line(f"dropped: {text}"), "failed")
            return Report(Kind.BOUNCE, (hard,), **ident)
        if text == "Spam Reporting Address":
            return Report(Kind.COMPLAINT, (complained(address, "abuse"),), **ident)
        return None
    if name == "spamreport":
        return Report(Kind.COMPLAINT, (complained(address, "abuse"),), feedback_type="abuse",
                      **ident)
    if name == "delivered":
        return Report(Kind.DELIVERED, (delivered(address, str(event.get("response") or "")),),
                      **ident)
    return None  # processed, deferred, open, click, unsubscribe, group_(un)subscribe


# --- Postmark ---------------------------------------------------------------------------------

def postmark_check_auth(header: str | None, username: str, password: str) -> None:
    """HTTP basic auth, compared in constant time."""
    if not header or not header.lower().startswith("basic "):
        raise Refused(401, "authentication required")
    try:
        given_user, _, given_password = base64.b64decode(
            header[6:].strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise Refused(401, "authentication required") from None
    # Both compared whatever the first gives, so the time taken says nothing.
    user_ok = hmac.compare_digest(given_user.encode(), username.encode())
    password_ok = hmac.compare_digest(given_password.encode(), password.encode())
    if not (user_ok and password_ok):
        raise Refused(401, "wrong credentials")


# Postmark bounce Type -> (reason hint, transient); None: not about the address. A hard
# bounce's reason is read from its Details first (HardBounce covers policy rejections too).
_POSTMARK_TYPES: dict[str, tuple[str | None, bool] | None] = {
    "HardBounce": (None, False), "BadEmailAddress": ("user_unknown", False),
    "SoftBounce": (None, True), "Transient": ("unreachable", True),
    "DnsError": ("unreachable", True), "AutoResponder": ("autoreply", True),
    "SpamNotification": ("refused", True), "Blocked": ("refused", True),
    "DMARCPolicy": ("refused", True), "VirusNotification": ("message_invalid", True),
    "Unknown": (None, True),
}
# Types the words of the bounce must not overrule: Postmark read the whole reply already.
_POSTMARK_FIXED = frozenset({"BadEmailAddress", "AutoResponder", "SpamNotification", "Blocked",
                             "DMARCPolicy", "VirusNotification"})


def postmark_events(body: bytes) -> list[Parsed]:
    data = parse_json(body)
    records = data if isinstance(data, list) else [data]
    parsed = []
    for record in records:
        if not isinstance(record, dict) or not record.get("RecordType"):
            raise Refused(400, "not a Postmark webhook record")
        rtype = str(record["RecordType"])
        ident = record.get("ID") or (f"{record.get('MessageID')}:{record.get('Recipient')}"
                                     if record.get("MessageID") else _event_hash(record))
        # The request itself is the evidence; a batch keeps each record.
        raw = body if record is data else json.dumps(record, sort_keys=True).encode()
        parsed.append(Parsed(f"postmark:{rtype}:{ident}", postmark_report(record), raw))
    return parsed


def postmark_report(record: Mapping[str, Any]) -> Report | None:
    rtype, btype = record.get("RecordType"), str(record.get("Type") or "")
    address = str(record.get("Email") or record.get("Recipient") or "")
    ident: dict[str, Any] = {"message_id": str(record.get("ID") or "") or None,
                             "reporter": "postmark", "subject": record.get("Subject"),
                             "extra": {"postmark_message_id": record.get("MessageID")}}
    if rtype == "SpamComplaint" or (rtype == "Bounce" and btype == "SpamComplaint"):
        return Report(Kind.COMPLAINT, (complained(address, "abuse"),), feedback_type="abuse",
                      **ident)
    if rtype == "Delivery":
        return Report(Kind.DELIVERED, (delivered(address, str(record.get("Details") or "")),),
                      **ident)
    entry = _POSTMARK_TYPES.get(btype)
    if rtype != "Bounce" or entry is None:
        return None  # opens, clicks, subscription changes, Postmark's own bookkeeping
    hint, transient = entry
    # Details holds the receiver's reply; Description is Postmark's boilerplate for the type.
    details = str(record.get("Details") or "")
    result = failure(address, details, hint=hint, transient=transient,
                     default="user_unknown" if btype == "HardBounce" else None,
                     fixed=btype in _POSTMARK_FIXED)
    kind = Kind.AUTOREPLY if btype == "AutoResponder" else Kind.BOUNCE
    return Report(kind, (result,), **ident)


# --- Mailgun ----------------------------------------------------------------------------------

def mailgun_verify(signing_key: str, payload: Any, now: float, max_age: int) -> str:
    """hex HMAC-SHA256(signing key, timestamp + token); returns the token, which is used once."""
    signed = payload.get("signature") if isinstance(payload, dict) else None
    if not isinstance(signed, dict) or not all(
            isinstance(signed.get(k), str | int) and str(signed.get(k))
            for k in ("timestamp", "token", "signature")):
        raise Refused(401, "signature missing")
    timestamp, token = str(signed["timestamp"]), str(signed["token"])
    expected = hmac.new(signing_key.encode(), (timestamp + token).encode(),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, str(signed["signature"]).lower()):
        raise Refused(403, "signature does not verify")
    try:
        stamp = float(timestamp)
    except ValueError:
        raise Refused(403, "timestamp not readable") from None
    check_age(stamp, now, max_age)
    return token


# Mailgun's failure reasons that name what the address is.
_MAILGUN_REASONS: dict[str, str] = {"suppress-bounce": "user_unknown", "old": "unreachable",
                                    "espblock": "refused"}


def mailgun_events(payload: Mapping[str, Any], token: str, raw: bytes) -> list[Parsed]:
    data = payload.get("event-data")
    if not isinstance(data, dict):
        raise Refused(400, "event-data missing")
    return [Parsed(f"mailgun:{token}", mailgun_report(data), raw)]


def mailgun_report(data: Mapping[str, Any]) -> Report | None:
    name = data.get("event")
    address = str(data.get("recipient") or "")
    message = _dict(data.get("message"))
    headers = _dict(message.get("headers"))
    envelope = _dict(data.get("envelope"))
    ident: dict[str, Any] = {
        "message_id": data.get("id"), "reporter": "mailgun",
        "original_message_id": _strip_id(headers.get("message-id")),
        "envelope_to": tuple(a for a in (envelope.get("sender"),) if isinstance(a, str) and a),
        "subject": headers.get("subject"),
    }
    if name == "failed":
        status = _dict(data.get("delivery-status"))
        text = " ".join(str(status.get(k) or "") for k in ("message", "description"))
        code = status.get("code")
        result = failure(address, text, status=status.get("enhanced-code"),
                         code=code if isinstance(code, int) else None,
                         hint=_MAILGUN_REASONS.get(str(data.get("reason"))),
                         transient=data.get("severity") != "permanent")
        return Report(Kind.BOUNCE, (result,), **ident)
    if name == "complained":
        return Report(Kind.COMPLAINT, (complained(address, "abuse"),), feedback_type="abuse",
                      **ident)
    if name == "delivered":
        status = _dict(data.get("delivery-status"))
        return Report(Kind.DELIVERED, (delivered(address, str(status.get("message") or "")),),
                      **ident)
    return None  # accepted, rejected, opened, clicked, unsubscribed, stored
