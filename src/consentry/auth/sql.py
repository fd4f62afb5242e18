"""Every SQL statement of operators, sessions, API keys and the audit log, in one place."""

from __future__ import annotations

import sqlalchemy as sa

from consentry.store.schema import api_keys as k
from consentry.store.schema import audit_log as a
from consentry.store.schema import operator_sessions as s
from consentry.store.schema import operators as o

OPERATOR_BY_LOGIN = sa.select(o).where(o.c.login == sa.bindparam("login"))
# Locked while a login is checked, so two guesses at once cannot both count from the same
# number of failures.
OPERATOR_BY_LOGIN_FOR_UPDATE = OPERATOR_BY_LOGIN.with_for_update()
OPERATOR = sa.select(o).where(o.c.id == sa.bindparam("operator_id"))
INSERT_OPERATOR = o.insert().returning(o.c.id)
UPDATE_OPERATOR = o.update().where(o.c.id == sa.bindparam("operator_id"))
LIST_OPERATORS = sa.select(o.c.id, o.c.login, o.c.role, o.c.created_at, o.c.disabled_at,
                           o.c.last_login_at).order_by(o.c.login)

INSERT_SESSION = s.insert()
# A session and its operator in one read: every console request does this.
SESSION = (sa.select(s.c.operator_id, s.c.expires_at, o.c.login, o.c.role, o.c.disabled_at)
           .select_from(s.join(o, o.c.id == s.c.operator_id))
           .where(s.c.token_hash == sa.bindparam("token_hash")))
DELETE_SESSION = s.delete().where(s.c.token_hash == sa.bindparam("token_hash"))
DELETE_SESSIONS_OF = s.delete().where(s.c.operator_id == sa.bindparam("operator_id"))

# The prefix is unique and indexed: a key is found by it, then compared by hash.
KEY_BY_PREFIX = sa.select(k).where(k.c.prefix == sa.bindparam("prefix"))
INSERT_KEY = k.insert().returning(k.c.id)
REVOKE_KEY = (k.update().where(k.c.id == sa.bindparam("key_id"), k.c.revoked_at.is_(None))
              .values(revoked_at=sa.bindparam("now")))
TOUCH_KEY = k.update().where(k.c.id == sa.bindparam("key_id")).values(
    last_used_at=sa.bindparam("now"))
LIST_KEYS = sa.select(k.c.id, k.c.name, k.c.prefix, k.c.role, k.c.created_at, k.c.created_by,
                      k.c.revoked_at, k.c.last_used_at).order_by(k.c.id)

INSERT_AUDIT = a.insert()
AUDIT_PAGE = (sa.select(a).where(a.c.id < sa.bindparam("before"))
              .order_by(a.c.id.desc()).limit(sa.bindparam("limit")))
