"""Console: profile search, the profile page (channel switches with a required note,
subscriptions, addresses with their quarantine state, the consent timeline, explain, the
profiles sharing an address and denylisting those addresses)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response

from consentry.consent import service as consent
from consentry.delivery import service as deliveries
from consentry.domain import quarantine as qrules
from consentry.domain.channels import CHANNELS, Channel
from consentry.domain.errors import ConsentryError
from consentry.domain.ledger import Origin, Source
from consentry.ledger import service as ledger
from consentry.profiles import service as profiles
from consentry.quarantine import service as quarantine
from consentry.web.console import sql as csql
from consentry.web.console.auth import ConsoleRoute, Reader, Writer, render
from consentry.web.deps import client_ip, state

router = APIRouter(route_class=ConsoleRoute)

SCOPES = ("all", *CHANNELS)
SCOPE_LABELS = {"all": "All channels", "email": "Email", "sms": "SMS", "push": "Push"}
DONE = {
    "opted_out": "Opted out. The change and your note are in the consent ledger.",
    "opted_in": "Opted back in. The change and your note are in the consent ledger.",
    "unchanged": "Nothing changed: the profile already was in that state.",
    "denylisted": "The shared addresses are denylisted.",
}


def origin(request: Request, actor: str, note: str | None) -> Origin:
    return Origin(source=Source.CONSOLE, actor=actor, ip=client_ip(request),
                  user_agent=request.headers.get("user-agent"), note=note)


def required_note(note: str | None) -> str:
    text = (note or "").strip()
    if not text:
        raise ConsentryError("A note is required: say why you change this profile's consent "
                             "(it is recorded in the consent ledger).")
    if len(text) > 2000:
        raise ConsentryError("The note is too long (at most 2000 characters).")
    return text


@router.get("/console/profiles")
def search(request: Request, principal: Reader,
           q: Annotated[str, Query(max_length=320)] = "") -> Response:
    st = state(request)
    with st.engine.connect() as conn:
        if q.strip():
            rows = [dict(r) for r in conn.execute(csql.search_profiles(q, 50)).mappings()]
            try:
                exact = profiles.resolve(conn, q, st.settings.default_region)
            except ConsentryError:
                exact = None
            if exact is not None and all(r["id"] != exact for r in rows):
                rows.insert(0, profiles.get(conn, exact))
        else:
            rows = [dict(r) for r in conn.execute(csql.LATEST_PROFILES, {"limit": 20})
                    .mappings()]
    return render(request, "profiles.html", principal, section="profiles", q=q, rows=rows)


@router.get("/console/profiles/{profile_id}")
def profile_page(request: Request, principal: Reader, profile_id: int,
                 delivery: Annotated[int | None, Query()] = None,
                 done: Annotated[str | None, Query()] = None) -> Response:
    st = state(request)
    with st.engine.connect() as conn:
        data = profiles.show(conn, st.settings, profile_id)
        row = profiles.get(conn, profile_id)
        keys = [a.key for a in profiles.addresses_of(conn, row)]
        history = list(reversed(ledger.history(conn, profile_id, keys)))
        recent = [dict(r) for r in conn.execute(csql.DELIVERIES, {"limit": 50}).mappings()]
        explained = (deliveries.explain(conn, st.settings, profile_id, delivery)
                     if delivery else None)
        shared_ids = sorted({i for a in data["addresses"] for i in a["shared_with"]})
        others = [profiles.get(conn, i) for i in shared_ids]
    scopes = []
    for scope in SCOPES:
        detail = data["opted_out_detail"] if scope == "all" else data["channels"][scope]["detail"]
        opted_out = data["opted_out"] if scope == "all" else data["channels"][scope]["opted_out"]
        scopes.append({"scope": scope, "label": SCOPE_LABELS[scope], "opted_out": opted_out,
                       "detail": detail})
    shared = [a for a in data["addresses"] if a["shared_with"]]
    return render(request, "profile.html", principal, section="profiles", p=data,
                  scopes=scopes, history=history, recent=recent, explained=explained,
                  delivery=delivery, others=others, shared=shared,
                  done=DONE.get(done or ""))


@router.post("/console/profiles/{profile_id}/consent")
def change_consent(request: Request, principal: Writer, profile_id: int,
                   scope: Annotated[str, Form()], action: Annotated[str, Form()],
                   note: Annotated[str | None, Form()] = None) -> Response:
    if scope not in SCOPES or action not in ("opt_out", "opt_in"):
        raise ConsentryError(f"unknown scope {scope!r} or action {action!r}")
    text = required_note(note)
    channel = None if scope == "all" else Channel(scope)
    with state(request).engine.begin() as conn:
        change = consent.opt_out if action == "opt_out" else consent.opt_in
        changed = change(conn, profile_id, channel, origin(request, principal.actor, text))
    done = ("opted_out" if action == "opt_out" else "opted_in") if changed else "unchanged"
    return RedirectResponse(f"/console/profiles/{profile_id}?done={done}", status_code=303)


@router.post("/console/profiles/{profile_id}/denylist-shared")
def denylist_shared(request: Request, principal: Writer, profile_id: int,
                    note: Annotated[str | None, Form()] = None) -> Response:
    """Denylist every address of this profile that another profile holds too."""
    st = state(request)
    with st.engine.begin() as conn:
        data = profiles.show(conn, st.settings, profile_id)
        shared = {(a["channel"], a["address"]): a["shared_with"] for a in data["addresses"]
                  if a["shared_with"]}
        if not shared:
            raise ConsentryError("This profile shares no address with another profile.")
        for address in profiles.addresses_of(conn, profiles.get(conn, profile_id)):
            holders = shared.get((address.channel.value, address.value))
            if holders is None:
                continue
            text = (note or "").strip() or (
                f"shared by profiles {', '.join(map(str, [profile_id, *holders]))}")
            quarantine.set_status(conn, address, qrules.Status.DENYLISTED, "manual",
                                  origin(request, principal.actor, text),
                                  st.settings.quarantine)
    return RedirectResponse(f"/console/profiles/{profile_id}?done=denylisted", status_code=303)

