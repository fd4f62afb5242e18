"""The FastAPI application: one factory, the routers of each part, shared state.

Handlers are plain `def` functions: FastAPI runs them in its thread pool, and each opens a short
transaction on the engine (SQLAlchemy's pool is thread-safe).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from consentry.settings import Settings
from consentry.store.engine import make_engine
from consentry.tokens import Signer
from consentry.web import (
    api_admin,
    api_operations,
    api_profiles,
    hooks,
    optout,
    preferences,
    sms_hooks,
    subscribe,
    unsubscribe,
)
from consentry.web.api_common import Problem
from consentry.web.console import routes as console
from consentry.web.deps import AppState
from consentry.web.one_click import OneClickFastPath
from consentry.web.render import gettext, language, page
from consentry.web.security import SecurityHeaders

STATIC = Path(__file__).with_name("static")
_CDN = "https://cdn.jsdelivr.net"
DOCS_CSP = (f"default-src 'none'; script-src {_CDN} 'unsafe-inline'; "
            f"style-src {_CDN} 'unsafe-inline'; img-src 'self' data: https:; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'")

API_DESCRIPTION = """Consentry's REST API: profiles, consent, subscriptions, services,
quarantine, deliveries and the consent ledger. Every request carries
`Authorization: Bearer <API key>` (`consentry apikeys create NAME --role ...`); errors are
RFC 9457 problem+json; lists are cursor-paginated; POSTs accept an `Idempotency-Key`."""

# Routes that answer machines (providers, API clients) in JSON; the rest are pages.
_MACHINE_PREFIXES = ("/hooks/", "/api/", "/healthz")


def create_app(settings: Settings, engine: sa.Engine | None = None) -> FastAPI:
    engine = engine or make_engine(settings.database_url)
    with engine.begin() as conn:
        signer = Signer.for_database(conn, settings)
    app = FastAPI(title="Consentry", version="1", description=API_DESCRIPTION,
                  docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.consentry = AppState(settings, engine, signer)
    # Added first, so it runs inside SecurityHeaders: its answers get the headers too.
    app.add_middleware(OneClickFastPath)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # The OpenAPI document describes the REST API only.
    for module in (hooks, sms_hooks, unsubscribe, preferences, subscribe, optout, console):
        app.include_router(module.router, include_in_schema=False)
    for module in (api_profiles, api_operations, api_admin):
        app.include_router(module.router, prefix="/api/v1")

    @app.get("/api/docs", include_in_schema=False)
    def api_docs() -> Response:
        """Swagger UI: its script and styles come from a CDN and start inline, so this one page
        gets a Content-Security-Policy that allows them (every other page allows none)."""
        response = get_swagger_ui_html(openapi_url="/api/openapi.json",
                                       title="Consentry API")
        response.headers["Content-Security-Policy"] = DOCS_CSP
        return response

    @app.exception_handler(Problem)
    def problem(request: Request, exc: Problem) -> Response:
        return exc.response()

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/api/"):
            return Problem(exc.status_code, str(exc.detail),
                           headers=getattr(exc, "headers", None)).response()
        if request.url.path.startswith(_MACHINE_PREFIXES):
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        lang = language(request)
        if exc.status_code == 404:
            title, text = "Page not found", "The page you asked for does not exist."
        else:
            title, text = "Please try again", str(exc.detail)
        return page(request, "message.html", lang, exc.status_code,
                    title=gettext(lang, title), paragraphs=[gettext(lang, text)],
                    resend_action=None)

    @app.exception_handler(RequestValidationError)
    def bad_request(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.startswith("/api/"):
            first = exc.errors()[0] if exc.errors() else {}
            field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
            return Problem(422, "Unprocessable", str(first.get("msg", "invalid request")),
                           field).response()
        if request.url.path.startswith(_MACHINE_PREFIXES):
            return JSONResponse({"error": "invalid request"}, status_code=400)
        lang = language(request)
        return page(request, "message.html", lang, 400,
                    title=gettext(lang, "Please try again"),
                    paragraphs=[gettext(lang, "The form was open for too long or came from "
                                              "another site. Please reload the page and send "
                                              "it again.")], resend_action=None)

    return app
