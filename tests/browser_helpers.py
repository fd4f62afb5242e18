"""What the browser tests and the demo's smoke test share: a real web server (uvicorn in a
thread) on a real database, waiting for a server to answer, reading links out of the messages
an SMTP server kept, Chromium (Debian's, driven by Playwright) and the accessibility basics
checked in a page's DOM."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from helpers import free_ports

CHROMIUM = os.environ.get("CONSENTRY_CHROMIUM", "/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
URL = re.compile(r"https?://[^\s<>\"]+")


class LiveServer:
    """An ASGI app served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_ports(1)[0]
        self.server = uvicorn.Server(uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", ws="none",
            lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, name="live-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the web server on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def wait_for_health(base_url: str, process: subprocess.Popen[bytes] | None = None,
                    output: Path | None = None, timeout: float = 120) -> None:
    """Until GET /healthz answers ok; fail with the process's output if it exits first."""
    log = (lambda: output.read_text()) if output else (lambda: "")
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log()}")
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{base_url} did not answer /healthz:\n{log()}")
        time.sleep(0.2)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def parse_message(raw: bytes) -> EmailMessage:
    return BytesParser(policy=policy.default).parsebytes(raw)  # type: ignore[return-value]


def body_text(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain", "html"))
    assert body is not None, message
    return str(body.get_content())  # type: ignore[attr-defined]


def links(text: str, path_prefix: str = "") -> list[str]:
    """The http(s) links in `text` whose path starts with `path_prefix` (e.g. "/c/")."""
    found = [u.rstrip(".,);") for u in URL.findall(text)]
    return [u for u in found if re.match(r"https?://[^/]+" + re.escape(path_prefix), u)]


# --- Chromium ------------------------------------------------------------------------------


def require_chromium() -> None:
    """Skip (with the reason) when Chromium or Playwright is missing; with CI=true, fail."""
    problem = None
    if not Path(CHROMIUM).exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is missing (uv sync)"
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"browser tests cannot run and CI=true: {problem}", pytrace=False)
    pytest.skip(f"browser tests need Chromium: {problem}")


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian Chromium driven by Playwright (no Playwright browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--disable-dev-shm-usage", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


# Run in the page: the accessibility basics of a page, as a list of problems.
A11Y_CHECK = """() => {
  const problems = [];
  const lang = document.documentElement.getAttribute('lang') || '';
  if (!lang.trim()) problems.push('<html> has no lang attribute');
  if (!document.title.trim()) problems.push('the page has no title');
  if (!document.querySelector('h1')) problems.push('the page has no h1');
  const described = (el) => (el.getAttribute('aria-label') || '').trim()
    || (el.getAttribute('aria-labelledby') || '').trim();
  for (const el of document.querySelectorAll('input, select, textarea')) {
    if (el.type === 'hidden') continue;
    const byFor = el.id && Array.from(document.querySelectorAll('label'))
      .some((l) => l.htmlFor === el.id && l.textContent.trim());
    const wrapped = el.closest('label') && el.closest('label').textContent.trim();
    if (!(byFor || wrapped || described(el))) problems.push('no label: ' + el.outerHTML);
  }
  for (const b of document.querySelectorAll('button, input[type=submit], input[type=button]')) {
    const text = (b.textContent || b.value || '').trim() || described(b);
    if (!text) problems.push('button without text: ' + b.outerHTML);
  }
  for (const img of document.querySelectorAll('img')) {
    if (!img.hasAttribute('alt')) problems.push('image without alt: ' + img.outerHTML);
  }
  for (const a of document.querySelectorAll('a[href]')) {
    if (!(a.textContent.trim() || described(a))) problems.push('link without text: ' + a.outerHTML);
  }
  const ids = Array.from(document.querySelectorAll('[id]')).map((e) => e.id);
  const dupes = ids.filter((id, i) => ids.indexOf(id) !== i);
  if (dupes.length) problems.push('duplicate ids: ' + dupes.join(', '));
  return {lang, problems};
}"""


def check_accessibility(page: Any, lang: str) -> None:
    """html[lang] is `lang`; every input labelled; buttons and links have text; images alt."""
    result = page.evaluate(A11Y_CHECK)
    assert result["lang"] == lang, (page.url, result)
    assert result["problems"] == [], (page.url, result["problems"])


def screenshot(page: Any, folder: Path, name: str) -> None:
    """A full-page screenshot at the page's desktop size and one at a phone's width."""
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    size = page.viewport_size
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(folder / f"{name}-phone.png"), full_page=True)
    page.set_viewport_size(size)
