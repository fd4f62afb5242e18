"""Who is using the console: the session cookie, the role checks, CSRF on every form, and
the page frame every console page is rendered in.

- The cookie `consentry_session` holds the token auth.service.login handed out (the database
  keeps only its hash): HttpOnly, SameSite=Lax, Secure when the console is served over https,
  limited to /console.
- A page without a valid session redirects (303) to the login page; a role without the
  permission gets 403. Every POST carries the double-submit CSRF field (web.security); a POST
  without it, or with the wrong one, is refused with 403 before anything is read or written.
- These checks are dependencies raising the exceptions below; ConsoleRoute, the console
  router's route class, turns them into answers (the app's own HTTP error handler would drop
  the Location header of a redirect).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from starlette.routing import Match

from consentry.auth import service as auth
from consentry.auth.service import Principal
from consentry.domain.errors import ConsentryError, NotFound
from consentry.domain.roles import Permission, can
from consentry.web.deps import state
from consentry.web.render import page
from consentry.web.security import CSRF_FIELD, csrf_ok, private_page

SESSION_COOKIE = "consentry_session"
LOGIN_PATH = "/console/login"
OUTBOX_PATH = "/demo/outbox"


class LoginRequired(Exception):
    """No valid session: go to the login page."""


class Forbidden(Exception):
    """Logged in, but the role does not allow this (or the form's CSRF value is wrong)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def session_token(request: Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE)


def current(request: Request) -> Principal | None:
    """The operator of the request's session cookie, looked up once per request."""
    if hasattr(request.state, "console_principal"):
        return request.state.console_principal  # type: ignore[no-any-return]
    token = session_token(request)
    principal = None
    if token:
        with state(request).engine.connect() as conn:
            principal = auth.session(conn, token)
    request.state.console_principal = principal
    return principal


def _require(request: Request, permission: Permission) -> Principal:
    principal = current(request)
    if principal is None:
        raise LoginRequired
    if not can(principal.role, permission):
        raise Forbidden(f"Your role ({principal.role.value}) may not do this: it needs the "
                        f"{permission.value} permission.")
    return principal


def reader(request: Request) -> Principal:
    return _require(request, Permission.READ)


def admin(request: Request) -> Principal:
    return _require(request, Permission.ADMIN)


def writer(request: Request,
           csrf: Annotated[str | None, Form(alias=CSRF_FIELD)] = None) -> Principal:
    """An operator's POST: the role must allow changes and the form carry the CSRF value."""
    principal = _require(request, Permission.WRITE)
    check_csrf(request, csrf)
    return principal


def writer_preview(request: Request) -> Principal:
    """A GET only operators may see (previews of changes); nothing is changed by it."""
    return _require(request, Permission.WRITE)


def check_csrf(request: Request, submitted: str | None) -> None:
    if not csrf_ok(request, submitted):
        raise Forbidden("The form was open for too long or came from another site. Please "
                        "reload the page and send it again.")


Reader = Annotated[Principal, Depends(reader)]
Writer = Annotated[Principal, Depends(writer)]
Preview = Annotated[Principal, Depends(writer_preview)]
Admin = Annotated[Principal, Depends(admin)]


def render(request: Request, template: str, principal: Principal | None, status: int = 200,
           **context: Any) -> HTMLResponse:
    """A console page (English), never cached, with what the frame needs."""
    response = page(
        request, f"console/{template}", "en", status, principal=principal,
        can_write=principal is not None and can(principal.role, Permission.WRITE),
        can_admin=principal is not None and can(principal.role, Permission.ADMIN),
        outbox_url=OUTBOX_PATH if _has_outbox(request) else None,
        section=context.pop("section", ""), **context)
    return private_page(response)  # type: ignore[return-value]


def _has_outbox(request: Request) -> bool:
    """Whether this app shows the demo's outbox (only `consentry demo` adds it)."""
    scope = {"type": "http", "path": OUTBOX_PATH, "method": "GET", "root_path": ""}
    return any(route.matches(scope)[0] is Match.FULL for route in request.app.routes)


def set_session_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(SESSION_COOKIE, token, max_age=int(auth.SESSION_FOR.total_seconds()),
                        path="/console", httponly=True, samesite="lax",
                        secure=request.url.scheme == "https")


def clear_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/console", httponly=True, samesite="lax",
                           secure=request.url.scheme == "https")


def _login_redirect(request: Request) -> Response:
    target = LOGIN_PATH
    if request.method == "GET" and request.url.path != LOGIN_PATH:
        wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target += "?next=" + quote(wanted, safe="")
    return RedirectResponse(target, status_code=303)


class ConsoleRoute(APIRoute):
    """Turns the console's exceptions into pages: login redirect, 403, and the services'
    errors (what the operator asked for cannot be done) as a 400 or 404 page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def console_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                return _login_redirect(request)
            except Forbidden as exc:
                return render(request, "message.html", current(request), 403,
                              title="Not allowed", message=exc.message)
            except NotFound as exc:
                return render(request, "message.html", current(request), 404,
                              title="Not found", message=str(exc))
            except ConsentryError as exc:
                return render(request, "message.html", current(request), 400,
                              title="That did not work", message=str(exc))

        return console_handler
