"""The FastAPI application: one factory, the routers of each part, shared state.

Handlers are plain `def` functions: FastAPI runs them in its thread pool, and each opens a short
transaction on the engine (SQLAlchemy's pool is thread-safe).
"""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from consentry.settings import Settings
from consentry.store.engine import make_engine
from consentry.tokens import Signer
from consentry.web import hooks, sms_hooks
from consentry.web.deps import AppState


def create_app(settings: Settings, engine: sa.Engine | None = None) -> FastAPI:
    engine = engine or make_engine(settings.database_url)
    with engine.begin() as conn:
        signer = Signer.for_database(conn, settings)
    app = FastAPI(title="Consentry", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.consentry = AppState(settings, engine, signer)
    app.include_router(hooks.router)
    app.include_router(sms_hooks.router)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    return app
