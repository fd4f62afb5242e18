"""The REST API against its own OpenAPI document, with schemathesis: generated requests to every
operation (with an admin key) must never answer 5xx, and every answer must conform to the
document (status code, content type, body schema). Runs on SQLite and PostgreSQL; a bounded,
deterministic number of examples per operation keeps it fast and repeatable."""

from __future__ import annotations

import zlib

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as settings_
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from consentry.auth.service import create_api_key
from consentry.consent import service as consent
from consentry.delivery import service as deliveries
from consentry.delivery.content import Content
from consentry.domain.channels import Channel
from consentry.domain.ledger import Origin
from consentry.profiles import service as profiles
from consentry.web.app import create_app

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance,
          content_type_conformance]
CONFIG = schemathesis.Config.from_dict({"generation": {"mode": "positive"}})
MAX_EXAMPLES = 10  # per operation and database
MAIL = Content(subject="Hello", text="Hi\nUnsubscribe: {{ unsubscribe_url }}\n")


class Seeded:
    """What generated path parameters are steered to, so requests reach existing records
    instead of answering 404 nearly always."""

    def __init__(self, engine, settings) -> None:
        origin = Origin(source="cli", actor="os:tester")
        with engine.begin() as conn:
            self.key = create_api_key(conn, "schemathesis", "admin", "test")[1]
            consent.create_service(conn, "news", Channel.EMAIL, "News")
            consent.create_service(conn, "club", Channel.SMS, "Club", double_opt_in=True)
            self.profiles = [profiles.create(conn, settings, profiles.NewProfile(
                email=f"p{i}@example.com", phone=f"+49151234567{i:02d}",
                external_id=f"ext-{i}"), origin) for i in range(20)]
            consent.subscribe(conn, self.profiles[0], consent.get_service(conn, "news"),
                              origin)
            self.deliveries = [deliveries.create(conn, settings, deliveries.NewDelivery(
                name="June", channel=Channel.EMAIL, service="news", content=MAIL), None)]

    def steer(self, case) -> None:
        """Most generated ids, slugs and addresses are replaced by seeded ones and most
        generated cursors and idempotency keys dropped; the rest stay as generated, so the
        unknown and the invalid are tried too."""
        pools = {"profile_id": self.profiles, "delivery_id": self.deliveries,
                 "service": ["news", "club"], "address": ["p1@example.com", "+4915123456702"]}
        for params in (case.path_parameters, case.body):
            if not isinstance(params, dict):
                continue
            for name, pool in pools.items():
                value = params.get(name)
                digest = zlib.crc32(str(value).encode())
                if value is not None and digest % 4:
                    params[name] = pool[digest % len(pool)]
        # Only the API's own cursors are valid, and a reused Idempotency-Key answers 422.
        for params, name in ((case.query, "cursor"), (case.headers, "Idempotency-Key")):
            if params and params.get(name) is not None and zlib.crc32(
                    str(params[name]).encode()) % 4:
                del params[name]


@pytest.fixture
def seeded(engine, settings) -> Seeded:
    return Seeded(engine, settings)


def test_api_conforms_to_its_openapi_document(engine, settings, seeded):
    # Driven by hand rather than with schemathesis.pytest.from_fixture: its lazy loader reads
    # pytest's private Function._nodeid, which pytest 9.2 no longer has.
    app = create_app(settings, engine)
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app, config=CONFIG)
    auth = {"Authorization": f"Bearer {seeded.key}"}
    failures: dict[str, str] = {}
    operations = 0
    # Deletions last, erasures at the very end: they remove what the others are steered to.
    for operation in sorted((r.ok() for r in schema.get_all_operations()),
                            key=lambda op: (op.method.upper() == "DELETE",
                                            op.path == "/api/v1/profiles/{profile_id}")):
        operations += 1

        @settings_(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
                   suppress_health_check=list(HealthCheck),
                   phases=[Phase.explicit, Phase.generate])
        @given(case=operation.as_strategy())
        def run(case):
            seeded.steer(case)
            case.headers = {k: v for k, v in (case.headers or {}).items()
                            if k.lower() != "authorization"}
            case.call_and_validate(headers=auth, checks=CHECKS)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # every operation is tried and
            # every failure reported (schemathesis raises its findings as an exception group)
            failures[operation.label] = f"{type(exc).__name__}: {exc}"
    assert operations >= 13
    assert not failures, "\n\n".join(f"== {k}\n{v}" for k, v in failures.items())


def test_the_document_covers_the_api(engine, settings):
    document = TestClient(create_app(settings, engine)).get("/api/openapi.json").json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for path in ("/api/v1/profiles", "/api/v1/profiles/{profile_id}",
                 "/api/v1/profiles/{profile_id}/optout", "/api/v1/profiles/{profile_id}/optin",
                 "/api/v1/profiles/{profile_id}/subscriptions",
                 "/api/v1/services/{service}/subscriptions/{profile_id}",
                 "/api/v1/profiles/{profile_id}/ledger", "/api/v1/profiles/{profile_id}/export",
                 "/api/v1/profiles/{profile_id}/explain/{delivery_id}"):
        assert path in paths, path
    assert not any(p.startswith(("/u/", "/p/", "/console", "/hooks")) for p in paths)
    ids = [op["operationId"] for ops in paths.values() for op in ops.values()]
    assert len(ids) == len(set(ids))
