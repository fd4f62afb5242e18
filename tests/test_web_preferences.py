"""The preference center /p/{token}, on SQLite and PostgreSQL: what it shows, that GET changes
nothing, that POST changes exactly what was toggled and records it, opting back in, forged
tokens, CSRF, German, private-page headers."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from consentry.consent import service as consent
from consentry.domain.channels import Channel
from consentry.domain.ledger import Origin, Source
from consentry.ledger import service as ledger
from consentry.profiles import service as profiles
from consentry.store.schema import ledger_events, opt_outs, subscriptions
from consentry.tokens import Signer
from consentry.web.app import create_app
from consentry.web.preferences import WORDING
from consentry.web.security import CSRF_FIELD

UA = "Mozilla/5.0 (preferences test)"


class FormReader(HTMLParser):
    """The fields of the page's form as a browser would send them, and its checkboxes."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.hidden: list[tuple[str, str]] = []
        self.boxes: dict[str, bool] = {}  # value of each "on" box -> checked
        self.inputs: list[dict[str, str | None]] = []
        self.labels: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.action = a.get("action")
        elif tag == "label" and a.get("for"):
            self.labels.add(str(a["for"]))
        elif tag == "input":
            self.inputs.append(a)
            if a.get("type") == "hidden":
                self.hidden.append((str(a["name"]), str(a.get("value") or "")))
            elif a.get("type") == "checkbox":
                self.boxes[str(a["value"])] = "checked" in a


def read_form(html: str) -> FormReader:
    reader = FormReader()
    reader.feed(html)
    return reader


def submit(client: TestClient, form: FormReader, ticked: dict[str, bool],
           drop_csrf: bool = False) -> Any:
    """Post the form with the boxes as `ticked` says (the rest as shown)."""
    state = {**form.boxes, **ticked}
    data: dict[str, list[str]] = {}
    for k, v in form.hidden:
        if not (drop_csrf and k == CSRF_FIELD):
            data.setdefault(k, []).append(v)
    data["on"] = [key for key, on in state.items() if on]
    assert form.action
    return client.post(form.action, data=data, headers={"User-Agent": UA})


@pytest.fixture
def setup(engine, settings):
    """A profile with email and phone, subscribed to the newsletter; services of each
    channel, one of them not public."""
    origin = Origin(source=Source.CLI, actor="test")
    with engine.begin() as conn:
        news = consent.create_service(conn, "newsletter", Channel.EMAIL, "Monthly newsletter",
                                      double_opt_in=True, validity_days=365)
        consent.create_service(conn, "offers", Channel.EMAIL, "Weekly offers")
        consent.create_service(conn, "sms-alerts", Channel.SMS, "SMS alerts")
        consent.create_service(conn, "app-news", Channel.PUSH, "App news")  # no push token
        consent.create_service(conn, "internal", Channel.EMAIL, "Staff list", public=False)
        pid = profiles.create(conn, settings, profiles.NewProfile(
            email="Jana.Weber@example.de", phone="+491701234567", locale="de-DE"), origin)
        consent.subscribe(conn, pid, news, origin, confirmed=True)
        signer = Signer.for_database(conn, settings)
    client = TestClient(create_app(settings, engine))
    return client, pid, signer.preferences_token(pid)


def snapshot(engine: sa.Engine) -> tuple[Any, ...]:
    with engine.connect() as conn:
        return (sorted(conn.execute(sa.select(opt_outs.c.profile_id, opt_outs.c.scope)).all()),
                sorted(conn.execute(sa.select(subscriptions.c.service_id,
                                              subscriptions.c.state)).all()),
                conn.execute(sa.select(sa.func.count()).select_from(ledger_events)).scalar())


def events_after(engine: sa.Engine, count: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ledger_events).order_by(ledger_events.c.id)
                            .offset(count)).mappings().all()
    return [dict(r) for r in rows]


def test_get_shows_channels_and_services_prefilled_and_changes_nothing(engine, setup):
    client, _pid, token = setup
    before = snapshot(engine)
    response = client.get(f"/p/{token}?lang=en")
    assert response.status_code == 200
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    form = read_form(response.text)
    # email and sms (the profile has no push token); the global box; the public services of
    # those channels; not the push service, not the private one.
    assert form.boxes == {"channel:email": True, "channel:sms": True, "all": False,
                          "service:newsletter": True, "service:offers": False,
                          "service:sms-alerts": False}
    assert "Receive messages by email" in response.text
    assert "Nothing at all from us" in response.text
    assert "J•••@example.de" in response.text and "jana.weber" not in response.text.lower()
    assert form.action == f"/p/{token}?lang=en"
    # Accessibility basics: every visible input has a label.
    visible = [i for i in form.inputs if i.get("type") != "hidden"]
    assert visible and all(i.get("id") in form.labels for i in visible)
    assert snapshot(engine) == before


def test_post_changes_exactly_what_was_toggled_and_records_it(engine, setup):
    client, pid, token = setup
    _, _, count = snapshot(engine)
    form = read_form(client.get(f"/p/{token}?lang=en").text)
    response = submit(client, form, {"channel:sms": False, "service:newsletter": False,
                                     "service:offers": True})
    assert response.status_code == 200, response.text
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    assert "You no longer receive text messages." in response.text
    assert "You unsubscribed from “Monthly newsletter”." in response.text
    assert "You subscribed to “Weekly offers”." in response.text
    assert "by email" not in response.text  # untouched: not listed

    events = events_after(engine, count)
    assert [(e["kind"], e["channel"], e["service"], e["old_state"], e["new_state"])
            for e in events] == [
        ("opt_out", "sms", None, "opted_in", "opted_out"),
        ("subscription", "email", "newsletter", "subscribed", "unsubscribed"),
        ("subscription", "email", "offers", None, "subscribed")]
    for e in events:
        assert e["source"] == "landing_page" and e["actor"] == f"profile:{pid}"
        assert e["ip"] == "testclient" and e["user_agent"] == UA
        assert e["wording"] == WORDING and e["evidence"] == {"page": "/p", "lang": "en"}
        assert e["profile_id"] == pid
    assert "token" in events[2]["note"]  # subscribed at once: the token identifies the person
    with engine.connect() as conn:
        assert consent.optouts(conn, pid).scopes == frozenset({"sms"})
        states = {s["service"]: s["state"] for s in consent.subscriptions_of(conn, pid)}
        assert ledger.verify(conn).ok
    assert states == {"newsletter": "unsubscribed", "offers": "subscribed"}

    # The page now shows the new state; sending it unchanged changes nothing.
    form = read_form(client.get(f"/p/{token}?lang=en").text)
    assert form.boxes["channel:sms"] is False and form.boxes["service:offers"] is True
    _, _, count = snapshot(engine)
    again = submit(client, form, {})
    assert again.status_code == 200 and "Nothing changed" in again.text
    assert events_after(engine, count) == []


def test_opting_back_in_is_as_easy_as_opting_out(engine, setup):
    client, pid, token = setup
    form = read_form(client.get(f"/p/{token}").text)
    out = submit(client, form, {"all": True, "channel:email": False})
    assert "Sie erhalten gar nichts mehr von uns." in out.text  # the profile's locale: de
    with engine.connect() as conn:
        assert consent.optouts(conn, pid).scopes == frozenset({"all", "email"})
    _, _, count = snapshot(engine)
    form = read_form(client.get(f"/p/{token}?lang=en").text)
    assert form.boxes["all"] is True and form.boxes["channel:email"] is False
    response = submit(client, form, {"all": False, "channel:email": True})
    assert "We may contact you again on the channels you allow." in response.text
    assert "You receive messages by email again." in response.text
    with engine.connect() as conn:
        assert consent.optouts(conn, pid).scopes == frozenset()
    assert [(e["kind"], e["channel"]) for e in events_after(engine, count)] == [
        ("opt_in", "all"), ("opt_in", "email")]


def test_a_stale_form_does_not_undo_a_change_made_elsewhere(engine, setup):
    client, pid, token = setup
    form = read_form(client.get(f"/p/{token}?lang=en").text)  # newsletter ticked
    with engine.begin() as conn:  # meanwhile: unsubscribed by a one-click, say
        consent.unsubscribe(conn, pid, consent.get_service(conn, "newsletter"),
                            Origin(source=Source.ONE_CLICK))
    _, _, count = snapshot(engine)
    response = submit(client, form, {"channel:sms": False})
    assert "You no longer receive text messages." in response.text
    assert "newsletter" not in response.text.lower()
    assert [e["channel"] for e in events_after(engine, count)] == ["sms"]
    with engine.connect() as conn:
        states = {s["service"]: s["state"] for s in consent.subscriptions_of(conn, pid)}
    assert states["newsletter"] == "unsubscribed"


def test_forged_token_is_a_400_page_and_changes_nothing(engine, setup):
    client, pid, token = setup
    form = read_form(client.get(f"/p/{token}?lang=en").text)
    before = snapshot(engine)
    other = Signer(["someone-else"]).preferences_token(pid)
    for bad in (token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb"), other, "x"):
        shown = client.get(f"/p/{bad}?lang=en")
        assert shown.status_code == 400 and "This link is not valid" in shown.text
        assert shown.headers["cache-control"] == "no-store"
        posted = client.post(f"/p/{bad}", data={**dict(form.hidden), "on": "all"})
        assert posted.status_code == 400
    assert snapshot(engine) == before


def test_missing_or_wrong_csrf_is_refused_and_changes_nothing(engine, setup):
    client, _pid, token = setup
    form = read_form(client.get(f"/p/{token}?lang=en").text)
    before = snapshot(engine)
    response = submit(client, form, {"all": True}, drop_csrf=True)
    assert response.status_code == 403 and "Please try again" in response.text
    assert response.headers["cache-control"] == "no-store"
    stranger = TestClient(client.app)  # another site's form: no cookie
    assert submit(stranger, form, {"all": True}).status_code == 403
    assert snapshot(engine) == before


def test_german_from_the_profile_locale_and_from_lang(engine, setup):
    client, _pid, token = setup
    german = client.get(f"/p/{token}")  # the profile's locale is de-DE
    assert german.status_code == 200
    assert '<html lang="de">' in german.text
    assert "Ihre Einstellungen" in german.text
    assert "Nachrichten per E-Mail erhalten" in german.text
    assert "Gar nichts mehr von uns" in german.text
    assert "Meine Auswahl speichern" in german.text
    form = read_form(german.text)
    assert form.action == f"/p/{token}?lang=de"
    saved = submit(client, form, {"service:newsletter": False})
    assert "Ihre Auswahl ist gespeichert" in saved.text
    assert "Sie haben „Monthly newsletter“ abbestellt." in saved.text
    assert '<html lang="en">' in client.get(f"/p/{token}?lang=en").text
    nothing = submit(client, read_form(client.get(f"/p/{token}").text), {})
    assert "Nichts geändert" in nothing.text


def test_a_pending_subscription_shows_as_asked_for_and_can_be_withdrawn(engine, settings,
                                                                        setup):
    client, pid, token = setup
    origin = Origin(source=Source.CLI, actor="test")
    with engine.begin() as conn:
        news = consent.get_service(conn, "newsletter")
        consent.unsubscribe(conn, pid, news, origin)
        consent.subscribe(conn, pid, news, origin)  # double opt-in: pending
    page = client.get(f"/p/{token}?lang=en")
    assert "You asked for this and have not confirmed it yet." in page.text
    form = read_form(page.text)
    assert form.boxes["service:newsletter"] is True
    submit(client, form, {"service:newsletter": False})
    with engine.connect() as conn:
        states = {s["service"]: s["state"] for s in consent.subscriptions_of(conn, pid)}
    assert states["newsletter"] == "unsubscribed"
