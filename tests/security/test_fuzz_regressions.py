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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_world(request, sender_config, tmp_path, sign, claims_for):
    """The same world on either database: PostgreSQL refuses NUL in text (the driver
    raised, a 500), SQLite took it."""
    config = dict(sender_config)
    if request.param == "postgresql":
        config["database_url"] = request.getfixturevalue("pg_url")
    w = route_world.build(config, tmp_path, sign, claims_for)
    yield w
    w.app.extensions["gateway"].close()


def test_a_nul_in_the_url_is_400(any_world):
    client = any_world.app.test_client()
    for role, url in [("operator", "/transfers/a%00b"), ("operator", "/authorizations/a%00b"),
                      ("operator", "/transfers?authorization=a%00b"), ("operator", "/authorizations?status=a%00"),
                      ("auditor", "/audit/events?actor=a%00b"), ("auditor", "/audit/transfers/a%00/chain"),
                      ("recipient", "/inbox/a%00b/bundle"), ("peer", "/fhir/Binary/a%00")]:
        r = client.get(url, headers=any_world.headers(role))
        assert "NUL" in _outcome(r, 400)["diagnostics"], url


def test_a_nul_or_a_number_where_text_belongs_in_a_body_is_400(any_world):
    client, ids = any_world.app.test_client(), any_world.ids
    operator = any_world.headers("operator")
    for path, body, says in [
        ("/transfers", {"authorization": "a\x00", "sources": ["records"], "recipient": "center"}, "NUL"),
        (f"/authorizations/{ids['auth_id']}/revoke", {"reason": "x\x00y"}, "NUL"),
        (f"/transfers/{ids['transfer_id']}/cancel", {"reason": 5}, "'reason' must be text"),
        (f"/faxes/review/{ids['fax_id']}/reject", {"reason": 5}, "'reason' must be text"),
    ]:
        r = client.post(path, json=body, headers=operator)
        assert says in _outcome(r, 400)["diagnostics"], path
    # nothing of it was taken: the authorization stands, the transfer runs, the fax waits
    assert client.get(f"/authorizations/{ids['auth_id']}", headers=operator).get_json()["status"] == "active"
    assert client.get(f"/transfers/{ids['transfer_id']}", headers=operator).get_json()["state"] == "pending"
    assert client.get(f"/faxes/review/{ids['fax_id']}", headers=operator).status_code == 200


def _deliver(world, tmp_path, change):
    """A bundle from the test's trusted hospital, changed by `change` before it is signed."""
    from gateway.trust.receipts import SIGNATURE_HEADER, sign_bundle
    import secrets
    import uuid

    hospital = SigningKeys(tmp_path / "route-hospital-keys")
    data = json.loads(route_world._received_bundle(route_world._patient(), str(uuid.uuid4()),
                                                   "1.2.826.0.1.7"))
    change(data)
    body = json.dumps(data).encode()
    return world.app.test_client().post("/fhir", data=body, content_type="application/fhir+json", headers={
        **world.headers("peer"), "Idempotency-Key": secrets.token_hex(8),
        SIGNATURE_HEADER: sign_bundle(hospital, body, "x")})


def _group_list(value: str, part: str) -> dict:
    from gateway.exchange.ids import GROUP_SYSTEM, PART_EXT

    return {"fullUrl": "urn:uuid:33333333-0000-4000-8000-000000000001",
            "request": {"method": "POST", "url": "List"},
            "resource": {"resourceType": "List", "status": "current", "mode": "working",
                         "identifier": [{"system": GROUP_SYSTEM, "value": value}],
                         "extension": [{"url": PART_EXT, "valueString": part}]}}


@pytest.mark.parametrize("change,says", [
    (lambda d: d["identifier"].update(value="urn:uuid:a\x00b"), "Bundle.identifier.value"),
    (lambda d: d["identifier"].update(value="urn:x:" + "a" * 300), "Bundle.identifier.value"),
    (lambda d: d["entry"].append(_group_list("g\x00", "1/1")), "submission group"),
    (lambda d: d["entry"].append(_group_list("g-1", "1/99999999999")), "the part must be"),
])
def test_a_bundle_with_values_no_column_holds_is_422(any_world, tmp_path, change, says):
    """From a trusted peer still: a NUL or an oversized value failed in the database (500)."""
    r = _deliver(any_world, tmp_path, change)
    assert says in _outcome(r, 422)["diagnostics"]
    inbox = any_world.app.test_client().get("/inbox", headers=any_world.headers("recipient"))
    assert len(inbox.get_json()["received"]) == 1  # the seeded one only
