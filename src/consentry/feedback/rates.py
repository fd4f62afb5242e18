"""Alerting figures: bounce and complaint rates per delivery and per day, against the thresholds
that matter (Adobe's 5% bounce alert; Gmail's bulk-sender spam rate: stay below 0.1%, never
reach 0.3%). The console and the API show these; `consentry feedback rates` prints them."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from consentry.feedback import sql
from consentry.settings import FeedbackSettings
from consentry.store.types import utcnow


@dataclass(frozen=True)
class Rates:
    attempted: int  # sent plus failed at once
    sent: int
    bounces: int  # synchronous failures plus asynchronous bounces (DSNs, webhooks)
    hard_bounces: int
    complaints: int

    @property
    def bounce_rate(self) -> float:
        return self.bounces / self.attempted if self.attempted else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.sent if self.sent else 0.0

    def alerts(self, thresholds: FeedbackSettings) -> list[dict[str, Any]]:
        """Each threshold crossed: metric, value, threshold and level (warning / alert)."""
        found = []
        if self.attempted and self.bounce_rate >= thresholds.bounce_rate_alert:
            found.append({"metric": "bounce_rate", "value": self.bounce_rate,
                          "threshold": thresholds.bounce_rate_alert, "level": "alert"})
        if self.sent and self.complaint_rate >= thresholds.complaint_rate_alert:
            found.append({"metric": "complaint_rate", "value": self.complaint_rate,
                          "threshold": thresholds.complaint_rate_alert, "level": "alert"})
        elif self.sent and self.complaint_rate >= thresholds.complaint_rate_warn:
            found.append({"metric": "complaint_rate", "value": self.complaint_rate,
                          "threshold": thresholds.complaint_rate_warn, "level": "warning"})
        return found

    def to_json(self, thresholds: FeedbackSettings) -> dict[str, Any]:
        return {"attempted": self.attempted, "sent": self.sent, "bounces": self.bounces,
                "hard_bounces": self.hard_bounces, "complaints": self.complaints,
                "bounce_rate": round(self.bounce_rate, 6),
                "complaint_rate": round(self.complaint_rate, 6),
                "alerts": self.alerts(thresholds)}


def thresholds_json(thresholds: FeedbackSettings) -> dict[str, float]:
    return {"bounce_rate_alert": thresholds.bounce_rate_alert,
            "complaint_rate_warn": thresholds.complaint_rate_warn,
            "complaint_rate_alert": thresholds.complaint_rate_alert}


def for_delivery(conn: sa.Connection, delivery_id: int) -> Rates:
    states = dict(conn.execute(sql.delivery_attempts(delivery_id)).all())
    sent, failed = states.get("sent", 0), states.get("failed", 0)
    hard_failed = conn.execute(sql.delivery_hard_failures(delivery_id)).scalar_one()
    bounced = hard = complaints = 0
    for kind, klass, count in conn.execute(sql.delivery_feedback(delivery_id)).all():
        if kind == "complaint":
            complaints += count
        else:
            bounced += count
            hard += count if klass == "hard" else 0
    # A message accepted (sent) and bounced later is one attempt and one bounce.
    return Rates(attempted=sent + failed, sent=sent, bounces=failed + bounced,
                 hard_bounces=hard_failed + hard, complaints=complaints)


def per_day(conn: sa.Connection, days: int = 14,
            now: datetime | None = None) -> list[tuple[str, Rates]]:
    """The last `days` UTC days, oldest first; days without any traffic are left out."""
    now = now or utcnow()
    since = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    dialect = conn.dialect.name
    figures: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for day, state, count in conn.execute(sql.attempts_per_day(dialect, since)).all():
        figures[str(day)][state] += count
    for day, kind, count in conn.execute(sql.feedback_per_day(dialect, since)).all():
        figures[str(day)][kind] += count
    return [(day, Rates(attempted=f["sent"] + f["failed"], sent=f["sent"],
                        bounces=f["failed"] + f["bounce"], hard_bounces=0,
                        complaints=f["complaint"]))
            for day, f in sorted(figures.items())]


def per_day_json(rows: list[tuple[str, Rates]],
                 thresholds: FeedbackSettings) -> list[dict[str, Any]]:
    return [{"day": day, **{k: v for k, v in rates.to_json(thresholds).items()
                            if k != "hard_bounces"}} for day, rates in rows]
