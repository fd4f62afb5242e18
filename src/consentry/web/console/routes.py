"""The operator console: login, logout and the dashboard; the other pages live in pages_*.py
and are included here. Routes are defined with their full /console/... paths (the app includes
this router without a prefix)."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response

from consentry.auth import service as auth
from consentry.feedback import rates
from consentry.store.types import utcnow
from consentry.web.console import charts
from consentry.web.console import sql as csql
from consentry.web.console.auth import (
    Admin,
    ConsoleRoute,
    Reader,
    check_csrf,
    clear_session_cookie,
    current,
    render,
    session_token,
    set_session_cookie,
)
from consentry.web.console.pages_deliveries import router as deliveries_router
from consentry.web.console.pages_profiles import router as profiles_router
from consentry.web.console.pages_quarantine import router as quarantine_router
from consentry.web.console.pages_services import router as services_router
from consentry.web.deps import client_ip, state
from consentry.web.security import csrf_ok

router = APIRouter(route_class=ConsoleRoute)

# A failed login answers after this many seconds (against guessing; the lockout after
# auth.FAILURES_BEFORE_LOCK failures does the rest).
FAILED_LOGIN_DELAY = 0.5
LOGIN_FAILED = "Wrong login or password, or the account is locked for a while."

DAYS = 30
SCOPE_LABELS = {"all": "all channels", "email": "email", "sms": "SMS", "push": "push"}
KIND_LABELS = {"opt_out": "opt-outs", "opt_in": "opt-ins", "subscription": "subscriptions",
               "quarantine": "quarantine changes", "suppression": "suppressions",
               "erasure": "erasures"}


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/console") and not target.startswith("//") \
            and "\\" not in target:
        return target
    return "/console"


@router.get("/console/login")
def login_page(request: Request, next: Annotated[str | None, Query()] = None) -> Response:
    if current(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return render(request, "login.html", None, next=_safe_next(next), error=None, login="")


@router.post("/console/login")
def login(request: Request, login: Annotated[str, Form()] = "",
          password: Annotated[str, Form()] = "",
          next: Annotated[str | None, Form()] = None,
          csrf_token: Annotated[str | None, Form()] = None) -> Response:
    target = _safe_next(next)
    if not csrf_ok(request, csrf_token):
        return render(request, "login.html", None, 403, next=target, login=login,
                      error="The form was open for too long. Please sign in again.")
    st = state(request)
    with st.engine.begin() as conn:  # a failure's count and audit entry are kept
        try:
            token, _ = auth.login(conn, login, password, ip=client_ip(request),
                                  user_agent=request.headers.get("user-agent"))
        except auth.LoginFailed:
            token = None
    if token is None:
        time.sleep(FAILED_LOGIN_DELAY)
        return render(request, "login.html", None, 401, next=target, login=login,
                      error=LOGIN_FAILED)
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(request, response, token)
    return response


# Logout needs a session and the CSRF value, not the write permission: viewers log out too.
@router.post("/console/logout")
def logout_any(request: Request, principal: Reader,
               csrf_token: Annotated[str | None, Form()] = None) -> Response:
    check_csrf(request, csrf_token)
    token = session_token(request)
    if token:
        with state(request).engine.begin() as conn:
            auth.logout(conn, token)
            auth.audit(conn, principal.actor, "logout", None, None, client_ip(request))
    response = RedirectResponse("/console/login", status_code=303)
    clear_session_cookie(request, response)
    return response


@router.get("/console")
@router.get("/console/")
def dashboard(request: Request, principal: Reader) -> Response:
    st = state(request)
    now = utcnow()
    since = (now - timedelta(days=DAYS - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    days = [(since + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(DAYS)]
    with st.engine.connect() as conn:
        dialect = conn.dialect.name
        profile_count = conn.execute(csql.PROFILE_COUNT).scalar_one()
        optouts = dict(conn.execute(csql.OPTOUTS_BY_SCOPE).all())
        quarantine_rows = conn.execute(csql.QUARANTINE_BY_STATUS_REASON).all()
        events = conn.execute(csql.events_per_day(dialect, since)).all()
        per_day = rates.per_day(conn, days=DAYS, now=now)
    by_reason: dict[str, int] = defaultdict(int)
    by_status: dict[str, int] = defaultdict(int)
    for status, reason, n in quarantine_rows:
        by_reason[reason or "none"] += n
        by_status[status] += n
    per_kind: dict[str, dict[str, int]] = defaultdict(dict)
    for day, kind, n in events:
        per_kind[kind][str(day)] = n
    thresholds = st.settings.feedback
    labels = [day[5:] for day in days]
    event_series = [charts.Series(KIND_LABELS.get(kind, kind),
                                  [per_kind[kind].get(day, 0) for day in days])
                    for kind in KIND_LABELS if kind in per_kind]
    rate_days = [day[5:] for day, _ in per_day]
    figures = {
        "profiles": profile_count,
        "opted_out": sum(optouts.values()),
        "blocked": by_status.get("quarantined", 0) + by_status.get("denylisted", 0),
    }
    chart = {
        "optouts": charts.bar_chart(
            [(SCOPE_LABELS.get(s, s), optouts.get(s, 0)) for s in SCOPE_LABELS],
            title="Opt-outs by scope"),
        "quarantine_reason": charts.bar_chart(
            sorted(by_reason.items(), key=lambda kv: -kv[1]),
            title="Quarantine entries by reason", empty="No address is quarantined."),
        "quarantine_status": charts.bar_chart(
            sorted(by_status.items(), key=lambda kv: -kv[1]),
            title="Quarantine entries by status", colors=charts.PALETTE,
            empty="No address is quarantined."),
        "events": charts.line_chart(
            labels, event_series, title=f"Consent events per day (last {DAYS} days, UTC)",
            width=1000, height=260,
            empty="No consent events in this period."),
        "bounces": charts.line_chart(
            rate_days, [charts.Series("bounce rate", [r.bounce_rate for _, r in per_day])],
            title="Bounce rate per day", value_format=charts.percent, area=True,
            thresholds=[charts.Threshold(thresholds.bounce_rate_alert, "alert")],
            empty="Nothing was sent in this period."),
        "complaints": charts.line_chart(
            rate_days,
            [charts.Series("complaint rate", [r.complaint_rate for _, r in per_day],
                           charts.PALETTE[3])],
            title="Complaint rate per day", value_format=charts.percent, area=True,
            thresholds=[charts.Threshold(thresholds.complaint_rate_warn, "warning",
                                         "#7a4a00"),
                        charts.Threshold(thresholds.complaint_rate_alert, "alert")],
            empty="Nothing was sent in this period."),
    }
    return render(request, "dashboard.html", principal, section="dashboard", figures=figures,
                  chart=chart)


@router.get("/console/admin")
def admin_page(request: Request, principal: Admin) -> Response:
    with state(request).engine.connect() as conn:
        operators = auth.list_operators(conn)
        keys = auth.list_api_keys(conn)
        audit = auth.audit_page(conn, limit=50)
    return render(request, "admin.html", principal, section="admin", operators=operators,
                  keys=keys, audit=audit)


router.include_router(profiles_router)
router.include_router(quarantine_router)
router.include_router(services_router)
router.include_router(deliveries_router)
