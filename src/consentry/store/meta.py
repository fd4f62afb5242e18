"""Per-database values kept in the `meta` table (generated once, then read back)."""

from __future__ import annotations

import contextlib
import secrets

import sqlalchemy as sa

from consentry.store.schema import meta

SUPPRESSION_KEY = "suppression_key"
SECRET_KEYS = "secret_keys"


def get_or_create(conn: sa.Connection, key: str, nbytes: int = 32) -> str:
    """The value under `key`, generated the first time it is asked for.

    The INSERT can race with another process doing the same; whichever wins, both read back
    the one value that was stored.
    """
    value = conn.execute(sa.select(meta.c.value).where(meta.c.key == key)).scalar()
    if value is not None:
        return value
    with contextlib.suppress(sa.exc.IntegrityError), conn.begin_nested():
        conn.execute(meta.insert(), {"key": key, "value": secrets.token_hex(nbytes)})
    return conn.execute(sa.select(meta.c.value).where(meta.c.key == key)).scalar_one()
