"""Every SQL statement of the ledger, in one place."""

from __future__ import annotations

import sqlalchemy as sa

from consentry.store.schema import ledger_events as ev
from consentry.store.schema import ledger_heads as heads

# The heads of the partitions an append touches, locked until the transaction ends. Rows are
# locked in partition order so two appends that share partitions cannot deadlock; appends to
# other partitions go on in parallel. (SQLite ignores FOR UPDATE: its write lock is global.)
LOCK_HEADS = (
    sa.select(heads.c.partition, heads.c.seq, heads.c.hash)
    .where(heads.c.partition.in_(sa.bindparam("partitions", expanding=True)))
    .order_by(heads.c.partition)
    .with_for_update()
)

# Appends go through the driver (ledger/service.py explains why), in this column order.
EVENT_COLUMNS = ("partition", "seq", "at", "kind", "source", "actor", "profile_id", "channel",
                 "service", "old_state", "new_state", "wording", "address", "ip", "user_agent",
                 "note", "evidence", "personal_digest", "redacted", "prev_hash", "hash")
COPY_EVENTS = f"COPY ledger_events ({', '.join(EVENT_COLUMNS)}) FROM STDIN"
# A few events (a landing page, a one-click): COPY's extra round trips cost more than it saves.
_PG_VALUES = ", ".join("%s::json" if c == "evidence" else "%s" for c in EVENT_COLUMNS)
INSERT_EVENTS_PG = f"INSERT INTO ledger_events ({', '.join(EVENT_COLUMNS)}) VALUES ({_PG_VALUES})"
INSERT_EVENTS_SQLITE = (f"INSERT INTO ledger_events ({', '.join(EVENT_COLUMNS)}) "
                        f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))})")

UPDATE_HEAD = (
    heads.update()
    .where(heads.c.partition == sa.bindparam("p"))
    .values(seq=sa.bindparam("new_seq"), hash=sa.bindparam("new_hash"))
)

# A profile's history: its own events plus address-level events (quarantine changes) for the
# addresses it holds, oldest first.
def profile_history(profile_id: int, addresses: list[str]) -> sa.Select:
    cond = ev.c.profile_id == profile_id
    if addresses:
        cond = sa.or_(cond, sa.and_(ev.c.profile_id.is_(None), ev.c.address.in_(addresses)))
    return sa.select(ev).where(cond).order_by(ev.c.at, ev.c.id)


# The whole ledger in chain order, for verification; streamed, never loaded at once.
ALL_IN_CHAIN_ORDER = sa.select(ev).order_by(ev.c.partition, ev.c.seq)

ALL_HEADS = sa.select(heads.c.partition, heads.c.seq, heads.c.hash).order_by(heads.c.partition)

ERASED_PROFILES = sa.select(ev.c.profile_id).where(ev.c.kind == "erasure").distinct()

# Erasure: blank the personal fields; the digest that the chain covers stays.
REDACT = (
    ev.update()
    .values(address=None, ip=None, user_agent=None, note=None, evidence=None, redacted=True)
)
