"""The frame every public page shares: languages, security headers, error pages, CSRF."""

from __future__ import annotations

import pytest
from babel.messages.pofile import read_po
from fastapi import FastAPI, Form, Request
from fastapi.testclient import TestClient

from consentry.tokens import ExpiredToken, InvalidToken, Signer
from consentry.web import i18n
from consentry.web.app import create_app
from consentry.web.render import page
from consentry.web.security import CSRF_COOKIE, CSRF_FIELD, RateLimiter, csrf_ok, is_bot


@pytest.mark.parametrize(("query", "profile", "accept", "chosen"), [
    ("de", None, None, "de"),
    ("en", "de_DE", "de", "en"),  # ?lang= first
    (None, "de_DE", "en-GB", "de"),  # then the profile's locale
    (None, None, "fr-CH, de-AT;q=0.8, en;q=0.5", "de"),  # then Accept-Language
    (None, None, "fr, it", "en"),
    ("xx", None, "garbage;;q=x", "en"),
    (None, None, None, "en"),
])
def test_language_choice(query, profile, accept, chosen):
    assert i18n.choose(query, profile, accept) == chosen


def test_every_german_catalog_entry_is_translated():
    for po_file in (i18n.LOCALES_DIR / "de" / "LC_MESSAGES").glob("*.po"):
        with po_file.open("rb") as f:
            catalog = read_po(f, locale="de")
        untranslated = [m.id for m in catalog if m.id and not m.string]
        assert untranslated == [], po_file.name


def test_not_found_page_in_german_with_headers(engine, settings):
    client = TestClient(create_app(settings, engine))
    response = client.get("/nowhere?lang=de")
    assert response.status_code == 404
    assert '<html lang="de">' in response.text
    assert "Seite nicht gefunden" in response.text
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}


def test_csrf_double_submit():
    app = FastAPI()

    @app.get("/form")
    def form(request: Request):
        return page(request, "message.html", "en", title="t", paragraphs=[],
                    resend_action="/form")

    @app.post("/form")
    def post(request: Request, token: str = Form("", alias=CSRF_FIELD)):
        return {"ok": csrf_ok(request, token)}

    client = TestClient(app)
    shown = client.get("/form")
    cookie = shown.cookies[CSRF_COOKIE]
    assert f'value="{cookie}"' in shown.text
    assert "samesite=strict" in shown.headers["set-cookie"].lower()
    assert client.post("/form", data={CSRF_FIELD: cookie}).json() == {"ok": True}
    assert client.post("/form", data={CSRF_FIELD: "forged"}).json() == {"ok": False}
    stranger = TestClient(app)  # no cookie: a form posted from another site
    assert stranger.post("/form", data={CSRF_FIELD: cookie}).json() == {"ok": False}


def test_rate_limiter_and_honeypot():
    limiter = RateLimiter(limit=2, window=60)
    assert [limiter.allow("ip", now=t) for t in (0, 1, 2)] == [True, True, False]
    assert limiter.allow("other", now=2)
    assert limiter.allow("ip", now=61)  # the first one left the window
    assert is_bot("http://spam.example") and not is_bot("") and not is_bot(None)


def test_confirmation_tokens_expire_and_still_say_whose():
    signer = Signer(["old-key", "new-key"])
    token = signer.confirmation_token(7, "news")
    assert signer.read_confirmation_token(token, max_age_seconds=3600) == (7, "news")
    with pytest.raises(ExpiredToken) as expired:
        signer.read_confirmation_token(token, max_age_seconds=-1)
    assert (expired.value.profile_id, expired.value.service_slug) == (7, "news")
    with pytest.raises(InvalidToken):
        signer.read_confirmation_token(token[:-2] + "xx", max_age_seconds=3600)
    # Rotation: a link signed with the old key still verifies after a new key is added.
    rotated = Signer(["old-key", "new-key", "newest"])
    assert rotated.read_confirmation_token(token, max_age_seconds=3600) == (7, "news")
    with pytest.raises(InvalidToken):
        Signer(["unrelated"]).read_confirmation_token(token, max_age_seconds=3600)


def test_api_docs_page_may_load_swagger_ui_and_nothing_else_may(engine, settings):
    client = TestClient(create_app(settings, engine))
    docs = client.get("/api/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert "script-src https://cdn.jsdelivr.net" in docs.headers["content-security-policy"]
    schema = client.get("/api/openapi.json").json()
    assert schema["openapi"].startswith("3.") and schema["paths"]
    assert all(path.startswith("/api/v1/") for path in schema["paths"])
    assert "script-src" not in client.get("/nowhere").headers["content-security-policy"]
