"""Operators (argon2 passwords, lockout), console sessions, API keys and the audit log.

Every function takes a Connection: the caller owns the transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from consentry.auth import sql
from consentry.domain.errors import ConsentryError
from consentry.domain.roles import Role, parse_role
from consentry.store.types import utcnow

_HASHER = PasswordHasher()
# A hash of a password nobody has: a login for an unknown operator is checked against it, so
# an unknown login takes as long as a wrong password (no way to find out who has an account).
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))

MIN_PASSWORD = 10
FAILURES_BEFORE_LOCK = 5
LOCK_FOR = timedelta(minutes=15)
SESSION_FOR = timedelta(hours=8)
KEY_PREFIX = "csk"


@dataclass(frozen=True)
class Principal:
    """Who is acting: an operator (console) or an API key."""

    kind: str  # operator | apikey | cli
    name: str
    role: Role
    id: int | None = None

    @property
    def actor(self) -> str:
        """The ledger's and audit log's name for them."""
        return f"{self.kind}:{self.name}"


class LoginFailed(ConsentryError):
    """Wrong login or password, or a locked or disabled account (the message never says
    which)."""


# --- operators -------------------------------------------------------------------------------

def create_operator(conn: sa.Connection, login: str, password: str, role: Role | str,
                    actor: str, now: datetime | None = None) -> int:
    now = now or utcnow()
    login = login.strip()
    if not login or len(login) > 255 or any(c.isspace() for c in login):
        raise ConsentryError("a login is 1 to 255 characters without spaces")
    if len(password) < MIN_PASSWORD:
        raise ConsentryError(f"the password needs at least {MIN_PASSWORD} characters")
    role = parse_role(str(role))
    if conn.execute(sql.OPERATOR_BY_LOGIN, {"login": login}).first() is not None:
        raise ConsentryError(f"an operator {login!r} exists already")
    operator_id = conn.execute(sql.INSERT_OPERATOR, {
        "login": login, "password_hash": _HASHER.hash(password), "role": role.value,
        "created_at": now, "failed_logins": 0}).scalar_one()
    audit(conn, actor, "operator.create", f"operator:{login}", {"role": role.value}, now=now)
    return int(operator_id)


def list_operators(conn: sa.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(sql.LIST_OPERATORS).mappings()]


def login(conn: sa.Connection, login_name: str, password: str, *, ip: str | None = None,
          user_agent: str | None = None, now: datetime | None = None) -> tuple[str, Principal]:
    """Check a login; on success a new session token (for the cookie) and the operator.
    After FAILURES_BEFORE_LOCK failures in a row the account is locked for LOCK_FOR."""
    now = now or utcnow()
    row = conn.execute(sql.OPERATOR_BY_LOGIN_FOR_UPDATE, {"login": login_name.strip()}
                       ).mappings().first()
    if row is None:
        _verify(_DUMMY_HASH, password)
        audit(conn, "anonymous", "login.failed", f"operator:{login_name[:100]}", None, ip, now)
        raise LoginFailed("wrong login or password")
    locked = row["locked_until"] is not None and row["locked_until"] > now
    ok = _verify(row["password_hash"], password) and not locked and row["disabled_at"] is None
    if not ok:
        failures = row["failed_logins"] + (0 if locked else 1)
        values: dict[str, Any] = {"failed_logins": failures}
        if failures >= FAILURES_BEFORE_LOCK and not locked:
            values.update(locked_until=now + LOCK_FOR, failed_logins=0)
        conn.execute(sql.UPDATE_OPERATOR.values(**values), {"operator_id": row["id"]})
        audit(conn, "anonymous", "login.failed", f"operator:{row['login']}",
              {"locked": bool(values.get("locked_until")) or locked}, ip, now)
        raise LoginFailed("wrong login or password")
    if _HASHER.check_needs_rehash(row["password_hash"]):
        conn.execute(sql.UPDATE_OPERATOR.values(password_hash=_HASHER.hash(password)),
                     {"operator_id": row["id"]})
    conn.execute(sql.UPDATE_OPERATOR.values(failed_logins=0, locked_until=None,
                                            last_login_at=now), {"operator_id": row["id"]})
    token = secrets.token_urlsafe(32)
    conn.execute(sql.INSERT_SESSION, {"token_hash": _sha256(token), "operator_id": row["id"],
                                      "created_at": now, "expires_at": now + SESSION_FOR,
                                      "ip": ip, "user_agent": (user_agent or "")[:512]})
    principal = Principal("operator", row["login"], Role(row["role"]), row["id"])
    audit(conn, principal.actor, "login", None, None, ip, now)
    return token, principal


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def session(conn: sa.Connection, token: str | None,
            now: datetime | None = None) -> Principal | None:
    """The operator of a session cookie, or None (unknown, expired, disabled)."""
    if not token:
        return None
    now = now or utcnow()
    row = conn.execute(sql.SESSION, {"token_hash": _sha256(token)}).mappings().first()
    if row is None or row["expires_at"] <= now or row["disabled_at"] is not None:
        return None
    return Principal("operator", row["login"], Role(row["role"]), row["operator_id"])


def logout(conn: sa.Connection, token: str) -> None:
    conn.execute(sql.DELETE_SESSION, {"token_hash": _sha256(token)})


# --- API keys --------------------------------------------------------------------------------

def create_api_key(conn: sa.Connection, name: str, role: Role | str, actor: str,
                   now: datetime | None = None) -> tuple[int, str]:
    """A new key: (id, the key). The key is shown this once; only its hash is kept."""
    now = now or utcnow()
    name = name.strip()
    if not name or len(name) > 255:
        raise ConsentryError("an API key needs a name (1 to 255 characters)")
    role = parse_role(str(role))
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    key_id = conn.execute(sql.INSERT_KEY, {
        "name": name, "prefix": prefix, "key_hash": _sha256(key), "role": role.value,
        "created_at": now, "created_by": actor}).scalar_one()
    audit(conn, actor, "apikey.create", f"apikey:{name}", {"role": role.value, "id": key_id},
          now=now)
    return int(key_id), key


def authenticate_key(conn: sa.Connection, key: str | None,
                     now: datetime | None = None) -> Principal | None:
    """The API key's principal, or None (malformed, unknown, revoked)."""
    if not key:
        return None
    parts = key.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    row = conn.execute(sql.KEY_BY_PREFIX, {"prefix": parts[1]}).mappings().first()
    if row is None or row["revoked_at"] is not None:
        return None
    if not hmac.compare_digest(row["key_hash"], _sha256(key.strip())):
        return None
    return Principal("apikey", row["name"], Role(row["role"]), row["id"])


def revoke_api_key(conn: sa.Connection, key_id: int, actor: str,
                   now: datetime | None = None) -> bool:
    now = now or utcnow()
    revoked = conn.execute(sql.REVOKE_KEY, {"key_id": key_id, "now": now}).rowcount > 0
    if revoked:
        audit(conn, actor, "apikey.revoke", f"apikey:{key_id}", None, now=now)
    return revoked


def list_api_keys(conn: sa.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(sql.LIST_KEYS).mappings()]


# --- audit log -------------------------------------------------------------------------------

def audit(conn: sa.Connection, actor: str, action: str, target: str | None,
          detail: dict[str, Any] | None = None, ip: str | None = None,
          now: datetime | None = None) -> None:
    """Record an operator's or API client's action that is not a consent change."""
    conn.execute(sql.INSERT_AUDIT, {"at": now or utcnow(), "actor": actor, "action": action,
                                    "target": target, "detail": detail, "ip": ip})


def audit_page(conn: sa.Connection, before: int | None = None,
               limit: int = 100) -> list[dict[str, Any]]:
    rows = conn.execute(sql.AUDIT_PAGE, {"before": before or 2**62, "limit": limit}).mappings()
    return [{**dict(r), "at": r["at"].isoformat()} for r in rows]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
