"""Every SQL statement of the profile CSV import and export, in one place.

The import works on one chunk of rows at a time, one transaction each, and never sends one
INSERT or UPDATE per row. Rows are matched to profiles first (by key lists, one query each).
New profiles and everything their rows say are bulk-loaded straight into their tables
(PostgreSQL: COPY; SQLite: executemany). Rows of existing profiles are loaded into TEMP staging
tables, and every change to them is one statement over the whole chunk; the statements that
change consent return exactly the rows they changed (RETURNING), so the ledger gets one event
per actual change without reading the consent tables twice.

Both databases run the same text for most statements: SQLite (3.35+) has UPDATE ... FROM,
INSERT ... ON CONFLICT DO NOTHING RETURNING and row values; where they differ (id allocation,
key lists, JSON merging, the staging tables' types) there is one variant per dialect.
"""

from __future__ import annotations

import sqlalchemy as sa

from consentry.store.schema import opt_outs, profiles, push_tokens, services, subscriptions
from consentry.store.types import UTCDateTime

# --- New profiles ----------------------------------------------------------------------------

# A new profile has no consent state yet, so everything its row says is a change: the profile,
# its opt-outs, tokens and subscriptions are written straight into their tables (PostgreSQL:
# COPY; SQLite: executemany) and their ledger events built without asking the database.
PROFILE_COLUMNS = ("id", "external_id", "email", "email_key", "phone", "first_name",
                   "last_name", "locale", "attributes", "created_at", "updated_at")
OPT_OUT_COLUMNS = ("profile_id", "scope", "at", "source", "actor", "note")
TOKEN_COLUMNS = ("profile_id", "token", "app_id", "platform", "created_at")
SUBSCRIPTION_COLUMNS = ("profile_id", "service_id", "state", "state_at", "subscribed_at",
                        "expires_at", "created_at")


def insert_rows(table: str, columns: tuple[str, ...]) -> str:
    """SQLite's bulk load: one prepared INSERT run with executemany over plain tuples."""
    return (f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})")


def copy_rows(table: str, columns: tuple[str, ...]) -> str:
    """PostgreSQL's bulk load: COPY streams all rows in one round trip."""
    return f"COPY {table} ({', '.join(columns)}) FROM STDIN"


# Their ids are taken before anything is written, so tokens, opt-outs and subscriptions can name
# them, and ids follow the file's order. PostgreSQL draws them from the table's own sequence, so
# concurrent inserts never collide (run through the driver: a plain psycopg statement).
NEXT_IDS_POSTGRESQL = "SELECT nextval(CAST(%s AS regclass)) FROM generate_series(1, %s)"
PROFILE_ID_SEQUENCE = sa.text("SELECT pg_get_serial_sequence('profiles', 'id')")

# SQLite hands out max(rowid) + 1 itself; we do the same. The chunk holds the write lock (BEGIN
# IMMEDIATE) from reading the maximum to inserting, so nobody else can take the ids. If the table
# ever uses AUTOINCREMENT, its counter in sqlite_sequence is respected too.
MAX_PROFILE_ID = sa.select(sa.func.coalesce(sa.func.max(profiles.c.id), 0))
HAS_SQLITE_SEQUENCE = sa.text(
    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'")
SQLITE_SEQUENCE = sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'profiles'")

# SQLite keeps 2 MB of pages in memory by default; the random inserts into the email and phone
# indexes of a large table then read their pages back through the OS for every chunk. The import
# connection gets room for them (~40% less CPU per row at half a million profiles) and its own
# setting back afterwards.
SQLITE_CACHE_SIZE = "PRAGMA cache_size"
SQLITE_IMPORT_CACHE_KIB = 256 * 1024

# --- Matching --------------------------------------------------------------------------------

# Matching happens in Python on what these return for one chunk's keys, passed as one value (a
# JSON array for SQLite, an array for PostgreSQL) rather than as thousands of bound parameters.
# Each key is one probe of the unique external_id index or of ix_profiles_email_key. All holders
# of an email key come back, so a key several profiles hold is seen as ambiguous instead of
# updating an arbitrary one of them.
# (The email key comes along so that an email a row takes away from its profile is known.)
BY_EXTERNAL_IDS = {
    "sqlite": sa.text("SELECT external_id, id, email_key FROM profiles "
                      "WHERE external_id IN (SELECT value FROM json_each(:keys))"),
    "postgresql": sa.text("SELECT p.external_id, p.id, p.email_key "
                          "FROM unnest(CAST(:keys AS text[])) AS k(key) "
                          "JOIN profiles AS p ON p.external_id = k.key"),
}
BY_EMAIL_KEYS = {
    "sqlite": sa.text("SELECT email_key, id FROM profiles "
                      "WHERE email_key IN (SELECT value FROM json_each(:keys)) "
                      "ORDER BY email_key, id"),
    "postgresql": sa.text("SELECT p.email_key, p.id FROM unnest(CAST(:keys AS text[])) AS k(key) "
                          "JOIN profiles AS p ON p.email_key = k.key ORDER BY p.email_key, p.id"),
}

# A chunk is a small part of a large table, and every statement of it should cost in proportion
# to the chunk: one index probe per row. PostgreSQL's planner prices 25,000 probes of a
# million-row table's indexes above one sequential scan of it (random_page_cost) and would hash-
# join against all of `profiles` for every chunk, so a re-import of a million rows would read the
# table forty times. For the chunk's transaction only (SET LOCAL), joins are nested loops.
CHUNK_PLANNER_POSTGRESQL = ["SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off"]

# --- Staging (existing profiles) -------------------------------------------------------------

# The rows that matched existing profiles, for the set-based updates below; the token and
# subscription tables join it on `line` (the row's physical line in the file). The opt_* columns
# hold 1 (opt out), 0 (opt back in) or NULL (leave as it is).
# PostgreSQL: ON COMMIT DELETE ROWS empties the tables by truncation when a chunk commits (no
# dead tuples piling up across chunks); SQLite has no such clause, CLEAR_STAGING does it there.
STAGED_ROW_COLUMNS = ("line", "profile_id", "external_id", "email", "email_key", "phone",
                      "first_name", "last_name", "locale", "attributes", "opt_all", "opt_email",
                      "opt_sms", "opt_push")
STAGED_TOKEN_COLUMNS = ("line", "token", "app_id", "platform")
STAGED_SUBSCRIPTION_COLUMNS = ("line", "service_id", "state")
_ROWS_BODY = """
    line {int} PRIMARY KEY, profile_id {int} NOT NULL, external_id TEXT, email TEXT,
    email_key TEXT, phone TEXT, first_name TEXT, last_name TEXT, locale TEXT, attributes {json},
    opt_all SMALLINT, opt_email SMALLINT, opt_sms SMALLINT, opt_push SMALLINT
"""
_TOKENS_BODY = "line {int} NOT NULL, token TEXT NOT NULL, app_id TEXT NOT NULL, " \
               "platform TEXT NOT NULL"
_SUBSCRIPTIONS_BODY = "line {int} NOT NULL, service_id {int} NOT NULL, state TEXT NOT NULL"


def create_staging(dialect: str) -> list[str]:
    types = ({"int": "BIGINT", "json": "JSON"} if dialect == "postgresql"
             else {"int": "INTEGER", "json": "TEXT"})
    suffix = " ON COMMIT DELETE ROWS" if dialect == "postgresql" else ""
    return [
        *DROP_STAGING,
        f"CREATE TEMPORARY TABLE import_rows ({_ROWS_BODY.format(**types)}){suffix}",
        f"CREATE TEMPORARY TABLE import_tokens ({_TOKENS_BODY.format(**types)}){suffix}",
        "CREATE TEMPORARY TABLE import_subscriptions "
        f"({_SUBSCRIPTIONS_BODY.format(**types)}){suffix}",
    ]


DROP_STAGING = ["DROP TABLE IF EXISTS import_rows", "DROP TABLE IF EXISTS import_tokens",
                "DROP TABLE IF EXISTS import_subscriptions"]
CLEAR_STAGING = ["DELETE FROM import_rows", "DELETE FROM import_tokens",
                 "DELETE FROM import_subscriptions"]

# --- Existing profiles -----------------------------------------------------------------------

_NOW = sa.bindparam("now", type_=UTCDateTime)

# Updated rows change the fields they give: an empty cell (NULL here) keeps the stored value, and
# custom attributes are merged key by key into the stored ones. The external id never changes:
# a row either matched by it or has none. Profiles where nothing given differs are not written
# at all (a nightly re-import of an unchanged CRM costs reads, not a rewrite of every row and
# index entry); their updated_at stays as it is.
_UPDATE_PROFILES = """
    UPDATE profiles SET
        email = COALESCE(r.email, profiles.email),
        email_key = COALESCE(r.email_key, profiles.email_key),
        phone = COALESCE(r.phone, profiles.phone),
        first_name = COALESCE(r.first_name, profiles.first_name),
        last_name = COALESCE(r.last_name, profiles.last_name),
        locale = COALESCE(r.locale, profiles.locale),
        attributes = CASE WHEN r.attributes IS NULL THEN profiles.attributes
                          ELSE {merged} END,
        updated_at = :now
    FROM import_rows AS r
    WHERE profiles.id = r.profile_id
      AND ((r.email IS NOT NULL AND COALESCE(r.email <> profiles.email, true))
           OR (r.phone IS NOT NULL AND COALESCE(r.phone <> profiles.phone, true))
           OR (r.first_name IS NOT NULL AND COALESCE(r.first_name <> profiles.first_name, true))
           OR (r.last_name IS NOT NULL AND COALESCE(r.last_name <> profiles.last_name, true))
           OR (r.locale IS NOT NULL AND COALESCE(r.locale <> profiles.locale, true))
           OR (r.attributes IS NOT NULL AND {attributes_differ}))
"""
# json_patch (RFC 7396) treats a stored JSON null like an empty object, and leaves the text of an
# object it does not change as json() writes it. PostgreSQL's `||` does not (null || object is
# an array), hence the explicit object check; `json` has no `||` and no `@>`, jsonb has both.
_PG_STORED = """(CASE WHEN json_typeof(profiles.attributes) = 'object'
                     THEN CAST(profiles.attributes AS jsonb) ELSE CAST('{}' AS jsonb) END)"""
UPDATE_PROFILES = {
    "sqlite": sa.text(_UPDATE_PROFILES.format(
        merged="json_patch(COALESCE(profiles.attributes, '{}'), r.attributes)",
        attributes_differ="json_patch(COALESCE(profiles.attributes, '{}'), r.attributes) "
                          "IS NOT json(profiles.attributes)")).bindparams(_NOW),
    "postgresql": sa.text(_UPDATE_PROFILES.format(
        merged=f"CAST({_PG_STORED} || CAST(r.attributes AS jsonb) AS json)",
        attributes_differ=f"NOT ({_PG_STORED} @> CAST(r.attributes AS jsonb))",
    )).bindparams(_NOW),
}

# Addresses an update gives a profile that it did not hold: a suppression may apply to them.
# Only asked when the database has suppression records at all.
CHANGED_ADDRESSES = sa.text("""
    SELECT r.profile_id,
           CASE WHEN p.email_key IS NULL OR p.email_key <> r.email_key THEN r.email END,
           CASE WHEN p.email_key IS NULL OR p.email_key <> r.email_key THEN r.email_key END,
           CASE WHEN p.phone IS NULL OR p.phone <> r.phone THEN r.phone END
    FROM import_rows AS r JOIN profiles AS p ON p.id = r.profile_id
    WHERE ((r.email_key IS NOT NULL AND (p.email_key IS NULL OR p.email_key <> r.email_key))
           OR (r.phone IS NOT NULL AND (p.phone IS NULL OR p.phone <> r.phone)))
""")
ANY_SUPPRESSION = sa.text("SELECT 1 FROM suppressions LIMIT 1")

# --- Push tokens -----------------------------------------------------------------------------

# A token the profile already holds for the app is left as it is (the unique index decides);
# RETURNING names the tokens that are new to their profile, for the suppression check.
INSERT_TOKENS = sa.text("""
    INSERT INTO push_tokens (profile_id, token, app_id, platform, created_at)
    SELECT r.profile_id, t.token, t.app_id, t.platform, :now
    FROM import_tokens AS t JOIN import_rows AS r ON r.line = t.line
    WHERE true
    ON CONFLICT DO NOTHING
    RETURNING profile_id, token
""").bindparams(_NOW)

# --- Opt-outs --------------------------------------------------------------------------------

# The four opt-out columns unpivoted into (profile, scope) pairs; value 1 opts out, 0 opts in.
_WANTED = """
    SELECT profile_id, 'all' AS scope FROM import_rows WHERE opt_all = {v}
    UNION ALL SELECT profile_id, 'email' FROM import_rows WHERE opt_email = {v}
    UNION ALL SELECT profile_id, 'sms' FROM import_rows WHERE opt_sms = {v}
    UNION ALL SELECT profile_id, 'push' FROM import_rows WHERE opt_push = {v}
"""

# Opting out is an insert that skips what is already there; RETURNING yields exactly the
# opt-outs that are new, one ledger event each. (The outer `WHERE true` keeps SQLite from reading
# ON CONFLICT as a join constraint.)
INSERT_OPT_OUTS = sa.text(f"""
    INSERT INTO opt_outs (profile_id, scope, at, source, actor, note)
    SELECT wanted.profile_id, wanted.scope, :now, :source, :actor, :note
    FROM ({_WANTED.format(v=1)}) AS wanted
    WHERE true
    ON CONFLICT DO NOTHING
    RETURNING profile_id, scope
""").bindparams(_NOW)

# Opting back in deletes the opt-out; RETURNING yields the ones that existed.
DELETE_OPT_OUTS = sa.text(f"""
    DELETE FROM opt_outs WHERE (profile_id, scope) IN ({_WANTED.format(v=0)})
    RETURNING profile_id, scope
""")

# --- Subscriptions ---------------------------------------------------------------------------

# Every consent change of a profile holds its row lock (consent/sql.py LOCK_PROFILE): the profiles
# whose subscriptions the chunk sets are locked before their states are read, in id order so two
# imports cannot deadlock, so a concurrent subscribe cannot slip between our read of the old state
# and our write. Opt-outs need no lock: their INSERT/DELETE ... RETURNING report exactly what
# changed. (PostgreSQL only; SQLite's write lock is global.)
LOCK_SUBSCRIBERS = sa.text("""
    SELECT p.id FROM profiles AS p
    WHERE p.id IN (SELECT r.profile_id FROM import_subscriptions AS w
                   JOIN import_rows AS r ON r.line = w.line)
    ORDER BY p.id
    FOR UPDATE
""")

# The subscription changes of one service, read before they are written so each ledger event has
# its old state. Rows whose subscription is already in the wanted state are no change.
SUBSCRIPTION_CHANGES = sa.text("""
    SELECT r.profile_id, s.state AS old_state, w.state AS new_state
    FROM import_subscriptions AS w
    JOIN import_rows AS r ON r.line = w.line
    LEFT JOIN subscriptions AS s
           ON s.profile_id = r.profile_id AND s.service_id = w.service_id
    WHERE w.service_id = :service_id AND (s.state IS NULL OR s.state <> w.state)
""")

# Existing subscriptions move to the wanted state. A (re)subscription starts a new validity
# period; an unsubscription or a pending state has none; an expired one keeps its end date.
UPDATE_SUBSCRIPTIONS = sa.text("""
    UPDATE subscriptions SET
        state = w.state,
        state_at = :now,
        subscribed_at = CASE WHEN w.state = 'subscribed' THEN :now
                             ELSE subscriptions.subscribed_at END,
        expires_at = CASE WHEN w.state = 'subscribed' THEN :expires_at
                          WHEN w.state = 'expired' THEN subscriptions.expires_at END
    FROM import_subscriptions AS w JOIN import_rows AS r ON r.line = w.line
    WHERE subscriptions.profile_id = r.profile_id AND subscriptions.service_id = w.service_id
      AND w.service_id = :service_id AND subscriptions.state <> w.state
""").bindparams(_NOW, sa.bindparam("expires_at", type_=UTCDateTime))

# Profiles without a subscription to the service get one, in the wanted state.
INSERT_SUBSCRIPTIONS = sa.text("""
    INSERT INTO subscriptions (profile_id, service_id, state, state_at, subscribed_at,
                               expires_at, created_at)
    SELECT r.profile_id, w.service_id, w.state, :now,
           CASE WHEN w.state = 'subscribed' THEN :now END,
           CASE WHEN w.state = 'subscribed' THEN :expires_at END,
           :now
    FROM import_subscriptions AS w JOIN import_rows AS r ON r.line = w.line
    WHERE w.service_id = :service_id
      AND NOT EXISTS (SELECT 1 FROM subscriptions AS s
                      WHERE s.profile_id = r.profile_id AND s.service_id = w.service_id)
""").bindparams(_NOW, sa.bindparam("expires_at", type_=UTCDateTime))

ALL_SERVICES = sa.select(services.c.id, services.c.slug, services.c.channel,
                         services.c.validity_days)

# --- Export ----------------------------------------------------------------------------------

COUNT_PROFILES = sa.select(sa.func.count()).select_from(profiles)

# Every profile in id order, streamed through a server-side cursor (PostgreSQL) or the sqlite3
# cursor: the export never holds more than one batch in memory.
ALL_PROFILES = sa.select(
    profiles.c.id, profiles.c.external_id, profiles.c.email, profiles.c.phone,
    profiles.c.first_name, profiles.c.last_name, profiles.c.locale, profiles.c.attributes,
    profiles.c.created_at,
).order_by(profiles.c.id)

# The consent state of one streamed batch, read by id range: one index range scan per table
# instead of one query per profile, and no parameter list as long as the batch.
_IN_RANGE = sa.bindparam("low"), sa.bindparam("high")
OPT_OUTS_IN_RANGE = sa.select(opt_outs.c.profile_id, opt_outs.c.scope).where(
    opt_outs.c.profile_id.between(*_IN_RANGE))
SUBSCRIPTIONS_IN_RANGE = (
    sa.select(subscriptions.c.profile_id, services.c.slug, subscriptions.c.state)
    .join(services, services.c.id == subscriptions.c.service_id)
    .where(subscriptions.c.profile_id.between(*_IN_RANGE))
    .order_by(subscriptions.c.profile_id, services.c.slug)
)
TOKENS_IN_RANGE = (
    sa.select(push_tokens.c.profile_id, push_tokens.c.token, push_tokens.c.app_id,
              push_tokens.c.platform)
    .where(push_tokens.c.profile_id.between(*_IN_RANGE))
    .order_by(push_tokens.c.profile_id, push_tokens.c.id)
)

# The custom attribute names in use, for the export's header: one pass over the JSON objects
# in the database, not over the rows in Python.
ATTRIBUTE_NAMES = {
    "sqlite": sa.text("""
        SELECT DISTINCT j.key FROM profiles, json_each(profiles.attributes) AS j
        WHERE json_type(profiles.attributes) = 'object' ORDER BY 1
    """),
    "postgresql": sa.text("""
        SELECT DISTINCT json_object_keys(attributes) FROM profiles
        WHERE json_typeof(attributes) = 'object' ORDER BY 1
    """),
}
