"""Receive side of documents uploaded before their bundle, in process: PUT/HEAD
/fhir/Binary/{id}, a bundle that references an upload missing or different is refused
all or nothing, the receipt names what is held, the inbox serves it like inline ones."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from gateway.exchange.attachments import SHA256_EXT
from gateway.exchange.ids import etag
from gateway.trust.keys import verify_jws

from tests.helpers import bearer, make_token
from tests.test_receive import PATIENT, bundle, post, receipt_of

SCAN = os.urandom(300_000)
OTHER = SCAN[:-1] + bytes([SCAN[-1] ^ 1])  # other bytes, whatever the last one was
BID = "5d3c1d8e-7a3b-5a6e-9c1f-000000000001"
DOC_URL = "urn:uuid:11111111-0000-4000-8000-0000000000d1"


def with_upload(sha256: str = hashlib.sha256(SCAN).hexdigest(), size: int = len(SCAN),
                binary: str = BID, declare: bool = True) -> bytes:
    data = json.loads(bundle(0))
    attachment = {"contentType": "application/pdf", "url": f"Binary/{binary}", "size": size,
                  "title": "scan.pdf"}
    if declare:
        attachment["extension"] = [{"url": SHA256_EXT, "valueString": sha256}]
    data["entry"].append({"fullUrl": DOC_URL, "request": {"method": "POST", "url": "DocumentReference"},
                          "resource": {"resourceType": "DocumentReference", "status": "current",
                                       "subject": {"reference": PATIENT},
                                       "type": {"coding": [{"system": "http://loinc.org",
                                                            "code": "11506-3", "display": "Progress note"}]},
                                       "content": [{"attachment": attachment}]}})
    return json.dumps(data).encode()


def put(client, peer, body: bytes, binary: str = BID, **headers):
    return client.put(f"/fhir/Binary/{binary}", data=body,
                      headers={**peer, "Content-Type": "application/pdf", **headers})


def test_upload_then_bundle_is_accepted_receipted_and_served(receiver, peer, sender_keys):
    client = receiver.test_client()
    assert client.head(f"/fhir/Binary/{BID}", headers=peer).status_code == 404
    r = put(client, peer, SCAN)
    assert r.status_code == 201, r.get_json()
    sha = hashlib.sha256(SCAN).hexdigest()
    assert r.headers["ETag"] == etag(sha)
    again = put(client, peer, SCAN)  # a repeat of the same bytes: idempotent
    assert again.status_code == 200 and again.headers["ETag"] == etag(sha)
    head = client.head(f"/fhir/Binary/{BID}", headers=peer)
    assert head.status_code == 200 and head.headers["ETag"] == etag(sha)

    r = post(client, peer, with_upload(), sender_keys)
    assert r.status_code == 200, r.get_json()
    claims = receipt_of(r.get_json(), client.get("/.well-known/jwks.json").get_json())
    assert claims["attachments"] == {f"Binary/{BID}": {"sha256": sha, "size": len(SCAN)}}

    staff = bearer(make_token(receiver, "recipient"))
    [item] = client.get("/inbox", headers=staff).get_json()["received"]
    [doc] = client.get(f"/inbox/{item['id']}/documents", headers=staff).get_json()["documents"]
    assert doc["size"] == len(SCAN)
    content = client.get(doc["content"], headers=staff)
    assert content.status_code == 200 and content.mimetype == "application/pdf"
    assert hashlib.sha256(content.data).hexdigest() == sha
    # accepted: its bytes can no longer change
    r = put(client, peer, OTHER)
    assert r.status_code == 422 and "cannot change" in r.get_json()["issue"][0]["diagnostics"]
    assert client.head(f"/fhir/Binary/{BID}", headers=peer).headers["ETag"] == etag(sha)


@pytest.mark.parametrize("upload,body,text", [
    (None, with_upload(), "was not uploaded before it"),
    (OTHER, with_upload(), "differ from the sha256"),  # other bytes than named
    (SCAN, with_upload(size=len(SCAN) + 1), "differ in size"),
    (SCAN, with_upload(declare=False), "names no sha256"),
], ids=["missing", "other-bytes", "other-size", "no-sha256"])  # stable ids: the bodies are dated
def test_missing_or_different_upload_refuses_the_bundle(receiver, peer, sender_keys, upload, body, text):
    client = receiver.test_client()
    if upload is not None:
        assert put(client, peer, upload).status_code == 201
    r = post(client, peer, body, sender_keys)
    assert r.status_code == 422, r.get_json()
    assert text in r.get_json()["issue"][0]["diagnostics"]
    jwks = client.get("/.well-known/jwks.json").get_json()
    rejected = verify_jws(r.headers["X-Delivery-Receipt"], jwks, "delivery-receipt+jwt")
    assert rejected["status"] == "rejected" and text in rejected["outcome"]["issue"][0]["diagnostics"]
    staff = bearer(make_token(receiver, "recipient"))
    assert client.get("/inbox", headers=staff).get_json()["received"] == []  # nothing stored
    # the right bytes, then the same bundle again: accepted (the refusal freed the key)
    assert put(client, peer, SCAN).status_code in (200, 201)
    assert post(client, peer, with_upload(), sender_keys).status_code == 200


def test_upload_limits_and_who_may_upload(receiver_config, tmp_path, sender_keys):
    from gateway import create_app

    config = {**receiver_config, "max_binary_bytes": 1000, "max_body_bytes": 500, "senders": {"hospital-a": {
        "organization": "org-test-hospital", "jwks_file": str(tmp_path / "hospital-a-jwks.json")}}}
    app = create_app(config)
    try:
        client = app.test_client()
        peer = bearer(make_token(app, "peer", "hospital-a"))
        r = put(client, peer, b"x" * 1001)
        assert r.status_code == 413 and "1000 byte limit" in r.get_json()["issue"][0]["diagnostics"]
        assert put(client, peer, b"x" * 1000).status_code == 201  # over max_body_bytes: not a bundle
        assert put(client, peer, b"x", binary="../etc").status_code in (400, 404)
        assert put(client, peer, b"x", binary="a" * 65).status_code == 400
        stranger = bearer(make_token(app, "peer", "hospital-b"))  # a peer token, not a sender
        assert put(client, stranger, b"x").status_code == 403
        staff = bearer(make_token(app, "recipient"))
        assert put(client, staff, b"x").status_code == 403
        assert client.head(f"/fhir/Binary/{BID}", headers=stranger).status_code == 404
    finally:
        app.extensions["gateway"].close()


def test_uploads_no_bundle_took_expire(receiver, peer, sender_keys):
    from datetime import timedelta

    from gateway.storage.models import ReceivedBinary, utcnow
    from gateway.inbound.uploads import sweep_now

    client = receiver.test_client()
    other = "5d3c1d8e-7a3b-5a6e-9c1f-000000000002"
    assert put(client, peer, SCAN).status_code == 201
    assert put(client, peer, b"never referenced", binary=other).status_code == 201
    assert post(client, peer, with_upload(), sender_keys).status_code == 200
    svc = receiver.extensions["gateway"]
    assert sweep_now(svc) == 0  # young
    with svc.db.session() as s:
        rows = s.query(ReceivedBinary).all()
        for row in rows:
            row.received_at = utcnow() - timedelta(days=8)
        keys = {row.binary_id: row.blob_key for row in rows}
    assert sweep_now(svc) == 1
    assert not svc.blobs.exists(keys[other]) and svc.blobs.exists(keys[BID])
    assert client.head(f"/fhir/Binary/{other}", headers=peer).status_code == 404
    assert client.head(f"/fhir/Binary/{BID}", headers=peer).status_code == 200  # its bundle's
