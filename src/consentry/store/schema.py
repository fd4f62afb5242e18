"""The database schema (SQLAlchemy Core). Alembic migrations in `migrations/` create it.

Consent state is kept where the set-based queries need it (opt-outs and subscriptions in their
own narrow tables, quarantine per normalized address); its history lives in the ledger only.
"""

from __future__ import annotations

import sqlalchemy as sa

from consentry.store.types import BigId, UTCDateTime

metadata = sa.MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

# Per-database values: generated secret keys, the suppression hashing key.
meta = sa.Table(
    "meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

profiles = sa.Table(
    "profiles", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("external_id", sa.String(255), unique=True),
    sa.Column("email", sa.String(320)),  # normalized, local part as given: what we send to
    sa.Column("email_key", sa.String(320), index=True),  # matching key (domain.md section 7)
    sa.Column("phone", sa.String(32), index=True),  # E.164, also its own matching key
    sa.Column("first_name", sa.String(255)),
    sa.Column("last_name", sa.String(255)),
    sa.Column("locale", sa.String(35)),
    sa.Column("attributes", sa.JSON),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # Never reuse an id on SQLite: the ledger keeps an erased profile's id, and a new profile
    # taking it over would inherit that history.
    sqlite_autoincrement=True,
)

push_tokens = sa.Table(
    "push_tokens", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("profile_id", BigId, sa.ForeignKey("profiles.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("token", sa.String(1024), nullable=False, index=True),
    sa.Column("app_id", sa.String(255), nullable=False, server_default=""),
    sa.Column("platform", sa.String(16), nullable=False, server_default=""),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("profile_id", "app_id", "token", name="uq_push_tokens_profile_app_token"),
)

# One row per active opt-out; scope is "all" (global) or a channel. Opting back in deletes the
# row; the ledger keeps both events.
opt_outs = sa.Table(
    "opt_outs", metadata,
    sa.Column("profile_id", BigId, sa.ForeignKey("profiles.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("scope", sa.String(8), primary_key=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(255)),
    sa.Column("note", sa.Text),
    sa.CheckConstraint("scope IN ('all', 'email', 'sms', 'push')", name="scope"),
)

services = sa.Table(
    "services", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("slug", sa.String(64), nullable=False, unique=True),
    sa.Column("label", sa.String(255), nullable=False),
    sa.Column("channel", sa.String(8), nullable=False),
    sa.Column("double_opt_in", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("validity_days", sa.Integer),
    sa.Column("public", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

subscriptions = sa.Table(
    "subscriptions", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("profile_id", BigId, sa.ForeignKey("profiles.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("service_id", BigId, sa.ForeignKey("services.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("state_at", UTCDateTime, nullable=False),
    sa.Column("subscribed_at", UTCDateTime),
    sa.Column("expires_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("profile_id", "service_id", name="uq_subscriptions_profile_service"),
    sa.Index("ix_subscriptions_service_state", "service_id", "state"),
    sa.Index("ix_subscriptions_state_expires", "state", "expires_at"),
)

# Platform-wide address state, one row per (channel, normalized key). No row means valid.
quarantine = sa.Table(
    "quarantine", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("channel", sa.String(8), nullable=False),
    sa.Column("address_key", sa.String(1024), nullable=False),
    sa.Column("address", sa.String(1024), nullable=False),
    sa.Column("domain", sa.String(255), index=True),  # email only, for filters and bulk release
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(32)),
    sa.Column("error_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("first_error_at", UTCDateTime),
    sa.Column("last_error_at", UTCDateTime),
    sa.Column("last_counted_at", UTCDateTime),
    sa.Column("status_at", UTCDateTime),
    sa.Column("source", sa.String(32)),
    sa.Column("note", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("channel", "address_key", name="uq_quarantine_channel_key"),
    sa.Index("ix_quarantine_status_reason", "status", "reason"),
)

# What erasure leaves of an address: a keyed one-way hash, so it stays suppressed if it returns.
suppressions = sa.Table(
    "suppressions", metadata,
    sa.Column("channel", sa.String(8), primary_key=True),
    sa.Column("key_hash", sa.String(64), primary_key=True),
    sa.Column("optout", sa.Boolean, nullable=False),  # re-apply a channel opt-out
    sa.Column("quarantine_status", sa.String(16)),  # re-apply this address status
    sa.Column("quarantine_reason", sa.String(32)),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# The consent ledger: append-only, hash-chained per partition (domain/ledger.py).
ledger_events = sa.Table(
    "ledger_events", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("partition", sa.SmallInteger, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(255)),
    sa.Column("profile_id", sa.BigInteger, index=True),  # no foreign key: outlives erasure
    sa.Column("channel", sa.String(8)),
    sa.Column("service", sa.String(64)),
    sa.Column("old_state", sa.String(64)),
    sa.Column("new_state", sa.String(64)),
    sa.Column("wording", sa.String(255)),
    sa.Column("address", sa.String(1024), index=True),
    sa.Column("ip", sa.String(64)),
    sa.Column("user_agent", sa.Text),
    sa.Column("note", sa.Text),
    sa.Column("evidence", sa.JSON),
    sa.Column("personal_digest", sa.String(64), nullable=False),
    sa.Column("redacted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.UniqueConstraint("partition", "seq", name="uq_ledger_events_partition_seq"),
    # Consent events per day (the console's charts) read a time window through it; appends
    # add to its right-hand end only, which costs little.
    sa.Index("ix_ledger_events_at", "at"),
)

ledger_heads = sa.Table(
    "ledger_heads", metadata,
    sa.Column("partition", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# --- deliveries ------------------------------------------------------------------------------

deliveries = sa.Table(
    "deliveries", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("channel", sa.String(8), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # marketing | transactional
    sa.Column("audience", sa.String(16), nullable=False),  # service | all | filter | proof
    sa.Column("service_id", BigId, sa.ForeignKey("services.id", ondelete="RESTRICT")),
    sa.Column("audience_filter", sa.JSON),  # [[field, value], ...] on profile fields
    sa.Column("proof_addresses", sa.JSON),  # seed/test addresses for a proof delivery
    sa.Column("target_limit", sa.Integer),
    sa.Column("fatigue_max", sa.Integer),
    sa.Column("fatigue_days", sa.Integer),
    sa.Column("subject", sa.Text),
    sa.Column("text_body", sa.Text),
    sa.Column("html_body", sa.Text),
    sa.Column("push_title", sa.Text),
    sa.Column("state", sa.String(16), nullable=False),  # draft analyzed sending paused done
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("created_by", sa.String(255)),
    sa.Column("analyzed_at", UTCDateTime),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
)

# One row per recipient address of a delivery: excluded with its reason at analysis, or moving
# pending -> in_flight -> sent | failed | excluded_at_send | unknown while it is sent.
# A delivery's rows have the ids delivery_id * 2^32 + a number (delivery/sql.py): every
# per-delivery query is a range scan of the primary key, and no other index is written while
# the analysis inserts a million rows.
delivery_targets = sa.Table(
    "delivery_targets", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    # No foreign keys: checking one per row cost PostgreSQL 7 s of a million-row analysis;
    # target rows are only written by the analysis of their delivery. Reports outlive erasure.
    sa.Column("delivery_id", BigId, nullable=False),
    sa.Column("profile_id", sa.BigInteger),
    sa.Column("address", sa.String(1024)),
    sa.Column("address_key", sa.String(1024)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(32)),  # exclusion reason or failure reason
    sa.Column("detail", sa.Text),  # the SMTP reply or provider answer
    sa.Column("worker", sa.String(128)),
    sa.Column("claimed_at", UTCDateTime),
    sa.Column("sent_at", UTCDateTime),
    sa.Column("message_id", sa.String(255)),
    # Fatigue counts recent sends per profile; rows enter it only once they are sent, so the
    # analysis, which writes a row per profile, does not pay for it.
    sa.Index("ix_delivery_targets_profile_sent", "profile_id", "sent_at",
             sqlite_where=sa.text("sent_at IS NOT NULL"),
             postgresql_where=sa.text("sent_at IS NOT NULL")),
    # Room on each page for the updates that follow (fatigue and size limit after the
    # analysis, claims while sending): they stay on their page and touch no index (0007).
    postgresql_with={"fillfactor": 90},
)

# The duplicates (rule 8) one analysis works out before it writes its target rows: the target
# numbers (see delivery.sql) of the holders of shared addresses who lose the address to an
# older profile. Deleted when the analysis ends; on PostgreSQL the table is UNLOGGED
# (migration 0007): nothing in it outlives the analysis that wrote it.
analysis_duplicates = sa.Table(
    "analysis_duplicates", metadata,
    sa.Column("delivery_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("number", sa.BigInteger, primary_key=True, autoincrement=False),
)

# Sending processes and their heartbeats: a claim held by a worker that stopped beating is
# one whose outcome nobody knows.
workers = sa.Table(
    "workers", metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("heartbeat_at", UTCDateTime, nullable=False),
)

# --- feedback --------------------------------------------------------------------------------

# Every feedback message or webhook event received, once: `dedupe_key` (its Message-ID, a hash
# of it, or the provider's event id) makes a second arrival a no-op. Messages nothing could be
# read from stay here with status `review`, raw bytes and all, for an operator to look at.
feedback_messages = sa.Table(
    "feedback_messages", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("dedupe_key", sa.String(255), nullable=False, unique=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("via", sa.String(32), nullable=False),  # file, smtp, imap, ses, sendgrid, ...
    sa.Column("source", sa.String(1024)),  # the file, the SMTP peer, the mailbox
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # applied | ignored | review
    sa.Column("delivery_id", sa.BigInteger),
    sa.Column("summary", sa.JSON),  # the classification, as `feedback classify` prints it
    sa.Column("raw", sa.LargeBinary),  # the message itself: the evidence the ledger points to
    sa.Index("ix_feedback_messages_status_received", "status", "received_at"),
)

# One row per recipient a feedback message named, as applied: the per-delivery and per-day
# bounce and complaint rates count these.
feedback_results = sa.Table(
    "feedback_results", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("message_id", BigId, sa.ForeignKey("feedback_messages.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("class", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16)),
    sa.Column("channel", sa.String(8), nullable=False),
    sa.Column("address_key", sa.String(1024)),
    sa.Column("delivery_id", sa.BigInteger),
    sa.Column("target_id", sa.BigInteger),
    sa.Column("profile_id", sa.BigInteger),
    sa.Index("ix_feedback_results_delivery", "delivery_id", "kind"),
    sa.Index("ix_feedback_results_at", "at"),
    sa.Index("ix_feedback_results_address", "address_key"),
)

# Inbound SMS (mobile originated): every one is kept, keyword or not. `provider_id` (Twilio's
# MessageSid, or the generic hook's id) makes a replayed webhook a no-op.
inbound_sms = sa.Table(
    "inbound_sms", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("via", sa.String(32), nullable=False),  # twilio, generic, cli
    sa.Column("provider_id", sa.String(255), unique=True),
    sa.Column("from_number", sa.String(64), nullable=False),  # E.164 when it parses
    sa.Column("to_number", sa.String(64), nullable=False),  # our sender number / short code
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # stop | start | help | none
    sa.Column("reply", sa.Text),  # the confirmation we answered with, if any
    sa.Index("ix_inbound_sms_from_received", "from_number", "received_at"),
)

# --- operators, API keys, audit --------------------------------------------------------------

# People who use the console. Passwords are argon2 hashes; repeated failed logins lock the
# account for a while (failed_logins counts since the last success).
operators = sa.Table(
    "operators", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("login", sa.String(255), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # admin | operator | viewer
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("disabled_at", UTCDateTime),
    sa.Column("failed_logins", sa.Integer, nullable=False, server_default="0"),
    sa.Column("locked_until", UTCDateTime),
    sa.Column("last_login_at", UTCDateTime),
)

# Console sessions: the cookie holds a random token, the table its SHA-256, so a stolen
# database does not hand out sessions; logout deletes the row.
operator_sessions = sa.Table(
    "operator_sessions", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("operator_id", BigId, sa.ForeignKey("operators.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("ip", sa.String(64)),
    sa.Column("user_agent", sa.String(512)),
)

# API keys: "csk_<prefix>_<secret>"; only the SHA-256 of the whole key is kept (the key is
# random and long, so a fast hash is enough and every request can afford it). Shown once.
api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("prefix", sa.String(16), nullable=False, unique=True),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("created_by", sa.String(255)),
    sa.Column("revoked_at", UTCDateTime),
    sa.Column("last_used_at", UTCDateTime),
)

# What operators and API clients did that is not a consent change (those are in the ledger):
# operators and keys managed, deliveries created and sent, services changed, logins.
audit_log = sa.Table(
    "audit_log", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False, index=True),
    sa.Column("actor", sa.String(255), nullable=False),  # operator:LOGIN, apikey:NAME, os:USER
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(255)),
    sa.Column("detail", sa.JSON),
    sa.Column("ip", sa.String(64)),
)

# POST requests with an Idempotency-Key: the answer is kept and replayed for the same key.
idempotency_keys = sa.Table(
    "idempotency_keys", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("principal", sa.String(255), nullable=False),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("body", sa.JSON),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("principal", "key", name="uq_idempotency_keys_principal_key"),
)

# --- outbound webhooks -----------------------------------------------------------------------

webhook_endpoints = sa.Table(
    "webhook_endpoints", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("secret", sa.String(255), nullable=False),  # HMAC-SHA256 key of the signatures
    sa.Column("events", sa.JSON, nullable=False),  # kinds: opt_out, opt_in, subscription, ...
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# The outbox: one row per event and endpoint, written in the transaction of the consent change
# itself, sent afterwards with retries; the rows are the delivery log.
webhook_deliveries = sa.Table(
    "webhook_deliveries", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("endpoint_id", BigId, sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("delivered_at", UTCDateTime),
    sa.Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
    sa.Index("ix_webhook_deliveries_endpoint", "endpoint_id", "id"),
)
