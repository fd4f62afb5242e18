"""Provider webhooks (/hooks/ses, /hooks/sendgrid, /hooks/postmark, /hooks/mailgun) with real
signatures made here from generated keys: a valid bounce quarantines, a valid complaint
denylists, a replayed event counts once, and anything forged, stale or replayed is refused and
changes nothing. Storage-touching tests run on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from consentry.domain.addresses import normalize_email
from consentry.domain.feedback import Kind
from consentry.domain.quarantine import FailureClass
from consentry.feedback import providers
from consentry.quarantine import service as quarantine
from consentry.settings import HookSettings, Settings
from consentry.store.schema import deliveries, delivery_targets, feedback_messages, ledger_events
from consentry.store.schema import quarantine as quarantine_table
from consentry.tokens import Signer
from consentry.web.app import create_app
from http_sink import HttpSink, Recorded, Reply, http_sink

TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-feedback"
POSTMARK_AUTH = ("postmark", "s3cret-pass")
MAILGUN_KEY = "key-mailgun-signing-0123456789"


# --- keys, certificates and the certificate server -------------------------------------------

def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _self_signed(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.test")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Keys:
    sns: rsa.RSAPrivateKey  # its certificate is served at /cert.pem
    forger: rsa.RSAPrivateKey  # not the one the certificate names
    sendgrid: ec.EllipticCurvePrivateKey
    server: HttpSink  # serves certificates, answers SubscribeURL visits

    @property
    def cert_url(self) -> str:
        return f"{self.server.url}/cert.pem"

    def sendgrid_public(self) -> str:
        der = self.sendgrid.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode()


@pytest.fixture(scope="session")
def keys() -> Iterator[Keys]:
    sns_key = _rsa()
    pem = _self_signed(sns_key)

    def handler(request: Recorded) -> Reply:
        if request.path.startswith("/cert.pem"):
            return Reply(body=pem, headers={"Content-Type": "application/x-pem-file"})
        return Reply(body="<ConfirmSubscriptionResponse/>", headers={"Content-Type": "text/xml"})

    with http_sink(handler) as server:
        yield Keys(sns_key, _rsa(), ec.generate_private_key(ec.SECP256R1()), server)


def _hooks(keys: Keys, **overrides: Any) -> HookSettings:
    values: dict[str, Any] = {
        "sns_cert_url_pattern": f"^{re.escape(keys.server.url)}/",
        "sns_topic_arns": (TOPIC,), "sendgrid_public_key": keys.sendgrid_public(),
        "postmark_username": POSTMARK_AUTH[0], "postmark_password": POSTMARK_AUTH[1],
        "mailgun_signing_key": MAILGUN_KEY}
    return HookSettings(**{**values, **overrides})


@pytest.fixture
def client(engine: sa.Engine, settings: Settings, keys: Keys) -> TestClient:
    return TestClient(create_app(replace(settings, hooks=_hooks(keys)), engine))


def _client(engine: sa.Engine, settings: Settings, hooks: HookSettings) -> TestClient:
    return TestClient(create_app(replace(settings, hooks=hooks), engine))


# --- what the database holds -----------------------------------------------------------------

def _status(engine: sa.Engine, settings: Settings, address: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return quarantine.show(conn, normalize_email(address), settings.quarantine)


def _snapshot(engine: sa.Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return tuple(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                     for t in (feedback_messages, ledger_events, quarantine_table))


def _assert_refused(response: Any, status: int, engine: sa.Engine,
                    before: tuple[int, int, int]) -> None:
    assert response.status_code == status, response.text
    assert "error" in response.json()
    assert _snapshot(engine) == before


# --- SNS / SES -------------------------------------------------------------------------------

def _sns_time(at: float | None = None) -> str:
    stamp = datetime.fromtimestamp(at if at is not None else time.time(), UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _sign_sns(message: dict[str, Any], key: rsa.RSAPrivateKey, version: str) -> dict[str, Any]:
    message = {**message, "SignatureVersion": version}
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(providers.sns_string_to_sign(message), padding.PKCS1v15(), algorithm)
    return {**message, "Signature": base64.b64encode(signature).decode()}


def _sns(keys: Keys, ses_message: dict[str, Any] | None = None, *, kind: str = "Notification",
         version: str = "2", key: rsa.RSAPrivateKey | None = None, cert_url: str | None = None,
         at: float | None = None, topic: str = TOPIC, message_id: str | None = None,
         subscribe_url: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {
        "Type": kind, "MessageId": message_id or str(uuid.uuid4()), "TopicArn": topic,
        "Message": json.dumps(ses_message or {}), "Timestamp": _sns_time(at),
        "SigningCertURL": cert_url or keys.cert_url}
    if kind == "Notification":
        message["Subject"] = "Amazon SES Email Event Notification"
        message["UnsubscribeURL"] = f"{keys.server.url}/?Action=Unsubscribe"
    else:
        message["Token"] = "2336412f37fb687f5d51e6e2425"
        message["SubscribeURL"] = subscribe_url or (
            f"{keys.server.url}/?Action=ConfirmSubscription&Token=2336412f37fb687f5d51e6e2425")
        message["Message"] = "You have chosen to subscribe to the topic."
    return _sign_sns(message, key or keys.sns, version)


def _mail(source: str = "noreply@example.com", message_id: str = "<m1@example.com>") -> dict:
    return {"timestamp": "2026-03-01T08:00:00.000Z", "source": source,
            "messageId": "0100018e-ses-id", "destination": ["rcpt@example.org"],
            "headers": [{"name": "Message-ID", "value": message_id}],
            "commonHeaders": {"subject": "News", "messageId": message_id}}


def _ses_bounce(address: str, diagnostic: str = "smtp; 550 5.1.1 user unknown", *,
                bounce_type: str = "Permanent", subtype: str = "General",
                status: str = "5.1.1", mail: dict | None = None) -> dict[str, Any]:
    return {"notificationType": "Bounce", "mail": mail or _mail(), "bounce": {
        "bounceType": bounce_type, "bounceSubType": subtype, "feedbackId": "fb-1",
        "bouncedRecipients": [{"emailAddress": address, "action": "failed", "status": status,
                               "diagnosticCode": diagnostic}]}}


def _post_sns(client: TestClient, message: dict[str, Any]) -> Any:
    # SNS posts JSON with Content-Type text/plain.
    return client.post("/hooks/ses", content=json.dumps(message).encode(), headers={
        "Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": message["Type"]})


@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_bounce_quarantines_and_a_replay_counts_once(client, engine, settings, keys,
                                                         version):
    message = _sns(keys, _ses_bounce("Gone@Example.com"), version=version)
    response = _post_sns(client, message)
    assert response.status_code == 200, response.text
    assert response.json() == {"applied": 1, "duplicates": 0, "skipped": 0}
    shown = _status(engine, settings, "gone@example.com")
    assert (shown["status"], shown["reason"]) == ("quarantined", "user_unknown")
    before = _snapshot(engine)

    again = _post_sns(client, message)
    assert again.json() == {"applied": 0, "duplicates": 1, "skipped": 0}
    assert _snapshot(engine) == before


def test_ses_complaint_denylists(client, engine, settings, keys):
    complaint = {"notificationType": "Complaint", "mail": _mail(), "complaint": {
        "feedbackId": "fb-2", "complaintFeedbackType": "abuse",
        "complainedRecipients": [{"emailAddress": "angry@example.org"}]}}
    assert _post_sns(client, _sns(keys, complaint)).json()["applied"] == 1
    assert _status(engine, settings, "angry@example.org")["status"] == "denylisted"


def test_ses_transient_bounce_counts_soft_and_delivery_resets(client, engine, settings, keys):
    full = _ses_bounce("full@example.org", "smtp; 552 5.2.2 mailbox full",
                       bounce_type="Transient", subtype="MailboxFull", status="5.2.2")
    assert _post_sns(client, _sns(keys, full)).status_code == 200
    shown = _status(engine, settings, "full@example.org")
    assert (shown["status"], shown["reason"]) == ("erroneous", "mailbox_full")

    delivery = {"eventType": "Delivery", "mail": _mail(), "delivery": {
        "recipients": ["full@example.org"], "smtpResponse": "250 2.0.0 OK"}}
    assert _post_sns(client, _sns(keys, delivery)).json()["applied"] == 1
    assert _status(engine, settings, "full@example.org")["status"] == "valid"


def test_ses_forged_stale_or_foreign_messages_are_refused(client, engine, settings, keys):
    bounce = _ses_bounce("victim@example.org")
    before = _snapshot(engine)
    # Signed by a key that is not the certificate's.
    _assert_refused(_post_sns(client, _sns(keys, bounce, key=keys.forger)), 403, engine, before)
    # Signed, then changed.
    tampered = _sns(keys, bounce)
    tampered["Message"] = tampered["Message"].replace("victim@", "other@")
    _assert_refused(_post_sns(client, tampered), 403, engine, before)
    # No signature at all.
    unsigned = {k: v for k, v in _sns(keys, bounce).items() if k != "Signature"}
    _assert_refused(_post_sns(client, unsigned), 401, engine, before)
    # Validly signed but older than max_age_seconds: a replay.
    stale = _sns(keys, bounce, at=time.time() - 3600)
    _assert_refused(_post_sns(client, stale), 403, engine, before)
    # A certificate URL outside the pattern is never fetched.
    fetched = len(keys.server.requests)
    foreign = _sns(keys, bounce, cert_url="https://attacker.example/cert.pem")
    _assert_refused(_post_sns(client, foreign), 403, engine, before)
    assert len(keys.server.requests) == fetched
    # A topic that is not ours.
    other = _sns(keys, bounce, topic="arn:aws:sns:eu-west-1:999999999999:theirs")
    _assert_refused(_post_sns(client, other), 403, engine, before)
    assert _status(engine, settings, "victim@example.org")["status"] == "valid"


def test_ses_hook_is_off_until_its_topics_are_configured(engine, settings, keys):
    """Any AWS account can point its own topic at us and SNS signs its messages for real:
    without a list of our topics nothing is confirmed or applied."""
    unconfigured = _client(engine, settings, _hooks(keys, sns_topic_arns=()))
    before = _snapshot(engine)
    url = f"{keys.server.url}/?Action=ConfirmSubscription&Token=theirs"
    response = _post_sns(unconfigured, _sns(keys, kind="SubscriptionConfirmation",
                                            subscribe_url=url))
    _assert_refused(response, 403, engine, before)
    assert "not configured" in response.json()["error"]
    assert not [r for r in keys.server.requests if "theirs" in r.path]


def test_ses_subscription_confirmation_visits_the_subscribe_url(client, engine, keys):
    before = _snapshot(engine)
    token = uuid.uuid4().hex
    url = f"{keys.server.url}/?Action=ConfirmSubscription&Token={token}"
    response = _post_sns(client, _sns(keys, kind="SubscriptionConfirmation", subscribe_url=url,
                                      version="1"))
    assert response.status_code == 200, response.text
    assert [r.method for r in keys.server.requests if token in r.path] == ["GET"]
    assert _snapshot(engine) == before

    # Signed, but pointing somewhere SNS is not: refused, not visited.
    evil = "https://attacker.example/?Action=ConfirmSubscription"
    response = _post_sns(client, _sns(keys, kind="SubscriptionConfirmation",
                                      subscribe_url=evil))
    assert response.status_code == 403
    # A forged confirmation is not visited either.
    token2 = uuid.uuid4().hex
    forged = _sns(keys, kind="SubscriptionConfirmation", key=keys.forger,
                  subscribe_url=f"{keys.server.url}/?Token={token2}")
    assert _post_sns(client, forged).status_code == 403
    assert not [r for r in keys.server.requests if token2 in r.path]


def test_ses_verp_return_path_names_the_delivery_target(client, engine, settings, keys):
    """mail.source is our VERP address: the bounce applies to the target it names, even when
    the bounce names a forwarding address."""
    with engine.begin() as conn:
        delivery_id = conn.execute(deliveries.insert().returning(deliveries.c.id), {
            "name": "march", "channel": "email", "kind": "marketing", "audience": "all",
            "state": "done", "created_at": datetime.now(UTC)}).scalar_one()
        address = normalize_email("subscriber@example.net")
        target_id = conn.execute(delivery_targets.insert().returning(delivery_targets.c.id), {
            "delivery_id": delivery_id, "address": address.value, "address_key": address.key,
            "state": "sent"}).scalar_one()
        tag = Signer.for_database(conn, settings).address_tag("b", delivery_id, target_id)
    mail = _mail(source=f"{tag}@{settings.bounce_domain}")
    bounce = _ses_bounce("forwarded-to@elsewhere.example", mail=mail)
    assert _post_sns(client, _sns(keys, bounce)).json()["applied"] == 1
    assert _status(engine, settings, "subscriber@example.net")["status"] == "quarantined"
    with engine.connect() as conn:
        stored = conn.execute(sa.select(feedback_messages.c.delivery_id,
                                        feedback_messages.c.via)).one()
    assert tuple(stored) == (delivery_id, "ses")


def test_sns_canonical_string():
    message = {"Type": "Notification", "MessageId": "id", "TopicArn": "arn", "Message": "m",
               "Timestamp": "t", "Subject": None, "UnsubscribeURL": "u"}
    assert providers.sns_string_to_sign(message) == (
        b"Message\nm\nMessageId\nid\nTimestamp\nt\nTopicArn\narn\nType\nNotification\n")
    message["Subject"] = "s"
    assert b"Subject\ns\nTimestamp" in providers.sns_string_to_sign(message)


# --- SendGrid --------------------------------------------------------------------------------

def _sendgrid_headers(key: ec.EllipticCurvePrivateKey, body: bytes,
                      at: float | None = None) -> dict[str, str]:
    timestamp = str(int(at if at is not None else time.time()))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {"Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp}


def _sg_event(event: str, email: str, **fields: Any) -> dict[str, Any]:
    return {"email": email, "timestamp": int(time.time()), "event": event,
            "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
            "sg_event_id": fields.pop("sg_event_id", uuid.uuid4().hex),
            "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0", **fields}


def test_sendgrid_bounce_complaint_block_and_replay(client, engine, settings, keys):
    events = [
        _sg_event("bounce", "gone@example.com", type="bounce", status="5.1.1",
                  reason="550 5.1.1 The email account that you tried to reach does not exist",
                  sg_event_id="ev-bounce"),
        _sg_event("spamreport", "angry@example.com"),
        _sg_event("bounce", "blocked@example.com", type="blocked", status="5.7.1",
                  reason="550 5.7.1 user unknown, message blocked"),
        _sg_event("open", "reader@example.com"),
    ]
    body = json.dumps(events).encode()
    response = client.post("/hooks/sendgrid", content=body,
                           headers=_sendgrid_headers(keys.sendgrid, body))
    assert response.status_code == 200, response.text
    assert response.json() == {"applied": 3, "duplicates": 0, "skipped": 1}
    assert _status(engine, settings, "gone@example.com")["status"] == "quarantined"
    assert _status(engine, settings, "angry@example.com")["status"] == "denylisted"
    # A block is the receiver refusing us: logged, never quarantines the address.
    assert _status(engine, settings, "blocked@example.com")["status"] != "quarantined"
    before = _snapshot(engine)

    replay = json.dumps(events[:1]).encode()
    again = client.post("/hooks/sendgrid", content=replay,
                        headers=_sendgrid_headers(keys.sendgrid, replay))
    assert again.json() == {"applied": 0, "duplicates": 1, "skipped": 0}
    assert _snapshot(engine) == before


def test_sendgrid_forged_stale_and_unsigned_are_refused(client, engine, settings, keys):
    body = json.dumps([_sg_event("bounce", "victim@example.com", type="bounce",
                                 status="5.1.1", reason="550 5.1.1 no such user")]).encode()
    before = _snapshot(engine)
    wrong_key = ec.generate_private_key(ec.SECP256R1())
    _assert_refused(client.post("/hooks/sendgrid", content=body,
                                headers=_sendgrid_headers(wrong_key, body)), 403, engine, before)
    headers = _sendgrid_headers(keys.sendgrid, body)
    tampered = body.replace(b"victim@", b"other1@")
    _assert_refused(client.post("/hooks/sendgrid", content=tampered, headers=headers), 403,
                    engine, before)
    stale = _sendgrid_headers(keys.sendgrid, body, at=time.time() - 3600)
    _assert_refused(client.post("/hooks/sendgrid", content=body, headers=stale), 403, engine,
                    before)
    _assert_refused(client.post("/hooks/sendgrid", content=body,
                                headers={"Content-Type": "application/json"}), 401, engine,
                    before)
    assert _status(engine, settings, "victim@example.com")["status"] == "valid"


def test_sendgrid_malformed_after_valid_signature_and_not_configured(engine, settings, keys):
    client = _client(engine, settings, _hooks(keys))
    body = b'[{"event": "bounce",'
    before = _snapshot(engine)
    _assert_refused(client.post("/hooks/sendgrid", content=body,
                                headers=_sendgrid_headers(keys.sendgrid, body)), 400, engine,
                    before)
    unconfigured = _client(engine, settings, _hooks(keys, sendgrid_public_key=None))
    body = b"[]"
    _assert_refused(unconfigured.post("/hooks/sendgrid", content=body,
                                      headers=_sendgrid_headers(keys.sendgrid, body)), 403,
                    engine, before)


# --- Postmark --------------------------------------------------------------------------------

def _pm_bounce(email: str, bounce_type: str = "HardBounce", record_id: int = 4323372036854775,
               details: str = "smtp;550 5.1.1 The email account that you tried to reach "
                              "does not exist.") -> dict[str, Any]:
    return {"RecordType": "Bounce", "ID": record_id, "Type": bounce_type, "TypeCode": 1,
            "Name": "Hard bounce", "MessageID": str(uuid.uuid4()), "ServerID": 23,
            "MessageStream": "outbound",
            "Description": "The server was unable to deliver your message (ex: unknown user, "
                           "mailbox not found).",
            "Details": details, "Email": email, "From": "sender@example.com",
            "BouncedAt": "2026-03-01T08:00:00Z", "Subject": "News"}


def test_postmark_bounce_complaint_and_replay(client, engine, settings):
    record = _pm_bounce("gone@example.com")
    response = client.post("/hooks/postmark", json=record, auth=POSTMARK_AUTH)
    assert response.status_code == 200, response.text
    assert response.json() == {"applied": 1, "duplicates": 0, "skipped": 0}
    assert _status(engine, settings, "gone@example.com")["status"] == "quarantined"
    before = _snapshot(engine)
    again = client.post("/hooks/postmark", json=record, auth=POSTMARK_AUTH)
    assert again.json() == {"applied": 0, "duplicates": 1, "skipped": 0}
    assert _snapshot(engine) == before

    complaint = {**_pm_bounce("angry@example.com", "SpamComplaint", 77), "RecordType":
                 "SpamComplaint"}
    assert client.post("/hooks/postmark", json=complaint,
                       auth=POSTMARK_AUTH).json()["applied"] == 1
    assert _status(engine, settings, "angry@example.com")["status"] == "denylisted"

    auto = _pm_bounce("away@example.com", "AutoResponder", 78, "I am out of the office")
    assert client.post("/hooks/postmark", json=auto, auth=POSTMARK_AUTH).status_code == 200
    assert _status(engine, settings, "away@example.com")["status"] == "valid"


def test_postmark_wrong_or_missing_credentials_are_refused(client, engine, settings, keys):
    record = _pm_bounce("victim@example.com")
    before = _snapshot(engine)
    wrong = client.post("/hooks/postmark", json=record, auth=(POSTMARK_AUTH[0], "guess"))
    _assert_refused(wrong, 401, engine, before)
    assert wrong.headers["www-authenticate"].startswith("Basic")
    _assert_refused(client.post("/hooks/postmark", json=record), 401, engine, before)
    _assert_refused(client.post("/hooks/postmark", json=record,
                                headers={"Authorization": "Basic !!notbase64"}), 401, engine,
                    before)
    unconfigured = _client(engine, settings, _hooks(keys, postmark_password=None))
    _assert_refused(unconfigured.post("/hooks/postmark", json=record, auth=POSTMARK_AUTH), 403,
                    engine, before)
    _assert_refused(client.post("/hooks/postmark", content=b"{not json", auth=POSTMARK_AUTH,
                                headers={"Content-Type": "application/json"}), 400, engine,
                    before)


# --- Mailgun ---------------------------------------------------------------------------------

def _mailgun(event_data: dict[str, Any], *, key: str = MAILGUN_KEY, at: float | None = None,
             token: str | None = None) -> dict[str, Any]:
    timestamp = str(int(at if at is not None else time.time()))
    token = token or uuid.uuid4().hex + uuid.uuid4().hex[:18]
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return {"signature": {"timestamp": timestamp, "token": token, "signature": signature},
            "event-data": event_data}


def _mg_failed(recipient: str, severity: str = "permanent", code: int = 550,
               message: str = "5.1.1 The email account that you tried to reach does not exist",
               reason: str = "bounce") -> dict[str, Any]:
    return {"event": "failed", "id": uuid.uuid4().hex, "timestamp": time.time(),
            "severity": severity, "reason": reason, "recipient": recipient,
            "envelope": {"sender": "bounce@example.com", "transport": "smtp"},
            "message": {"headers": {"message-id": "20260301.1@example.com", "subject": "News"}},
            "delivery-status": {"code": code, "message": message, "description": "",
                                "enhanced-code": "5.1.1" if code >= 500 else "4.2.2"}}


def test_mailgun_failed_complained_and_replayed_token(client, engine, settings):
    payload = _mailgun(_mg_failed("gone@example.com"))
    response = client.post("/hooks/mailgun", json=payload)
    assert response.status_code == 200, response.text
    assert response.json() == {"applied": 1, "duplicates": 0, "skipped": 0}
    assert _status(engine, settings, "gone@example.com")["status"] == "quarantined"
    before = _snapshot(engine)
    # The same signed request again: its token was used, so it is a replay.
    _assert_refused(client.post("/hooks/mailgun", json=payload), 403, engine, before)

    temporary = _mailgun(_mg_failed("busy@example.com", "temporary", 452,
                                    "4.2.2 The email account is over quota"))
    assert client.post("/hooks/mailgun", json=temporary).json()["applied"] == 1
    shown = _status(engine, settings, "busy@example.com")
    assert (shown["status"], shown["reason"]) == ("erroneous", "mailbox_full")

    complaint = _mailgun({"event": "complained", "id": "c1", "recipient": "angry@example.com",
                          "timestamp": time.time()})
    assert client.post("/hooks/mailgun", json=complaint).json()["applied"] == 1
    assert _status(engine, settings, "angry@example.com")["status"] == "denylisted"


def test_mailgun_forged_stale_and_unsigned_are_refused(client, engine, settings, keys):
    event = _mg_failed("victim@example.com")
    before = _snapshot(engine)
    _assert_refused(client.post("/hooks/mailgun", json=_mailgun(event, key="wrong-key")), 403,
                    engine, before)
    forged = _mailgun(event)
    forged["signature"]["token"] = "a" * 50  # signature no longer matches
    _assert_refused(client.post("/hooks/mailgun", json=forged), 403, engine, before)
    stale = _mailgun(event, at=time.time() - 3600)
    _assert_refused(client.post("/hooks/mailgun", json=stale), 403, engine, before)
    _assert_refused(client.post("/hooks/mailgun", json={"event-data": event}), 401, engine,
                    before)
    unconfigured = _client(engine, settings, _hooks(keys, mailgun_signing_key=None))
    _assert_refused(unconfigured.post("/hooks/mailgun", json=_mailgun(event)), 403, engine,
                    before)
    assert _status(engine, settings, "victim@example.com")["status"] == "valid"


# --- classification (pure) -------------------------------------------------------------------

def test_transient_signals_are_never_hard():
    report = providers.ses_report(_ses_bounce("a@example.com", "smtp; 550 5.1.1 user unknown",
                                              bounce_type="Transient", subtype="General"))
    assert report is not None and report.recipients[0].klass is FailureClass.SOFT
    # Text beats code: a "5.1.1" that says the mailbox is full is full.
    full = providers.failure("a@example.com", "550 5.1.1 mailbox full", hint="user_unknown")
    assert (full.reason, full.klass) == ("mailbox_full", FailureClass.SOFT)
    policy = providers.ses_report(_ses_bounce("a@example.com", "550 5.7.1 rejected by policy"))
    assert policy is not None and policy.recipients[0].reason == "refused"
    # A permanent bounce: its status beats the broad category, which fills in when nothing
    # else says anything.
    status_only = providers.ses_report(_ses_bounce("a@example.com", "", status="5.7.1"))
    assert status_only is not None and status_only.recipients[0].reason == "refused"
    bare = providers.ses_report(_ses_bounce("a@example.com", "", status=""))
    assert bare is not None and (bare.recipients[0].reason, bare.recipients[0].klass) == (
        "user_unknown", FailureClass.HARD)
    policy_hard = providers.postmark_report(_pm_bounce("x@example.com", details="550 5.7.1 "
                                                       "message rejected as spam"))
    assert policy_hard is not None and policy_hard.recipients[0].reason == "refused"


def test_provider_events_map_to_kinds():
    dropped = providers.sendgrid_report(_sg_event("dropped", "x@example.com",
                                                  reason="Bounced Address"))
    assert dropped is not None and dropped.recipients[0].reason == "user_unknown"
    spam = providers.sendgrid_report(_sg_event("dropped", "x@example.com",
                                               reason="Spam Reporting Address"))
    assert spam is not None and spam.kind is Kind.COMPLAINT
    assert providers.sendgrid_report(_sg_event("deferred", "x@example.com")) is None
    assert providers.sendgrid_report(_sg_event("dropped", "x@example.com",
                                               reason="Unsubscribed Address")) is None
    auto = providers.postmark_report(_pm_bounce("x@example.com", "AutoResponder"))
    assert auto is not None and auto.recipients[0].klass is FailureClass.IGNORED
    blocked = providers.postmark_report(_pm_bounce("x@example.com", "Blocked"))
    assert blocked is not None and blocked.recipients[0].reason == "refused"
    delivered = providers.postmark_report({"RecordType": "Delivery", "MessageID": "m",
                                           "Recipient": "x@example.com"})
    assert delivered is not None and delivered.kind is Kind.DELIVERED
    not_spam = {"notificationType": "Complaint", "mail": _mail(),
                "complaint": {"complaintFeedbackType": "not-spam", "complainedRecipients": []}}
    assert providers.ses_report(not_spam) is None
    suppressed = providers.mailgun_report(_mg_failed("x@example.com", code=605, message="",
                                                     reason="suppress-bounce"))
    assert suppressed is not None and suppressed.recipients[0].klass is FailureClass.HARD
    assert suppressed.original_message_id == "20260301.1@example.com"
