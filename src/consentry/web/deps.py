"""What every router shares: the app's state (settings, engine, signer) and the raw body."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from fastapi import Request

from consentry.settings import Settings
from consentry.tokens import Signer


@dataclass
class AppState:
    settings: Settings
    engine: sa.Engine
    signer: Signer


def state(request: Request) -> AppState:
    """The app's settings, engine and signer, for a handler."""
    return request.app.state.consentry  # type: ignore[no-any-return]


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


async def raw_body(request: Request) -> bytes:
    """The body as sent (signatures cover these bytes); handlers are plain `def`, so it is
    read here, in a dependency."""
    return await request.body()
