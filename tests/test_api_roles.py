"""The role matrix over every route the app has when the test runs (issue 1's acceptance):

- no /api/v1 route answers without a key, with a malformed, unknown or revoked key (401);
- a viewer gets 403 on every non-GET API route and on every admin route, and reads the rest;
- an operator gets 403 on every admin route and passes authorization everywhere else;
- an admin passes authorization everywhere;
- the console (/console/...) redirects to its login or answers 401/403 without a login;
- only the public pages (/u, /p, /s, /c, /optout), the provider hooks (/hooks/...), /healthz
  and the API's documentation answer without any credentials.

Routes are found by walking app.routes, so routes added later are covered without editing this
file. Path parameters get plausible values of records that do not exist: after authorization a
route may answer 404 or 422 (the matrix is about the answer before that), and nothing changes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from consentry.auth import service as auth
from consentry.web.app import create_app

try:  # FastAPI >= 0.13x keeps included routers as branches of app.routes
    from fastapi.routing import iter_route_contexts
except ImportError:  # pragma: no cover - older FastAPI: app.routes is flat
    iter_route_contexts = None

ADMIN_MODULES = {"consentry.web.api_admin"}
ADMIN_PREFIXES = ("/api/v1/operators", "/api/v1/api-keys", "/api/v1/webhooks", "/api/v1/audit")
PUBLIC_PAGES = ("/u/", "/p/", "/s/", "/c/", "/optout")
PUBLIC_OTHER = ("/healthz", "/api/openapi.json", "/api/docs", "/docs/oauth2-redirect")
CONSOLE_LOGIN = ("/console/login",)
NOT_AUTHORIZED = (401, 403)
PARAM_VALUES = {"address": "nobody@example.invalid", "token": "not-a-token",
                "service": "no-such-service", "slug": "no-such-service"}


@dataclass(frozen=True)
class R:
    method: str
    path: str  # as requested, parameters filled in
    template: str
    module: str

    @property
    def api(self) -> bool:
        return self.template.startswith("/api/v1/")

    @property
    def admin(self) -> bool:
        return self.api and (self.module in ADMIN_MODULES
                             or self.template.startswith(ADMIN_PREFIXES))

    @property
    def console(self) -> bool:
        return self.template == "/console" or self.template.startswith("/console/")

    @property
    def public(self) -> bool:
        t = self.template
        return (t.startswith(PUBLIC_PAGES) or t.startswith("/hooks/") or t in PUBLIC_OTHER
                or t in ("/u", "/p", "/s", "/c"))

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


def _fill(template: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1).split(":")[0]
        if name in PARAM_VALUES:
            return PARAM_VALUES[name]
        return "999999"  # ids, references: records that do not exist

    return re.sub(r"\{([^}]+)\}", value, template)


def all_routes(app) -> Iterator[R]:
    routes = iter_route_contexts(app.routes) if iter_route_contexts else app.routes
    for route in routes:
        methods, path = getattr(route, "methods", None), getattr(route, "path", None)
        if not methods or not path:
            continue  # mounts (/static)
        module = getattr(getattr(route, "endpoint", None), "__module__", "") or ""
        for method in sorted(methods - {"HEAD", "OPTIONS"}):
            yield R(method, _fill(path), path, module)


def _call(client: TestClient, route: R, key: str | None = None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if route.method in ("GET", "DELETE"):
        return client.request(route.method, route.path, headers=headers)
    return client.request(route.method, route.path, headers=headers, json={})


@pytest.fixture
def world(engine, settings):
    with engine.begin() as conn:
        keys = {role: auth.create_api_key(conn, role, role, "os:tester")[1]
                for role in ("admin", "operator", "viewer")}
        revoked_id, keys["revoked"] = auth.create_api_key(conn, "gone", "admin", "os:tester")
        auth.revoke_api_key(conn, revoked_id, "os:tester")
    app = create_app(settings, engine)
    client = TestClient(app, follow_redirects=False)
    routes = list(all_routes(app))
    return client, keys, routes


def test_the_walk_finds_the_routes_of_every_part(world):
    _, _, routes = world
    templates = {r.template for r in routes}
    # The admin API, the console and the public pages, whoever wrote them.
    assert {"/api/v1/operators", "/api/v1/api-keys", "/api/v1/webhooks", "/api/v1/audit",
            "/healthz"} <= templates
    assert any(r.console for r in routes) and any(r.public for r in routes)
    assert sum(r.api for r in routes) >= 15


def test_no_api_route_answers_without_a_valid_key(world):
    client, keys, routes = world
    wrong = {"none": None, "malformed": "nonsense",
             "unknown": "csk_000000000000_" + "x" * 43, "revoked": keys["revoked"]}
    failures = []
    for route in (r for r in routes if r.api):
        for what, key in wrong.items():
            response = _call(client, route, key)
            if response.status_code != 401 or "bearer" not in response.headers.get(
                    "www-authenticate", "").lower():
                failures.append(f"{route} with {what} key: {response.status_code}")
    assert failures == []


def test_viewer_reads_and_changes_nothing(world):
    client, keys, routes = world
    failures = []
    for route in (r for r in routes if r.api):
        status = _call(client, route, keys["viewer"]).status_code
        must_refuse = route.method != "GET" or route.admin
        if must_refuse and status != 403:
            failures.append(f"{route}: viewer got {status}, expected 403")
        if not must_refuse and status in NOT_AUTHORIZED:
            failures.append(f"{route}: viewer may read but got {status}")
    assert failures == []


def test_operator_cannot_manage_operators_keys_or_webhooks(world):
    client, keys, routes = world
    failures = []
    for route in (r for r in routes if r.api):
        status = _call(client, route, keys["operator"]).status_code
        if route.admin and status != 403:
            failures.append(f"{route}: operator got {status}, expected 403")
        if not route.admin and status in NOT_AUTHORIZED:
            failures.append(f"{route}: operator may but got {status}")
    assert failures == []


def test_admin_may_do_everything(world):
    client, keys, routes = world
    failures = [f"{route}: admin got {status}" for route in routes if route.api
                for status in [_call(client, route, keys["admin"]).status_code]
                if status in NOT_AUTHORIZED]
    assert failures == []


def test_console_needs_a_login(world):
    client, keys, routes = world
    failures = []
    for route in (r for r in routes if r.console and r.template not in CONSOLE_LOGIN):
        # An API key is no console login either.
        for key in (None, keys["admin"]):
            response = _call(client, route, key)
            status = response.status_code
            location = response.headers.get("location", "")
            if status in (301, 302, 303, 307, 308):
                if "/console/login" not in location:
                    failures.append(f"{route}: redirects to {location!r}, not to the login")
            elif status not in NOT_AUTHORIZED:
                failures.append(f"{route} without a login: {status}")
    assert failures == []


def test_only_public_pages_hooks_and_healthz_answer_anonymously(world):
    client, _, routes = world
    assert client.get("/healthz").status_code == 200
    failures = []
    for route in routes:
        if route.api or route.console:
            continue  # above
        response = _call(client, route)
        status = response.status_code
        if route.public:
            # No key, no login asked for: whatever the page or hook answers after that
            # (a hook may refuse a missing provider signature).
            if "bearer" in response.headers.get("www-authenticate", "").lower():
                failures.append(f"{route}: public, but asks for an API key")
            if "/console/login" in response.headers.get("location", ""):
                failures.append(f"{route}: public, but asks for a console login")
            if route.method == "GET" and status in NOT_AUTHORIZED:
                failures.append(f"{route}: public page answered {status}")
        elif 200 <= status < 300:
            failures.append(f"{route}: not a public page, hook or /healthz, but answered "
                            f"{status} without credentials")
    assert failures == []
