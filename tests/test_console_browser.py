"""The operator console in a real browser: headless Debian Chromium driven by Playwright,
against a real web server (uvicorn in a thread) on a migrated SQLite database with an operator
created by auth.create_operator; its mail goes to a real SMTP server (tests/smtp_sink.py), so
sending from the console runs for real.

Flows: signing in (a wrong password first), a manual opt-out with its note, a quarantine bulk
release after its preview, and creating, analysing and sending a delivery, whose exclusion
chart must be on the page as a picture. Every page is checked for the accessibility basics
and saved as a screenshot (desktop and phone width) under CONSENTRY_SCREENSHOTS_DIR/console if
set, else the test's tmp_path/console-screenshots (the path is printed).

Without /usr/bin/chromium (or Playwright) the tests are skipped with the reason, except with
CI=true, where they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from browser_helpers import (
    LiveServer,
    check_accessibility,
    chromium,
    require_chromium,
    screenshot,
    wait_for,
)
from consentry.auth import service as auth
from consentry.delivery import service as deliveries
from consentry.domain.addresses import normalize_email
from consentry.ledger import service as ledger
from consentry.quarantine import service as quarantine
from consentry.settings import Settings
from consentry.store.engine import make_engine
from consentry.web.app import create_app
from smtp_sink import SmtpSink
from test_console import PASSWORD, quarantined, seed

LOGIN = "olivia"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_chromium()
    with chromium() as launched:
        yield launched


@pytest.fixture
def site(tmp_path: Path, sqlite_template: Path) -> Iterator[tuple[str, sa.Engine, Settings,
                                                                   dict[str, int]]]:
    path = tmp_path / "console.db"
    shutil.copyfile(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    with SmtpSink() as sink:
        settings = Settings(database_url=f"sqlite:///{path}", smtp_url=sink.url)
        ids = seed(engine, settings)
        with engine.begin() as conn:
            auth.create_operator(conn, LOGIN, PASSWORD, "operator", "test")
        with LiveServer(create_app(settings, engine)) as server:
            yield server.url, engine, settings, ids
    engine.dispose()


@pytest.fixture
def shots(tmp_path: Path, request: pytest.FixtureRequest,
          capsys: pytest.CaptureFixture[str]) -> Path:
    configured = os.environ.get("CONSENTRY_SCREENSHOTS_DIR")
    root = Path(configured) / "console" if configured else tmp_path / "console-screenshots"
    folder = root / request.node.name.removeprefix("test_")
    with capsys.disabled():
        print(f"\nconsole screenshots: {folder}")
    return folder


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def sign_in(page: Any, base: str) -> None:
    page.goto(f"{base}/console")
    assert page.url.startswith(f"{base}/console/login")
    page.fill("#login", LOGIN)
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.click("main button[type=submit]")
    assert page.url == f"{base}/console"


def test_login(browser, site, page, shots):
    base, *_ = site
    page.goto(f"{base}/console/quarantine")
    assert page.url == f"{base}/console/login?next=%2Fconsole%2Fquarantine"
    check_accessibility(page, "en")
    screenshot(page, shots, "01-login")
    page.fill("#login", LOGIN)
    page.fill("#password", "not the password")
    with page.expect_navigation():
        page.click("main button[type=submit]")
    assert "Wrong login or password" in page.inner_text("[role=alert]")
    screenshot(page, shots, "02-login-failed")
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.click("main button[type=submit]")
    assert page.url == f"{base}/console/quarantine"  # where we wanted to go
    cookie = next(c for c in page.context.cookies() if c["name"] == "consentry_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    page.click("header nav >> text=Dashboard")
    page.wait_for_load_state()
    check_accessibility(page, "en")
    charts = page.locator("main svg.chart")
    assert charts.count() == 6
    box = charts.first.bounding_box()
    assert box and box["width"] > 200 and box["height"] > 40  # drawn, not blocked by CSP
    screenshot(page, shots, "03-dashboard")
    with page.expect_navigation():
        page.click("text=Sign out")
    assert page.url == f"{base}/console/login"
    page.goto(f"{base}/console")
    assert page.url.startswith(f"{base}/console/login")


def test_manual_optout_with_a_note(browser, site, page, shots):
    base, engine, _, ids = site
    sign_in(page, base)
    with page.expect_navigation():
        page.click("header nav >> text=Profiles")
    page.fill("#q", "ada@example.com")
    with page.expect_navigation():
        page.click("form.search button")
    screenshot(page, shots, "01-search")
    with page.expect_navigation():
        page.click(f"main a[href='/console/profiles/{ids['ada']}']")
    check_accessibility(page, "en")
    screenshot(page, shots, "02-profile")
    # Without a note the browser does not send the form (and the server would refuse it).
    page.click("button:has-text('Opt out of Email')")
    assert page.url == f"{base}/console/profiles/{ids['ada']}"
    page.fill("#note-email", "Asked on the phone, ticket 4711")
    with page.expect_navigation():
        page.click("button:has-text('Opt out of Email')")
    assert "consent ledger" in page.inner_text("[role=status]")
    timeline = page.inner_text("#ledger-h + .scroll")
    assert "Asked on the phone, ticket 4711" in timeline and f"operator:{LOGIN}" in timeline
    check_accessibility(page, "en")
    screenshot(page, shots, "03-opted-out")
    with engine.connect() as conn:
        event = ledger.history(conn, ids["ada"], [])[-1]
    assert (event["kind"], event["channel"], event["source"], event["actor"], event["note"]) == (
        "opt_out", "email", "console", f"operator:{LOGIN}", "Asked on the phone, ticket 4711")
    assert "HeadlessChrome" in (event["user_agent"] or "")


def test_quarantine_bulk_release(browser, site, page, shots):
    base, engine, settings, _ = site
    for name in ("ann", "ben", "cat"):
        quarantined(engine, settings, f"{name}@gmail.com", "user_unknown")
    quarantined(engine, settings, "full@gmail.com", "mailbox_full")
    sign_in(page, base)
    page.goto(f"{base}/console/quarantine")
    check_accessibility(page, "en")
    screenshot(page, shots, "01-quarantine")
    page.select_option("#f-reason", "user_unknown")
    page.fill("#f-domain", "gmail.com")
    with page.expect_navigation():
        page.click("form.filters button")
    assert page.locator("main tbody tr").count() == 3
    screenshot(page, shots, "02-filtered")
    with page.expect_navigation():
        page.click("text=Release matching entries")
    assert page.inner_text("#preview-count") == "3"
    check_accessibility(page, "en")
    screenshot(page, shots, "03-preview")
    page.fill("#b-note", "Gmail outage on Monday")
    with page.expect_navigation():
        page.click("button:has-text('Release 3 addresses')")
    assert "3 addresses released" in page.inner_text("[role=status]")
    screenshot(page, shots, "04-released")
    with engine.connect() as conn:
        status = {a: quarantine.show(conn, normalize_email(a), settings.quarantine)["status"]
                  for a in ("ann@gmail.com", "ben@gmail.com", "cat@gmail.com",
                            "full@gmail.com")}
    assert status == {"ann@gmail.com": "valid", "ben@gmail.com": "valid",
                      "cat@gmail.com": "valid", "full@gmail.com": "quarantined"}


def test_create_analyse_and_send_a_delivery(browser, site, page, shots):
    base, engine, _, _ = site
    sign_in(page, base)
    page.goto(f"{base}/console/deliveries")
    with page.expect_navigation():
        page.click("text=New delivery")
    check_accessibility(page, "en")
    page.fill("#d-name", "Summer news")
    page.select_option("#d-service", "news")
    page.fill("#d-subject", "Summer is here")
    page.fill("#d-text", "Hello {{ profile.first_name }}!\n\nUnsubscribe: {{ unsubscribe_url }}")
    screenshot(page, shots, "01-new")
    with page.expect_navigation():
        page.click("main form button[type=submit]")
    delivery_id = int(page.url.rsplit("/", 1)[1])
    with page.expect_navigation():
        page.click("button:has-text('Analyse')")
    chart = page.locator("svg.chart", has=page.locator("title", has_text="Exclusion causes"))
    assert chart.count() == 1
    box = chart.bounding_box()
    assert box and box["width"] > 300 and box["height"] > 40
    bars = chart.locator("rect")
    assert bars.count() == 2  # opted_out and quarantined
    labels = chart.text_content()
    assert "opted_out" in labels and "quarantined" in labels
    assert page.locator("#log-h + form + .scroll tbody tr").count() == 2
    check_accessibility(page, "en")
    screenshot(page, shots, "02-analysed")
    chart.screenshot(path=str(shots / "02-exclusion-chart.png"))

    with page.expect_navigation():
        page.click("button:has-text('Send to')")
    assert page.url.endswith(f"/console/deliveries/{delivery_id}/progress")
    screenshot(page, shots, "03-progress")
    # The page reloads itself until everything is handled.
    wait_for(lambda: "Done" in page.inner_text("#progress-state"), "the delivery to finish",
             timeout=60)
    check_accessibility(page, "en")
    screenshot(page, shots, "04-done")
    with engine.connect() as conn:
        report = deliveries.report(conn, delivery_id)
    assert report["state"] == "done" and report["states"]["sent"] == 2
    page.click("text=The report")
    page.wait_for_load_state()
    assert page.locator("svg.chart", has=page.locator("title",
                                                      has_text="Failures by reason")).count()
    screenshot(page, shots, "05-report")
