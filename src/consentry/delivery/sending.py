"""The sending loop: claim a batch, re-check it, render it, hand it to the channel's transport,
record what happened. Every target row moves pending -> claimed -> in_flight -> sent | failed
(or excluded_at_send) in the database, so a killed sender can be restarted safely:

- `claimed` rows were re-checked but never handed to a transport: back to pending.
- `in_flight` rows were handed over and nobody recorded the answer: `unknown`, reported and never
  sent again (a message sent twice is worse than one we cannot vouch for).

Several loops (tasks of one process, or `consentry worker` processes on PostgreSQL) can work on
one delivery: claims use FOR UPDATE SKIP LOCKED, so each row goes to exactly one of them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from consentry.delivery import service as deliveries
from consentry.delivery import sql
from consentry.delivery.content import SAMPLE_PROFILE, Templates
from consentry.delivery.transport import Outcome, Outgoing, Transport
from consentry.domain import quarantine as qrules
from consentry.domain.addresses import Address
from consentry.domain.channels import Channel
from consentry.domain.errors import ConsentryError
from consentry.domain.ledger import Origin, Source
from consentry.quarantine import service as quarantine
from consentry.settings import Settings
from consentry.store.schema import profiles, services
from consentry.store.schema import quarantine as quarantine_table
from consentry.store.types import utcnow
from consentry.tokens import Signer

WORKER_LEASE = timedelta(minutes=5)


@dataclass
class SendStats:
    sent: int = 0
    failed: int = 0
    excluded_at_send: int = 0
    unknown: int = 0  # fates nobody knows after a crash (found when this run started)
    requeued: int = 0  # claimed but never handed over before a crash: back to pending
    failures: dict[str, int] = field(default_factory=dict)
    started: datetime = field(default_factory=utcnow)

    @property
    def rate(self) -> float:
        seconds = (utcnow() - self.started).total_seconds()
        return self.sent / seconds if seconds > 0 else 0.0


class Worker:
    """A sending process's identity and heartbeat in the `workers` table."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.id = f"{self.host}:{self.pid}:{secrets.token_hex(4)}"

    def __enter__(self) -> Worker:
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(sql.INSERT_WORKER, {"id": self.id, "host": self.host, "pid": self.pid,
                                             "started_at": now, "heartbeat_at": now})
        return self

    def beat(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(sql.HEARTBEAT, {"worker_id": self.id, "now": utcnow()})

    def __exit__(self, *exc: object) -> None:
        with self.engine.begin() as conn:
            conn.execute(sql.DELETE_WORKER, {"worker_id": self.id})


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(conn: sa.Connection, delivery_id: int, now: datetime) -> tuple[int, int]:
    """Settle the claims of workers that are gone: (requeued, unknown)."""
    host = socket.gethostname()
    live = []
    for row in conn.execute(sa.select(sql.workers)).mappings():
        if row["heartbeat_at"] < now - WORKER_LEASE:
            continue
        if row["host"] == host and not _pid_alive(row["pid"]):
            continue
        live.append(row["id"])
    t = sql.t
    gone = sa.or_(t.c.worker.is_(None), t.c.worker.not_in(live)) if live else sa.true()
    requeued = conn.execute(sql.recover_claims(delivery_id, gone)).rowcount
    unknown = conn.execute(sql.recover_in_flight(delivery_id, gone)).rowcount
    return requeued, unknown


@dataclass(frozen=True)
class _Batch:
    messages: list[Outgoing]
    addresses: dict[int, Address]  # target id -> address, for the quarantine feedback
    excluded: int


class DeliveryRun:
    """One delivery being sent by this process."""

    def __init__(self, engine: sa.Engine, settings: Settings, delivery_id: int,
                 transport: Transport, worker: Worker) -> None:
        self.engine = engine
        self.settings = settings
        self.delivery_id = delivery_id
        self.transport = transport
        self.worker = worker
        with engine.begin() as conn:
            self.delivery = deliveries.get(conn, delivery_id)
            self.signer = Signer.for_database(conn, settings)
            self.service = None
            if self.delivery["service_id"] is not None:
                self.service = conn.execute(sa.select(services).where(
                    services.c.id == self.delivery["service_id"])).mappings().one()
        self.channel = Channel(self.delivery["channel"])
        self.templates = Templates(deliveries.content_of(self.delivery))
        self.marketing = self.delivery["kind"] == "marketing"
        self.skip_locked = engine.dialect.name == "postgresql"
        self.batch_size = max(1, settings.sending.batch_size)
        # The last target id this run claimed: the next claim starts after it. Rows behind it
        # that went back to pending (another worker's recovery) are found by one more sweep
        # from the start before the run ends.
        self.first_id = self.cursor = sql.id_range(delivery_id)[0]

    # --- database steps (run in a thread) --------------------------------------------------

    def _prepare(self) -> _Batch | None:
        """Claim a batch, re-check it, render it. None when nothing is left to claim."""
        now = utcnow()
        with self.engine.begin() as conn:
            state = conn.execute(sql.DELIVERY, {"delivery_id": self.delivery_id}).mappings(
            ).one()["state"]
            if state != "sending":
                return None  # paused or finished elsewhere
            rows = self._claim(conn, now)
            if not rows and self.cursor != self.first_id:
                self.cursor = self.first_id  # the sweep from the start
                rows = self._claim(conn, now)
            if not rows:
                return None
            ids = [r["id"] for r in rows]
            self.cursor = max(self.cursor, *ids)
            excluded = {}
            if self.delivery["audience"] != "proof":
                excluded = {r.id: r.reason for r in conn.execute(
                    sql.recheck(self.delivery, ids, now)) if r.reason}
            if excluded:
                conn.execute(sql.MARK_FROM_CLAIMED, [
                    {"target_id": tid, "new_state": "excluded_at_send", "new_reason": reason,
                     "new_detail": "excluded when its batch was about to be sent",
                     "new_sent_at": None, "new_message_id": None}
                    for tid, reason in excluded.items()])
            keep = [r for r in rows if r["id"] not in excluded]
            people = {p["id"]: dict(p) for p in conn.execute(sa.select(profiles).where(
                profiles.c.id.in_([r["profile_id"] for r in keep if r["profile_id"]])
            )).mappings()} if keep else {}
            messages = [self._render(r, people.get(r["profile_id"])) for r in keep]
            if keep:
                conn.execute(sql.HAND_OVER, {"ids": [r["id"] for r in keep]})
        addresses = {r["id"]: Address(self.channel, r["address"], r["address_key"])
                     for r in keep}
        return _Batch(messages, addresses, len(excluded))

    def _claim(self, conn: sa.Connection, now: datetime) -> list[Any]:
        return list(conn.execute(sql.claim_batch(
            self.delivery_id, self.worker.id, self.batch_size, now, self.skip_locked,
            after_id=self.cursor, state="claimed")).mappings().all())

    def _render(self, row: Any, profile: dict[str, Any] | None) -> Outgoing:
        base = self.settings.base_url.rstrip("/")
        target_id, profile_id = row["id"], row["profile_id"]
        slug = self.service["slug"] if self.service else None
        if profile_id is None:  # a proof to a seed address
            variables = {"profile": SAMPLE_PROFILE, "unsubscribe_url": f"{base}/u/proof",
                         "preferences_url": f"{base}/p/proof"}
        else:
            token = self.signer.unsubscribe_token(profile_id, self.delivery_id, slug,
                                                  self.channel.value)
            variables = {
                "profile": {k: profile.get(k) if profile else None for k in SAMPLE_PROFILE},
                "unsubscribe_url": f"{base}/u/{token}",
                "preferences_url": f"{base}/p/{self.signer.preferences_token(profile_id)}",
            }
            if profile and variables["profile"]["attributes"] is None:
                variables["profile"]["attributes"] = {}
        rendered = self.templates.render(variables)
        headers: dict[str, str] = {}
        envelope_from = message_id = None
        if self.channel is Channel.EMAIL:
            domain = self.settings.bounce_domain
            envelope_from = (f"{self.signer.address_tag('b', self.delivery_id, target_id)}"
                             f"@{domain}")
            message_id = f"<{self.delivery_id}.{target_id}.{secrets.token_hex(6)}@{domain}>"
            if self.marketing and profile_id is not None:
                mailto = f"{self.signer.address_tag('u', self.delivery_id, target_id)}@{domain}"
                headers["List-Unsubscribe"] = (f"<{variables['unsubscribe_url']}>, "
                                               f"<mailto:{mailto}>")
                headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
                list_name = slug or f"delivery-{self.delivery_id}"
                label = self.service["label"] if self.service else self.delivery["name"]
                headers["List-Id"] = f"{_phrase(label)} <{list_name}.{domain}>"
        return Outgoing(target_id=target_id, address=row["address"], subject=rendered.subject,
                        text=rendered.text, html=rendered.html, headers=headers,
                        envelope_from=envelope_from, message_id=message_id)

    def _record(self, batch: _Batch, outcomes: list[Outcome], stats: SendStats) -> None:
        now = utcnow()
        origin = Origin(source=Source.BOUNCE, actor=f"worker:{self.worker.id}")
        marks = []
        failed: list[tuple[Outcome, Address]] = []
        accepted_keys: list[str] = []
        for o in outcomes:
            if o.accepted:
                marks.append({"target_id": o.target_id, "new_state": "sent",
                              "new_reason": None, "new_detail": o.detail or None,
                              "new_sent_at": now, "new_message_id": o.provider_id})
                accepted_keys.append(batch.addresses[o.target_id].key)
            else:
                reason = o.failure_reason or "not_defined"
                marks.append({"target_id": o.target_id, "new_state": "failed",
                              "new_reason": reason, "new_detail": o.detail or None,
                              "new_sent_at": None, "new_message_id": o.provider_id})
                if o.about_address:
                    failed.append((o, batch.addresses[o.target_id]))
                stats.failed += 1
                stats.failures[reason] = stats.failures.get(reason, 0) + 1
        with self.engine.begin() as conn:
            if marks:
                conn.execute(sql.MARK, marks)
            for outcome, address in failed:
                event = qrules.Failure(outcome.failure_reason or "not_defined",
                                       outcome.failure_class)
                quarantine.apply(conn, address, event, Origin(
                    source=origin.source, actor=origin.actor,
                    evidence={"delivery": self.delivery_id, "target": outcome.target_id,
                              "reply": outcome.detail}), self.settings.quarantine, now)
            if accepted_keys:
                # A success puts an erroneous address back to valid; only those few rows are
                # read, not one per message.
                erroneous = conn.execute(sa.select(quarantine_table.c.address_key).where(
                    quarantine_table.c.channel == self.channel.value,
                    quarantine_table.c.status == "erroneous",
                    quarantine_table.c.address_key.in_(accepted_keys))).scalars().all()
                for key in erroneous:
                    quarantine.apply(conn, Address(self.channel, key, key), qrules.Success(),
                                     origin, self.settings.quarantine, now)
        stats.sent += sum(1 for o in outcomes if o.accepted)
        stats.excluded_at_send += batch.excluded
        self.worker.beat()

    # --- the loop --------------------------------------------------------------------------

    async def run(self, stats: SendStats,
                  progress: Callable[[SendStats], None] | None = None) -> None:
        """Send until nothing is left to claim. The next batch is claimed and re-checked while
        the current one is being sent."""
        upcoming = asyncio.create_task(asyncio.to_thread(self._prepare))
        while True:
            batch = await upcoming
            if batch is None:
                break
            upcoming = asyncio.create_task(asyncio.to_thread(self._prepare))
            outcomes = await self.transport.send(batch.messages) if batch.messages else []
            missing = {m.target_id for m in batch.messages} - {o.target_id for o in outcomes}
            if missing:
                raise ConsentryError(f"the {self.channel.value} transport gave no answer for "
                                     f"{len(missing)} messages")
            await asyncio.to_thread(self._record, batch, outcomes, stats)
            if progress:
                progress(stats)


def _phrase(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def start(conn: sa.Connection, delivery_id: int, now: datetime | None = None, *,
          resume_paused: bool = True) -> dict[str, Any]:
    """Mark an analysed delivery as sending (idempotent for one already sending). A paused one
    is resumed only when asked (`delivery send`); background senders leave it paused."""
    delivery = deliveries.get(conn, delivery_id, for_update=True)
    if delivery["state"] == "draft":
        raise ConsentryError(f"delivery {delivery_id} has not been analysed: run "
                             f"`consentry delivery analyze {delivery_id}` first")
    if delivery["state"] == "done":
        return delivery
    if delivery["state"] == "analyzed" or (delivery["state"] == "paused" and resume_paused):
        conn.execute(sql.UPDATE_DELIVERY, {"delivery_id": delivery_id, "state": "sending",
                                           "started_at": delivery["started_at"] or now
                                           or utcnow()})
    return deliveries.get(conn, delivery_id)


def pause(conn: sa.Connection, delivery_id: int) -> bool:
    """Stop a sending delivery after the batches already handed to the transport (its
    senders see the state before each claim); False when it was paused already."""
    delivery = deliveries.get(conn, delivery_id, for_update=True)
    if delivery["state"] not in ("sending", "paused"):
        raise ConsentryError(f"delivery {delivery_id} is {delivery['state']}: only a sending "
                             "delivery can be paused")
    if delivery["state"] == "paused":
        return False
    conn.execute(sql.UPDATE_DELIVERY, {"delivery_id": delivery_id, "state": "paused"})
    return True


def finish_if_done(conn: sa.Connection, delivery_id: int) -> bool:
    left = conn.execute(sql.left_to_send(delivery_id)).scalar_one()
    if left:
        return False
    conn.execute(sql.UPDATE_DELIVERY.where(sql.d.c.state == "sending"),
                 {"delivery_id": delivery_id, "state": "done", "finished_at": utcnow()})
    return True


def send(engine: sa.Engine, settings: Settings, delivery_id: int, transport: Transport, *,
         loops: int = 1, progress: Callable[[SendStats], None] | None = None,
         resume_paused: bool = True) -> SendStats:
    """Send a delivery from this process with `loops` concurrent claim-send loops. With
    resume_paused False (background workers), a delivery paused meanwhile stays paused."""
    stats = SendStats()
    with Worker(engine) as worker:
        with engine.begin() as conn:
            start(conn, delivery_id, resume_paused=resume_paused)
            stats.requeued, stats.unknown = recover(conn, delivery_id, utcnow())

        async def main() -> None:
            try:
                runs = [DeliveryRun(engine, settings, delivery_id, transport, worker)
                        for _ in range(max(1, loops))]
                await asyncio.gather(*(r.run(stats, progress) for r in runs))
            finally:
                await transport.aclose()

        asyncio.run(main())
        with engine.begin() as conn:
            finish_if_done(conn, delivery_id)
    return stats


def sendable(conn: sa.Connection) -> list[int]:
    """Deliveries in state `sending` with rows left to claim, for `consentry worker`."""
    return list(conn.execute(sql.SENDABLE).scalars())
