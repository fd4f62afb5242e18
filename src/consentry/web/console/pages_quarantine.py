"""Console: the quarantine list with filters (address, status, channel, reason, domain, date),
adding and editing an entry, releasing one, and bulk release with a preview of its count."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response

from consentry.domain import quarantine as qrules
from consentry.domain.addresses import normalize
from consentry.domain.channels import CHANNELS
from consentry.domain.errors import ConsentryError
from consentry.quarantine import service as quarantine
from consentry.web.console import sql as csql
from consentry.web.console.auth import ConsoleRoute, Preview, Reader, Writer, render
from consentry.web.console.pages_profiles import origin
from consentry.web.deps import state

router = APIRouter(route_class=ConsoleRoute)

LIMIT = 200
STATUSES = tuple(s.value for s in qrules.Status)
SETTABLE = ("quarantined", "denylisted", "allowlisted")
REASONS = tuple(sorted(qrules.REASONS))
DONE = {"saved": "The entry is saved and the change is in the consent ledger.",
        "released": "The address is released: it is valid again.",
        "unchanged": "Nothing changed: the address was not blocked.",
        "bulk": "Bulk release done."}


def parse_day(text: str | None, *, end: bool = False) -> datetime | None:
    """A day (YYYY-MM-DD, what <input type=date> sends) or a timestamp, as UTC; `end` makes a
    bare day inclusive (the start of the next day)."""
    if not text or not text.strip():
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConsentryError(f"{text!r} is not a date (expected YYYY-MM-DD)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if end and len(text.strip()) == 10:
        value += timedelta(days=1)
    return value


def _choice(value: str | None, allowed: tuple[str, ...], what: str) -> str | None:
    if not value:
        return None
    if value not in allowed:
        raise ConsentryError(f"unknown {what} {value!r}: expected one of {', '.join(allowed)}")
    return value


@router.get("/console/quarantine")
def listing(request: Request, principal: Reader,
            address: Annotated[str, Query(max_length=320)] = "",
            status: Annotated[str, Query()] = "", channel: Annotated[str, Query()] = "",
            reason: Annotated[str, Query()] = "", domain: Annotated[str, Query()] = "",
            since: Annotated[str, Query()] = "", until: Annotated[str, Query()] = "",
            done: Annotated[str, Query()] = "",
            n: Annotated[int | None, Query()] = None) -> Response:
    filters: dict[str, Any] = {
        "address": address.strip() or None, "status": _choice(status, STATUSES, "status"),
        "channel": _choice(channel, CHANNELS, "channel"),
        "reason": _choice(reason, REASONS, "reason"), "domain": domain.strip() or None,
        "since": parse_day(since), "until": parse_day(until, end=True)}
    with state(request).engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(csql.quarantine_listing(limit=LIMIT, **filters))
                .mappings()]
        total = conn.execute(csql.quarantine_count(**filters)).scalar_one()
    form = {"address": address, "status": status, "channel": channel, "reason": reason,
            "domain": domain, "since": since, "until": until}
    bulk = {k: form[k] for k in ("reason", "domain", "channel", "since", "until") if form[k]}
    message = DONE.get(done)
    if done == "bulk" and n is not None:
        message = f"Bulk release done: {n} addresses released."
    return render(request, "quarantine.html", principal, section="quarantine", rows=rows,
                  total=total, limit=LIMIT, form=form, statuses=STATUSES, channels=CHANNELS,
                  reasons=REASONS, settable=SETTABLE,
                  bulk_query=urlencode(bulk) if bulk else None, done=message)


@router.get("/console/quarantine/entry")
def entry(request: Request, principal: Reader, channel: Annotated[str, Query()],
          address: Annotated[str, Query(max_length=1024)],
          done: Annotated[str, Query()] = "") -> Response:
    st = state(request)
    addr = normalize(channel, address, st.settings.default_region)
    with st.engine.connect() as conn:
        shown = quarantine.show(conn, addr, st.settings.quarantine)
    return render(request, "quarantine_entry.html", principal, section="quarantine",
                  entry=shown, settable=SETTABLE, reasons=REASONS, done=DONE.get(done))


@router.post("/console/quarantine/set")
def set_status(request: Request, principal: Writer, channel: Annotated[str, Form()],
               address: Annotated[str, Form()], status: Annotated[str, Form()],
               reason: Annotated[str, Form()] = "",
               note: Annotated[str | None, Form()] = None) -> Response:
    st = state(request)
    _choice(channel, CHANNELS, "channel")
    new_status = qrules.Status(_choice(status, SETTABLE, "status") or "")
    addr = normalize(channel, address, st.settings.default_region)
    with st.engine.begin() as conn:
        quarantine.set_status(conn, addr, new_status, reason or None,
                              origin(request, principal.actor, (note or "").strip() or None),
                              st.settings.quarantine)
    query = urlencode({"channel": addr.channel.value, "address": addr.value, "done": "saved"})
    return RedirectResponse(f"/console/quarantine/entry?{query}", status_code=303)


@router.post("/console/quarantine/release")
def release(request: Request, principal: Writer, channel: Annotated[str, Form()],
            address: Annotated[str, Form()],
            note: Annotated[str | None, Form()] = None) -> Response:
    st = state(request)
    addr = normalize(channel, address, st.settings.default_region)
    with st.engine.begin() as conn:
        change = quarantine.release(conn, addr,
                                    origin(request, principal.actor,
                                           (note or "").strip() or None),
                                    st.settings.quarantine)
    done = "released" if change.changed else "unchanged"
    query = urlencode({"channel": addr.channel.value, "address": addr.value, "done": done})
    return RedirectResponse(f"/console/quarantine/entry?{query}", status_code=303)


def _bulk_filters(reason: str, domain: str, channel: str, since: str,
                  until: str) -> dict[str, Any]:
    return {"reason": _choice(reason, REASONS, "reason"), "domain": domain.strip() or None,
            "channel": _choice(channel, CHANNELS, "channel"), "since": parse_day(since),
            "until": parse_day(until, end=True)}


@router.get("/console/quarantine/bulk-release")
def bulk_preview(request: Request, principal: Preview, reason: Annotated[str, Query()] = "",
                 domain: Annotated[str, Query()] = "", channel: Annotated[str, Query()] = "",
                 since: Annotated[str, Query()] = "",
                 until: Annotated[str, Query()] = "") -> Response:
    """How many blocking entries a bulk release would touch; nothing is changed."""
    st = state(request)
    form = {"reason": reason, "domain": domain, "channel": channel, "since": since,
            "until": until}
    count = None
    if any(form.values()):
        filters = _bulk_filters(**form)
        with st.engine.begin() as conn:
            count = quarantine.bulk_release(conn, origin(request, principal.actor, None),
                                            st.settings.quarantine, dry_run=True, **filters)
    return render(request, "bulk_release.html", principal, section="quarantine", form=form,
                  count=count, reasons=REASONS, channels=CHANNELS)


@router.post("/console/quarantine/bulk-release")
def bulk_release(request: Request, principal: Writer, reason: Annotated[str, Form()] = "",
                 domain: Annotated[str, Form()] = "", channel: Annotated[str, Form()] = "",
                 since: Annotated[str, Form()] = "", until: Annotated[str, Form()] = "",
                 note: Annotated[str | None, Form()] = None) -> Response:
    st = state(request)
    filters = _bulk_filters(reason, domain, channel, since, until)
    with st.engine.begin() as conn:
        released = quarantine.bulk_release(
            conn, origin(request, principal.actor, (note or "").strip() or None),
            st.settings.quarantine, **filters)
    return RedirectResponse(f"/console/quarantine?done=bulk&n={released}", status_code=303)
