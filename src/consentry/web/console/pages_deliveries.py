"""Console: deliveries. Create one from its content, analyse it (exclusion causes as a chart,
the exclusion log), send it with live progress, and its report (failures by reason, bounce and
complaint rates against their thresholds).

Sending: the button marks the delivery `sending` (delivery.sending.start), which is what
`consentry worker` looks for. When this process has a transport for the channel configured it
also sends right away, in a background thread (at most one per delivery and process); claims
are exclusive, so a worker sending the same delivery at the same time is fine. The progress
page reloads itself every two seconds (a meta refresh: the console runs no scripts) and reads
the target rows' states."""

from __future__ import annotations

import logging
import threading
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response

from consentry.consent import service as consent
from consentry.delivery import content as content_rules
from consentry.delivery import sending
from consentry.delivery import service as deliveries
from consentry.delivery import sql as dsql
from consentry.delivery.transports import transport_for
from consentry.domain import reachability
from consentry.domain.channels import CHANNELS, Channel
from consentry.domain.errors import ConsentryError
from consentry.settings import Settings
from consentry.web.console import charts
from consentry.web.console import sql as csql
from consentry.web.console.auth import ConsoleRoute, Preview, Reader, Writer, render
from consentry.web.deps import AppState, state

router = APIRouter(route_class=ConsoleRoute)
log = logging.getLogger("consentry.console")

LOG_LIMIT = 100
REFRESH_SECONDS = 2
ACTIVE = ("pending", "claimed", "in_flight")
PROGRESS_PARTS = (("sent", "sent", "#1e6b34"), ("failed", "failed", "#a4161a"),
                  ("excluded_at_send", "excluded at send", "#7a4a00"),
                  ("unknown", "unknown", "#4a5560"), ("waiting", "waiting", "#0b5cad"))

STATE_COLORS = {"sent": "#1e6b34", "failed": "#a4161a", "excluded": "#4a5560",
                "excluded_at_send": "#7a4a00", "unknown": "#5b2a86", "pending": "#0b5cad",
                "claimed": "#0b5cad", "in_flight": "#0b5cad"}

_senders: dict[tuple[int, int], threading.Thread] = {}
_senders_lock = threading.Lock()


def start_sender(st: AppState, delivery_id: int, channel: str) -> str | None:
    """Send the delivery from this process in a background thread. None when it is sending
    (started now or before); otherwise why it is left to a worker."""
    try:
        transport = transport_for(channel, st.settings)
    except ConsentryError as exc:
        return str(exc)
    key = (id(st.engine), delivery_id)
    with _senders_lock:
        running = _senders.get(key)
        if running is not None and running.is_alive():
            return None
        thread = threading.Thread(target=_send, args=(st.engine, st.settings, delivery_id,
                                                      transport),
                                  name=f"console-send-{delivery_id}", daemon=True)
        _senders[key] = thread
        thread.start()
    return None


def _send(engine: sa.Engine, settings: Settings, delivery_id: int, transport: Any) -> None:
    try:
        stats = sending.send(engine, settings, delivery_id, transport)
        log.info("delivery %s: %s sent, %s failed", delivery_id, stats.sent, stats.failed)
    except Exception:
        log.exception("sending delivery %s from the console failed; a worker can resume it",
                      delivery_id)


def sender_running(st: AppState, delivery_id: int) -> bool:
    with _senders_lock:
        thread = _senders.get((id(st.engine), delivery_id))
        return thread is not None and thread.is_alive()


@router.get("/console/deliveries")
def deliveries_page(request: Request, principal: Reader) -> Response:
    with state(request).engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(csql.DELIVERIES, {"limit": 200}).mappings()]
    return render(request, "deliveries.html", principal, section="deliveries", rows=rows)


def _new_form(request: Request, principal: Any, status: int = 200, error: str | None = None,
              form: dict[str, Any] | None = None) -> Response:
    with state(request).engine.connect() as conn:
        services = consent.list_services(conn)
    form = form or {"name": "", "channel": "email", "kind": "marketing",
                    "audience": "service", "service": services[0]["slug"] if services else "",
                    "subject": "", "text": "", "html": "", "limit": ""}
    return render(request, "delivery_new.html", principal, status, section="deliveries",
                  services=services, channels=CHANNELS, kinds=deliveries.KINDS, form=form,
                  error=error)


@router.get("/console/deliveries/new")
def new_delivery_form(request: Request, principal: Preview) -> Response:
    return _new_form(request, principal)


@router.post("/console/deliveries")
def create_delivery(request: Request, principal: Writer, name: Annotated[str, Form()] = "",
                    channel: Annotated[str, Form()] = "email",
                    kind: Annotated[str, Form()] = "marketing",
                    audience: Annotated[str, Form()] = "service",
                    service: Annotated[str, Form()] = "",
                    subject: Annotated[str, Form()] = "", text: Annotated[str, Form()] = "",
                    html: Annotated[str, Form()] = "",
                    limit: Annotated[str, Form()] = "") -> Response:
    form = {"name": name, "channel": channel, "kind": kind, "audience": audience,
            "service": service, "subject": subject, "text": text, "html": html,
            "limit": limit}
    st = state(request)
    try:
        if channel not in CHANNELS:
            raise ConsentryError(f"unknown channel {channel!r}")
        if audience not in ("service", "all"):
            raise ConsentryError(f"unknown audience {audience!r}")
        target_limit = int(limit) if limit.strip() else None
        new = deliveries.NewDelivery(
            name=name, channel=Channel(channel), kind=kind,
            service=service or None if audience == "service" else None, audience=audience,
            target_limit=target_limit,
            content=content_rules.Content(subject=subject or None, text=text or None,
                                          html=html or None))
        with st.engine.begin() as conn:
            delivery_id = deliveries.create(conn, st.settings, new, principal.actor)
    except ValueError:
        return _new_form(request, principal, 400, "The limit must be a whole number.", form)
    except ConsentryError as exc:
        return _new_form(request, principal, 400, str(exc), form)
    return RedirectResponse(f"/console/deliveries/{delivery_id}", status_code=303)


@router.get("/console/deliveries/{delivery_id}")
def delivery_page(request: Request, principal: Reader, delivery_id: int,
                  reason: Annotated[str, Query()] = "") -> Response:
    st = state(request)
    with st.engine.connect() as conn:
        delivery = deliveries.get(conn, delivery_id)
        service = (conn.execute(dsql.SERVICE_SLUG, {"service_id": delivery["service_id"]})
                   .scalar()
                   if delivery["service_id"] else None)
        analysed = delivery["state"] != "draft"
        summary = deliveries.summary(conn, delivery_id) if analysed else None
        exclusions = (deliveries.exclusion_log(conn, delivery_id, reason=reason or None,
                                               limit=LOG_LIMIT) if analysed else [])
        report = (deliveries.report(conn, delivery_id, st.settings.feedback)
                  if delivery["state"] in ("sending", "paused", "done") else None)
    chart: dict[str, Any] = {}
    if summary is not None:
        order = [e.value for e in reachability.EXCLUSION_ORDER]
        excluded_count = sum(summary["excluded"].values())
        excluded = sorted(summary["excluded"].items(),
                          key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
        chart["exclusions"] = charts.bar_chart(
            excluded, title="Exclusion causes",
            description=f"{summary['audience']} in the audience, {summary['to_send']} to send; "
                        + ("; ".join(f"{k}: {v}" for k, v in excluded) or "none excluded"),
            colors=[charts.PALETTE[1]], empty="Nobody in the audience is excluded.")
        chart["outcome"] = charts.bar_chart(
            [("to send", summary["audience"] - excluded_count),
             ("excluded", excluded_count)],
            title="Audience after analysis", colors=[charts.PALETTE[2], charts.PALETTE[1]])
    if report is not None:
        states = sorted(report["states"].items())
        chart["states"] = charts.bar_chart(
            states, title="Targets by state",
            colors=[STATE_COLORS.get(state, charts.PALETTE[0]) for state, _ in states])
        chart["failures"] = charts.bar_chart(
            sorted(report["failures"].items(), key=lambda kv: -kv[1]),
            title="Failures by reason", colors=[charts.PALETTE[1]],
            empty="No message failed.")
        feedback = report["feedback"]
        thresholds = st.settings.feedback
        chart["rates"] = charts.rate_bars(
            [("bounce rate", feedback["bounce_rate"], thresholds.bounce_rate_alert),
             ("complaint rate", feedback["complaint_rate"], thresholds.complaint_rate_alert)],
            title="Bounce and complaint rates against their alert thresholds")
    return render(request, "delivery.html", principal, section="deliveries", d=delivery,
                  service=service, summary=summary, exclusions=exclusions, report=report,
                  chart=chart, reason=reason, log_limit=LOG_LIMIT,
                  excluded_count=sum(summary["excluded"].values()) if summary else 0,
                  reasons=[e.value for e in reachability.EXCLUSION_ORDER])


@router.post("/console/deliveries/{delivery_id}/analyze")
def analyze(request: Request, principal: Writer, delivery_id: int) -> Response:
    st = state(request)
    deliveries.analyze(st.engine, st.settings, delivery_id)
    return RedirectResponse(f"/console/deliveries/{delivery_id}", status_code=303)


@router.post("/console/deliveries/{delivery_id}/send")
def send(request: Request, principal: Writer, delivery_id: int) -> Response:
    st = state(request)
    with st.engine.begin() as conn:
        delivery = sending.start(conn, delivery_id)
    if delivery["state"] == "sending":
        start_sender(st, delivery_id, delivery["channel"])
    return RedirectResponse(f"/console/deliveries/{delivery_id}/progress", status_code=303)


@router.get("/console/deliveries/{delivery_id}/progress")
def progress(request: Request, principal: Reader, delivery_id: int) -> Response:
    st = state(request)
    with st.engine.connect() as conn:
        delivery = deliveries.get(conn, delivery_id)
        counts = dict(conn.execute(csql.progress(delivery_id)).all())
    counts["waiting"] = sum(counts.get(s, 0) for s in ACTIVE)
    total = sum(counts.get(key, 0) for key, _, _ in PROGRESS_PARTS)
    done = total - counts["waiting"]
    bar = charts.progress_bar([(label, counts.get(key, 0), color)
                               for key, label, color in PROGRESS_PARTS], total,
                              title=f"Sending progress: {done} of {total} handled")
    why_waiting = None
    if delivery["state"] == "sending" and not sender_running(st, delivery_id):
        try:
            transport_for(delivery["channel"], st.settings)
        except ConsentryError as exc:
            why_waiting = str(exc)
    return render(request, "progress.html", principal, section="deliveries", d=delivery,
                  counts=counts, total=total, handled=done, bar=bar,
                  refresh=REFRESH_SECONDS if delivery["state"] == "sending" else None,
                  why_waiting=why_waiting)
