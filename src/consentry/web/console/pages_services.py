"""Console: services with their subscribers, pending confirmations and the subscription
changes over time (chart)."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from consentry.consent import service as consent
from consentry.domain.consent import SubscriptionState
from consentry.domain.errors import ConsentryError
from consentry.store.types import utcnow
from consentry.web.console import charts
from consentry.web.console import sql as csql
from consentry.web.console.auth import ConsoleRoute, Reader, render
from consentry.web.deps import state

router = APIRouter(route_class=ConsoleRoute)

DAYS = 90
STATES = tuple(s.value for s in SubscriptionState)
# Colors per new state, so "unsubscribed" is red on every page.
STATE_COLORS = {"subscribed": charts.PALETTE[2], "pending": charts.PALETTE[0],
                "unsubscribed": charts.PALETTE[1], "expired": charts.PALETTE[3]}


@router.get("/console/services")
def services_page(request: Request, principal: Reader) -> Response:
    with state(request).engine.connect() as conn:
        rows = consent.list_services(conn)
    chart = charts.bar_chart([(r["slug"], r["subscriptions"]["subscribed"]) for r in rows],
                             title="Subscribers per service", empty="No services yet.")
    return render(request, "services.html", principal, section="services", rows=rows,
                  chart=chart)


@router.get("/console/services/{slug}")
def service_page(request: Request, principal: Reader, slug: str,
                 state_filter: Annotated[str, Query(alias="state")] = "") -> Response:
    if state_filter and state_filter not in STATES:
        raise ConsentryError(f"unknown state {state_filter!r}")
    now = utcnow()
    since = (now - timedelta(days=DAYS - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    days = [(since + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(DAYS)]
    with state(request).engine.connect() as conn:
        service = consent.get_service(conn, slug)
        counts = next(r["subscriptions"] for r in consent.list_services(conn)
                      if r["slug"] == slug)
        changes = conn.execute(csql.service_changes_per_day(conn.dialect.name, slug, since)
                               ).all()
        people = [dict(r) for r in conn.execute(
            csql.subscribers(service.id, state_filter or None, 100)).mappings()]
    per_state: dict[str, dict[str, int]] = defaultdict(dict)
    for day, new_state, n in changes:
        per_state[new_state or "none"][str(day)] = n
    series = [charts.Series(s, [per_state[s].get(day, 0) for day in days], STATE_COLORS[s])
              for s in STATES if s in per_state]
    chart = {
        "states": charts.bar_chart([(s, counts[s]) for s in STATES],
                                   title=f"Subscriptions to {slug} by state",
                                   colors=[STATE_COLORS[s] for s in STATES]),
        "changes": charts.line_chart(
            [d[5:] for d in days], series,
            title=f"Subscription changes per day (last {DAYS} days, UTC)", width=1000,
            empty="No subscription changes in this period."),
    }
    return render(request, "service.html", principal, section="services", service=service,
                  counts=counts, chart=chart, people=people, states=STATES,
                  state_filter=state_filter)
