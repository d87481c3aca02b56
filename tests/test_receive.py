"""Receive mode: idempotent acceptance, validation, signed receipts."""
import json

import pytest

from gateway import create_app
from gateway.keys import verify_jws

from tests.helpers import bearer, make_token


@pytest.fixture
def receiver(receiver_config):
    app = create_app(receiver_config)
    app.extensions["gateway"].keys.ensure()
    yield app
    app.extensions["gateway"].close()


@pytest.fixture
def peer(receiver):
    return bearer(make_token(receiver, "peer", "hospital-a"))


def bundle(n: int = 1, ident: str = "urn:uuid:6e0b7c1e-3f38-4a8f-9d7e-1c2b3a4d5e6f") -> bytes:
    return json.dumps({
        "resourceType": "Bundle", "type": "transaction",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": ident},
        "entry": [{"fullUrl": f"urn:uuid:00000000-0000-4000-8000-00000000000{i}",
                   "resource": {"resourceType": "Binary", "contentType": "text/plain", "data": "aGk="},
                   "request": {"method": "POST", "url": "Binary"}} for i in range(n)],
    }).encode()


def post(client, headers, body, key="key-1", **extra):
    return client.post("/fhir", data=body, headers={**headers, "Idempotency-Key": key, **extra},
                       content_type="application/fhir+json")


def test_accepts_and_signs_a_receipt(receiver, peer):
    client = receiver.test_client()
    body = bundle(2)
    r = post(client, peer, body)
    assert r.status_code == 200
    reply = r.get_json()
    assert reply["type"] == "transaction-response" and len(reply["entry"]) == 2
    import base64
    import hashlib
    jws = base64.b64decode(reply["signature"]["data"]).decode()
    claims = verify_jws(jws, client.get("/.well-known/jwks.json").get_json(), "delivery-receipt+jwt")
    assert claims["sha256"] == hashlib.sha256(body).hexdigest()
    assert claims["size"] == len(body) and claims["entries"] == 2
    assert claims["bundle"] == "urn:uuid:6e0b7c1e-3f38-4a8f-9d7e-1c2b3a4d5e6f"
    assert claims["sender"] == "hospital-a" and claims["status"] == "accepted"


def test_replay_returns_the_original_and_stores_once(receiver, peer):
    client = receiver.test_client()
    first = post(client, peer, bundle())
    again = post(client, peer, bundle())
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["signature"] == first.get_json()["signature"]
    staff = bearer(make_token(receiver, "recipient"))
    assert len(client.get("/inbox", headers=staff).get_json()["received"]) == 1
    other = post(client, peer, bundle(3))
    assert other.status_code == 422
    assert "different bundle" in other.get_json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("body,status,text", [
    (b"{not json", 400, "not JSON"),
    (b'{"resourceType": "Patient"}', 422, "not a FHIR Bundle"),
    (json.dumps({"resourceType": "Bundle", "type": "batch"}).encode(), 422, "transaction"),
    (json.dumps({"resourceType": "Bundle", "type": "transaction",
                 "entry": [{"resource": {"resourceType": "Binary", "contentType": 5}}]}).encode(),
     422, "invalid Bundle"),
    (json.dumps({"resourceType": "Bundle", "type": "transaction"}).encode(), 422, "identifier"),
])
def test_bad_bundles_get_outcomes(receiver, peer, body, status, text):
    r = post(receiver.test_client(), peer, body)
    assert r.status_code == status
    assert text in r.get_json()["issue"][0]["diagnostics"]


def test_idempotency_key_required_and_checked(receiver, peer):
    client = receiver.test_client()
    for key in ["", "has space", "x" * 200, "../etc"]:
        assert post(client, peer, bundle(), key=key).status_code == 400


def test_oversized_body_is_413(receiver_config, tmp_path):
    app = create_app({**receiver_config, "max_body_bytes": 1000})
    client = app.test_client()
    headers = bearer(make_token(app, "peer"))
    r = post(client, headers, bundle(20))
    assert r.status_code == 413
    assert r.get_json()["resourceType"] == "OperationOutcome"
    app.extensions["gateway"].close()


def test_receive_mode_has_no_sending_endpoints(receiver, peer):
    client = receiver.test_client()
    assert client.post("/transfers", headers=peer).status_code == 404
