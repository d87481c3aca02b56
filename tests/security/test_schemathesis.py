"""Schemathesis over the app's own /openapi.json, in process: every operation called with
a token of a role it allows, with valid and invalid data, and with the real ids of seeded
objects in its path; no answer may be a 5xx, and every answer must match the document
(status, media type, schema). Repeatable: derandomized, a bounded number of examples."""
from __future__ import annotations

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.security import route_world

EXAMPLES = 25  # per operation; the whole run stays well under a minute
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance,
          status_code_conformance]


@schemathesis.serializer("multipart/related", "application/jose")
def _raw(_ctx, value):
    """STOW-RS bodies and compact JWS go as the bytes generated (to test refusals)."""
    return value if isinstance(value, bytes) else str(value).encode()


@pytest.fixture
def world(sender_config, tmp_path, sign, claims_for):
    w = route_world.build(sender_config, tmp_path, sign, claims_for)
    yield w
    w.app.extensions["gateway"].close()


def _strategies(op, ids: dict):
    """Valid data, invalid data, and valid data aimed at the seeded objects."""
    out = [op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE)]
    names = [p["name"] for p in op.definition.raw.get("parameters", []) if p["in"] == "path"]
    if names:
        seeded = {n: int(ids[n]) if n == "seq" else ids[n] for n in names}
        out.append(op.as_strategy(GenerationMode.POSITIVE, path_parameters=seeded))
    return st.one_of(*out)


def test_no_server_error_and_no_schema_violation(world):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", world.app)
    failures, called = [], {}
    for result in schema.get_all_operations():
        op = result.ok()
        roles = op.definition.raw.get("x-roles") or []
        headers = world.headers(roles[0]) if roles else {}
        statuses = called.setdefault(op.label, set())

        @given(case=_strategies(op, world.ids))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            # the role's token, never one schemathesis made up for the bearer scheme
            case.headers = {**(case.headers or {}), **headers}
            response = case.call()
            statuses.add(response.status_code)
            case.validate_response(response, checks=CHECKS, headers=headers)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis: a group, with a reproduction
            failures.append(f"{op.label}: {exc}")
    assert failures == [], "\n\n".join(failures)
    doc = world.app.test_client().get("/openapi.json").get_json()
    every = {f"{m.upper()} {p}" for p, item in doc["paths"].items() for m in item}
    assert set(called) == every - {"GET /openapi.json"}  # schemathesis leaves out its own source
    # the tokens worked: every secured operation answered something other than 401/403
    secured = {f"{m.upper()} {p}" for p, item in doc["paths"].items()
               for m, op in item.items() if op.get("x-roles")}
    assert [label for label in secured if called[label] <= {401, 403}] == []
