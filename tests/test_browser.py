"""The public pages in a real browser: headless Debian Chromium driven by Playwright, against a
real web server (uvicorn) on a migrated SQLite database whose confirmation mail goes to a real
SMTP server (tests/smtp_sink.py).

The journey, in English and in German (the browser's Accept-Language): subscribe on /s, read
the confirmation message from the SMTP server, open its link, confirm, open the preference
center and change something there with the keyboard, then unsubscribe on /u. Every page is
checked for the accessibility basics (lang set, every input labelled, buttons and links with
text, images with alt) and saved as a screenshot, at desktop and at phone width, under
CONSENTRY_SCREENSHOTS_DIR if set, else the test's tmp_path (the path is printed).

Without /usr/bin/chromium (or Playwright) the tests are skipped with the reason, except with
CI=true, where they fail: .ci/run installs Chromium.
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
    body_text,
    check_accessibility,
    chromium,
    links,
    parse_message,
    require_chromium,
    screenshot,
    wait_for,
)
from consentry.consent import service as consent
from consentry.domain.channels import Channel
from consentry.ledger import service as ledger
from consentry.profiles import service as profiles
from consentry.settings import Settings
from consentry.store.engine import make_engine
from consentry.store.schema import ledger_events
from consentry.tokens import Signer
from consentry.web.app import create_app
from consentry.web.render import gettext
from helpers import free_ports
from smtp_sink import SmtpSink

# What each page must say, from the catalogs: the German run fails if a page stays English.
MSGIDS = {"check": "Check your inbox", "confirm": "Confirm my subscription",
          "subscribed": "You are subscribed", "preferences": "Your preferences",
          "saved": "Your choices are saved", "unsubscribe": "Unsubscribe now"}


def _texts(lang: str) -> dict[str, str]:
    texts = {key: gettext(lang, msgid) for key, msgid in MSGIDS.items()}
    texts["subject"] = gettext(lang, "Please confirm your subscription to %(service)s",
                               service="Monthly newsletter")
    texts["offers"] = gettext(lang, "You subscribed to “%(service)s”.", service="Weekly offers")
    if lang != "en":
        english = _texts("en")
        assert all(texts[k] != english[k] for k in texts), texts
    return texts


BROWSER_LOCALE = {"en": "en-US", "de": "de-DE"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_chromium()
    with chromium() as launched:
        yield launched


@pytest.fixture
def site(tmp_path: Path, sqlite_template: Path) -> Iterator[tuple[str, sa.Engine, SmtpSink,
                                                                   Signer]]:
    """A running server on a migrated SQLite database with a double opt-in newsletter and a
    single opt-in offers list; its mail goes to a real SMTP server."""
    path = tmp_path / "browser.db"
    shutil.copyfile(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        consent.create_service(conn, "newsletter", Channel.EMAIL, "Monthly newsletter",
                               double_opt_in=True, validity_days=365)
        consent.create_service(conn, "offers", Channel.EMAIL, "Weekly offers")
    with SmtpSink() as sink:
        [port] = free_ports(1)  # the base URL in the confirmation names it
        settings = Settings(database_url=f"sqlite:///{path}", smtp_url=sink.url,
                            base_url=f"http://127.0.0.1:{port}")
        with LiveServer(create_app(settings, engine), port=port) as server:
            with engine.begin() as conn:
                signer = Signer.for_database(conn, settings)
            yield server.url, engine, sink, signer
    engine.dispose()


def _screenshots(tmp_path: Path, lang: str, capsys: pytest.CaptureFixture[str]) -> Path:
    root = Path(os.environ.get("CONSENTRY_SCREENSHOTS_DIR") or tmp_path / "screenshots")
    folder = root / lang
    with capsys.disabled():
        print(f"\nscreenshots ({lang}): {folder}")
    return folder


def _states(engine: sa.Engine, pid: int) -> dict[str, str]:
    with engine.connect() as conn:
        return {s["service"]: s["state"] for s in consent.subscriptions_of(conn, pid)}


def _tab_to(page: Any, selector: str, limit: int = 40) -> None:
    """Press Tab until the element matching `selector` has the focus (keyboard use)."""
    for _ in range(limit):
        if page.evaluate("(s) => document.activeElement === document.querySelector(s)",
                         selector):
            return
        page.keyboard.press("Tab")
    pytest.fail(f"{selector} cannot be reached with the Tab key")


@pytest.mark.parametrize("lang", ["en", "de"])
def test_subscribe_confirm_preferences_unsubscribe(browser, site, lang, tmp_path, capsys):
    base, engine, sink, signer = site
    text = _texts(lang)
    shots = _screenshots(tmp_path, lang, capsys)
    address = f"reader.{lang}@example.org"
    context = browser.new_context(locale=BROWSER_LOCALE[lang],
                                  viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        # 1. The subscription form.
        page.goto(f"{base}/s/newsletter")
        check_accessibility(page, lang)
        screenshot(page, shots, "01-subscribe")
        page.fill("#address", address)
        page.fill("#first_name", "Robin")
        page.check("#consent")
        page.click("main button[type=submit]")
        page.wait_for_load_state()
        assert text["check"] in page.content()
        check_accessibility(page, lang)
        screenshot(page, shots, "02-check-your-inbox")

        # 2. The confirmation message, from the SMTP server.
        received = wait_for(lambda: [m for m in sink.messages if address in m.rcpt_tos],
                            "the confirmation message")
        message = parse_message(received[-1].data)
        assert str(message["Subject"]) == text["subject"]
        [confirm_url] = links(body_text(message), "/c/")
        assert confirm_url.startswith(base)
        with engine.connect() as conn:
            pid = profiles.resolve(conn, address)
        assert _states(engine, pid) == {"newsletter": "pending"}

        # 3. The link shows a page; only the button confirms.
        page.goto(confirm_url)
        check_accessibility(page, lang)
        screenshot(page, shots, "03-confirm")
        assert _states(engine, pid) == {"newsletter": "pending"}
        page.get_by_role("button", name=text["confirm"]).click()
        page.wait_for_load_state()
        assert text["subscribed"] in page.content()
        check_accessibility(page, lang)
        screenshot(page, shots, "04-subscribed")
        assert _states(engine, pid) == {"newsletter": "subscribed"}

        # 4. The preference center: tick the offers with the keyboard alone, save.
        page.goto(f"{base}/p/{signer.preferences_token(pid)}")
        assert text["preferences"] in page.content()
        check_accessibility(page, lang)
        assert page.is_checked("input[type=checkbox][value='service:newsletter']")
        assert page.is_checked("input[type=checkbox][value='channel:email']")
        assert not page.is_checked("input[type=checkbox][value='service:offers']")
        screenshot(page, shots, "05-preferences")
        _tab_to(page, "input[type=checkbox][value='service:offers']")
        page.keyboard.press("Space")
        assert page.is_checked("input[type=checkbox][value='service:offers']")
        _tab_to(page, "main button[type=submit]")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert text["saved"] in page.content() and text["offers"] in page.content()
        check_accessibility(page, lang)
        screenshot(page, shots, "06-preferences-saved")
        assert _states(engine, pid) == {"newsletter": "subscribed", "offers": "subscribed"}

        # 5. Unsubscribe from the newsletter on /u (as the link in a newsletter would).
        page.goto(f"{base}/u/{signer.unsubscribe_token(pid, None, 'newsletter', 'email')}")
        check_accessibility(page, lang)
        screenshot(page, shots, "07-unsubscribe")
        page.get_by_role("button", name=text["unsubscribe"]).click()
        page.wait_for_load_state()
        check_accessibility(page, lang)
        screenshot(page, shots, "08-unsubscribed")
        assert _states(engine, pid) == {"newsletter": "unsubscribed", "offers": "subscribed"}
    finally:
        context.close()

    with engine.connect() as conn:
        assert ledger.verify(conn).ok
        pages = conn.execute(sa.select(ledger_events.c.evidence, ledger_events.c.ip,
                                       ledger_events.c.user_agent)
                             .where(ledger_events.c.profile_id == pid,
                                    ledger_events.c.source == "landing_page")
                             .order_by(ledger_events.c.id)).all()
    # Each page recorded its change with where it came from.
    assert [e["page"] for e, _, _ in pages] == ["/s/newsletter", "/c", "/p", "/u"]
    for evidence, ip, user_agent in pages:
        assert ip == "127.0.0.1" and "Chrome" in user_agent and evidence["lang"] == lang
    assert sorted(p.name for p in shots.iterdir()) == sorted(
        f"{n}{suffix}.png" for n in ("01-subscribe", "02-check-your-inbox", "03-confirm",
                                     "04-subscribed", "05-preferences", "06-preferences-saved",
                                     "07-unsubscribe", "08-unsubscribed")
        for suffix in ("", "-phone"))
