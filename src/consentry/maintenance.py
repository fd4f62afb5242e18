"""The periodic maintenance `consentry maintenance`, `worker` and `serve` run: unconfirmed or
lapsed subscriptions end (double opt-in requests nobody confirmed within
`web.pending_purge_days` are deleted), and quarantine releases that are due by time apply."""

from __future__ import annotations

import sqlalchemy as sa

from consentry.consent import confirmation
from consentry.consent import service as consent
from consentry.quarantine import service as quarantine
from consentry.settings import Settings

EVERY = 60.0  # seconds between runs under `worker` and `serve`


def run(engine: sa.Engine, settings: Settings) -> tuple[int, int]:
    """One run, in one transaction: (subscriptions expired, addresses released). Expired
    counts both the lapsed subscriptions and the purged unconfirmed ones: the ledger records
    each as expired."""
    with engine.begin() as conn:
        expired = consent.expire_subscriptions(conn) + confirmation.purge_pending(conn, settings)
        released = quarantine.release_due(conn, settings.quarantine)
    return expired, released
