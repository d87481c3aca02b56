"""What schemathesis found, kept as plain cases: each answer is a 4xx OperationOutcome,
never a 5xx. A peer's bad "opened" receipt is the peer's fault (422, it was 502); a
reply with no way back to its sender is a conflict to configure (409, it was 500); a
number too large for the database is a bad request (400, it was 500)."""
from __future__ import annotations

import base64
import json

import pytest

from gateway.trust.keys import SigningKeys
from gateway.trust.receipts import OPENED_TYP

from tests.helpers import RECEIVER_ORG
from tests.security import route_world


@pytest.fixture
def world(sender_config, tmp_path, sign, claims_for):
    w = route_world.build(sender_config, tmp_path, sign, claims_for)
    yield w
    w.app.extensions["gateway"].close()


def _outcome(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/fhir+json"
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]


def _unsigned(claims: dict) -> str:
    part = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJFZERTQSJ9.{part}.c2ln"


def _opened_claims(world) -> dict:
    return {"iss": RECEIVER_ORG, "bundle": f"urn:uuid:{world.ids['doc_id']}", "openedBy": "dr-x",
            "openedAt": "2026-01-02T00:00:00+00:00", "receipt_id": "r-1"}


@pytest.mark.parametrize("jws", ["c-store", "a.b.c", "..", "x." + "A" * 40 + ".y"])
def test_an_opened_receipt_that_is_no_jws_is_422(world, jws):
    client = world.app.test_client()
    issue = _outcome(client.post("/receipts", json={"jws": jws}, headers=world.headers("peer")), 422)
    assert issue["code"] == "security" and "compact JWS" in issue["diagnostics"]


def test_an_opened_receipt_from_an_unknown_organization_is_422(world):
    claims = dict(_opened_claims(world), iss="org-nobody")
    r = world.app.test_client().post("/receipts", json={"jws": _unsigned(claims)},
                                     headers=world.headers("peer"))
    assert "do not deliver to" in _outcome(r, 422)["diagnostics"]


def test_an_opened_receipt_signed_by_a_stranger_is_422(world, tmp_path):
    stranger = SigningKeys(tmp_path / "stranger")
    stranger.ensure()
    jws = stranger.sign(_opened_claims(world), OPENED_TYP)
    r = world.app.test_client().post("/receipts", json={"jws": jws}, headers=world.headers("peer"))
    assert "signature does not verify" in _outcome(r, 422)["diagnostics"]


def test_a_reply_with_no_way_back_to_its_sender_is_409(world):
    report = {"resourceType": "DiagnosticReport", "status": "final",
              "code": {"text": "Second opinion"}, "conclusion": "Agree with the plan."}
    r = world.app.test_client().post(f"/inbox/{world.ids['received_id']}/reply", json=report,
                                     headers=world.headers("recipient"))
    issue = _outcome(r, 409)
    assert route_world.PEER_NAME in issue["diagnostics"] and "base_url" in issue["diagnostics"]


@pytest.mark.parametrize("url", [
    "/audit/checkpoints?since_size=-873239281343184867688448&limit=100",
    "/audit/checkpoints?since_size=9223372036854775808",
    "/audit/consistency?first=0&second=99999999999999999999",
    "/audit/consistency?first=-1",
    "/audit/events/99999999999999999999999/proof",
    "/audit/events/1/proof?tree_size=-1",
    "/audit/events?after=99999999999999999999",
    "/transfers?limit=99999999999999999999",
])
def test_numbers_beyond_a_database_integer_are_400(world, url):
    """A number no BIGINT holds failed in the database driver (OverflowError, 500); every
    count, size and sequence number is now checked at the edge, negatives included."""
    r = world.app.test_client().get(url, headers=world.headers("admin"))
    assert "whole number" in _outcome(r, 400)["diagnostics"]
