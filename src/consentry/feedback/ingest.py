"""Ingesting many feedback messages (`feedback ingest`, a mailbox's backlog): classification,
pure and CPU-bound, runs in worker processes while this process applies the batches already
classified, in order, one transaction each (feedback.service.apply_batch)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import sqlalchemy as sa

from consentry.domain.feedback import Report
from consentry.feedback.classify import classify
from consentry.feedback.service import Applied, Incoming, apply_batch, message_key
from consentry.settings import Settings
from consentry.tokens import Signer
from consentry.workers import in_order

# Messages applied per transaction: large enough for set-based application, small enough that
# a crash loses little work (ingesting again skips what was stored: every message counts once).
BATCH = 200
# Below this many messages starting worker processes costs more than it saves.
POOL_MIN = 2_000


@dataclass(frozen=True)
class Message:
    raw: bytes
    source: str | None = None
    envelope_to: tuple[str, ...] = ()


@dataclass
class Totals:
    messages: int = 0
    applied: int = 0
    ignored: int = 0
    review: int = 0
    duplicates: int = 0
    changes: int = 0

    def add(self, results: Sequence[Applied]) -> None:
        for result in results:
            self.messages += 1
            self.changes += len(result.changes)
            if result.status == "duplicate":
                self.duplicates += 1
            else:
                setattr(self, result.status, getattr(self, result.status) + 1)

    def to_json(self) -> dict[str, int]:
        return {"messages": self.messages, "applied": self.applied, "ignored": self.ignored,
                "review": self.review, "duplicates": self.duplicates, "changes": self.changes}


def _classify_batch(batch: Sequence[Message]) -> list[Report]:
    return [classify(m.raw, m.envelope_to) for m in batch]


def _batches(messages: Iterable[Message]) -> Iterator[list[Message]]:
    it = iter(messages)
    while batch := list(islice(it, BATCH)):
        yield batch


def ingest(engine: sa.Engine, settings: Settings, signer: Signer,
           messages: Sequence[Message], *, via: str, workers: int | None = None,
           progress: Callable[[int, int], None] | None = None) -> Totals:
    """Classify and apply every message; `progress(done, total)` after each batch."""
    if workers is None:
        workers = (os.cpu_count() or 1) if len(messages) >= POOL_MIN else 1
    totals = Totals()
    for batch, reports in in_order(_classify_batch, _batches(messages), workers,
                                   here=_classify_batch):
        items = [Incoming(report, message_key(m.raw, report), via, m.source, m.raw)
                 for m, report in zip(batch, reports, strict=True)]
        with engine.begin() as conn:
            totals.add(apply_batch(conn, settings, signer, items))
        if progress:
            progress(totals.messages, len(messages))
    return totals
