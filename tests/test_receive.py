"""Receive mode in process: signed bundles from a trusted sender, Consent checks,
idempotent acceptance, validation, signed receipts with per-entry hashes."""
import base64
import hashlib
import json

import pytest

from gateway import create_app
from gateway.trust.authorizations import example_claims
from gateway.exchange.ids import entry_hash
from gateway.trust.keys import SigningKeys, verify_jws
from gateway.trust.receipts import SIGNATURE_HEADER, sign_bundle

from tests.helpers import RECEIVER_ORG, SENDER_ORG, bearer, make_token

PATIENT = "urn:uuid:6e0b7c1e-3f38-4a8f-9d7e-000000000001"


@pytest.fixture
def sender_keys(tmp_path):
    keys = SigningKeys(tmp_path / "hospital-a-keys")
    keys.ensure()
    (tmp_path / "hospital-a-jwks.json").write_text(json.dumps(keys.jwks()))
    return keys


@pytest.fixture
def receiver(receiver_config, tmp_path, sender_keys):
    config = {**receiver_config, "senders": {"hospital-a": {
        "organization": SENDER_ORG, "jwks_file": str(tmp_path / "hospital-a-jwks.json")}}}
    app = create_app(config)
    app.extensions["gateway"].keys.ensure()
    yield app
    app.extensions["gateway"].close()


@pytest.fixture
def peer(receiver):
    return bearer(make_token(receiver, "peer", "hospital-a"))


def consent(recipient: str = RECEIVER_ORG, discloser: str = SENDER_ORG, **kw) -> dict:
    claims = example_claims("https://esign.test.invalid", "j-1",
                            disclosers=[{"id": discloser, "name": "Hospital", "endpoints": [
                                {"type": "pdf-folder", "address": "/x"}]}],
                            recipient={"id": recipient, "name": "Center", "endpoint": {
                                "type": "gateway", "address": "http://127.0.0.1:1"}}, **kw)
    body = dict(claims["consent"], patient={"reference": PATIENT})
    return body


def bundle(n: int = 1, ident: str = "urn:uuid:6e0b7c1e-3f38-4a8f-9d7e-1c2b3a4d5e6f",
           the_consent: dict | None = None) -> bytes:
    entries = [{"fullUrl": PATIENT, "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"}},
               {"fullUrl": "urn:uuid:6e0b7c1e-3f38-4a8f-9d7e-000000000002",
                "resource": the_consent or consent(), "request": {"method": "POST", "url": "Consent"}}]
    entries += [{"fullUrl": f"urn:uuid:00000000-0000-4000-8000-00000000000{i}",
                 "resource": {"resourceType": "Binary", "contentType": "text/plain", "data": "aGk="},
                 "request": {"method": "POST", "url": "Binary"}} for i in range(n)]
    return json.dumps({"resourceType": "Bundle", "type": "transaction",
                       "identifier": {"system": "urn:ietf:rfc:3986", "value": ident},
                       "entry": entries}).encode()


def post(client, headers, body, keys=None, key="key-1", signature=None, **extra):
    if signature is None:
        signature = sign_bundle(keys, body, "x") if keys is not None else ""
    return client.post("/fhir", data=body, headers={**headers, "Idempotency-Key": key,
                                                    SIGNATURE_HEADER: signature, **extra},
                       content_type="application/fhir+json")


def receipt_of(reply: dict, jwks: dict) -> dict:
    jws = base64.b64decode(reply["signature"]["data"]).decode()
    return verify_jws(jws, jwks, "delivery-receipt+jwt")


def test_accepts_and_signs_a_receipt_with_entry_hashes(receiver, peer, sender_keys):
    client = receiver.test_client()
    body = bundle(2)
    r = post(client, peer, body, sender_keys)
    assert r.status_code == 200, r.get_json()
    reply = r.get_json()
    assert reply["type"] == "transaction-response" and len(reply["entry"]) == 4
    assert all(e["response"]["status"] == "201 Created" for e in reply["entry"])
    claims = receipt_of(reply, client.get("/.well-known/jwks.json").get_json())
    assert claims["sha256"] == hashlib.sha256(body).hexdigest()
    assert claims["size"] == len(body) and claims["entries"] == 4
    assert claims["bundle"] == "urn:uuid:6e0b7c1e-3f38-4a8f-9d7e-1c2b3a4d5e6f"
    assert claims["sender"] == SENDER_ORG and claims["status"] == "accepted"
    assert claims["recipient"] == RECEIVER_ORG
    sent = json.loads(body)
    assert claims["entryHashes"] == {e["fullUrl"]: entry_hash(e["resource"]) for e in sent["entry"]}


def test_replay_returns_the_original_and_stores_once(receiver, peer, sender_keys):
    client = receiver.test_client()
    body = bundle()  # once: its Consent's period is taken from the clock, to the second
    first = post(client, peer, body, sender_keys)
    again = post(client, peer, body, sender_keys)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    staff = bearer(make_token(receiver, "recipient"))
    assert len(client.get("/inbox", headers=staff).get_json()["received"]) == 1
    other = post(client, peer, bundle(3), sender_keys)
    assert other.status_code == 422
    assert "different bundle" in other.get_json()["issue"][0]["diagnostics"]
    # the same bundle under a new key is a replay, refused
    replayed = post(client, peer, bundle(), sender_keys, key="key-2")
    assert replayed.status_code == 422
    assert "already received" in replayed.get_json()["issue"][0]["diagnostics"]
    assert len(client.get("/inbox", headers=staff).get_json()["received"]) == 1


def test_unsigned_wrongly_signed_and_untrusted_bundles_are_refused(receiver, peer, sender_keys, tmp_path):
    client = receiver.test_client()
    body = bundle()
    assert post(client, peer, body).status_code == 403  # no signature
    stranger = SigningKeys(tmp_path / "stranger")
    stranger.ensure()
    r = post(client, peer, body, stranger)
    assert r.status_code == 403 and "does not verify" in r.get_json()["issue"][0]["diagnostics"]
    tampered = body.replace(b'"aGk="', b'"aGl="')
    r = post(client, peer, tampered, signature=sign_bundle(sender_keys, body, "x"))
    assert r.status_code == 403
    other_peer = bearer(make_token(receiver, "peer", "hospital-b"))
    r = post(client, other_peer, body, sender_keys)
    assert r.status_code == 403 and "not a trusted sender" in r.get_json()["issue"][0]["diagnostics"]
    staff = bearer(make_token(receiver, "recipient"))
    assert client.get("/inbox", headers=staff).get_json()["received"] == []
    # a refusal stores nothing and frees the key: the right bundle then goes through
    assert post(client, peer, body, sender_keys).status_code == 200


@pytest.mark.parametrize("the_consent,text", [
    (consent(recipient="org-someone-else"), "does not name this recipient"),
    (consent(discloser="org-other-hospital"), "sender as a discloser"),
    (dict(consent(), status="inactive"), "not active"),
    (consent(valid_days=-1), "period"),
    (consent(data_classes=("documents",)), None),  # a Binary no record points at: a document
])
def test_consent_must_cover_the_delivery(receiver, peer, sender_keys, the_consent, text):
    r = post(receiver.test_client(), peer, bundle(the_consent=the_consent), sender_keys)
    if text is None:
        assert r.status_code == 200
    else:
        assert r.status_code == 403, r.get_json()
        assert text in r.get_json()["issue"][0]["diagnostics"]
        # the refusal is signed too: a receipt with status "rejected" and the outcome
        jwks = receiver.test_client().get("/.well-known/jwks.json").get_json()
        claims = verify_jws(r.headers["X-Delivery-Receipt"], jwks, "delivery-receipt+jwt")
        assert claims["status"] == "rejected" and claims["idempotencyKey"] == "key-1"
        assert text in claims["outcome"]["issue"][0]["diagnostics"]


@pytest.mark.parametrize("ahead_s,accepted", [(0, True), (290, True), (330, False), (3600, False)])
def test_a_consent_from_a_clock_ahead_of_ours_within_the_tolerance(receiver, peer, sender_keys,
                                                                    ahead_s, accepted):
    """Issue 15, clock skew: a Consent stamped by a clock up to five minutes ahead of the
    receiver's is accepted; further ahead it is refused with a message naming the cause."""
    from datetime import datetime, timedelta, timezone

    ahead = consent(now=datetime.now(timezone.utc) + timedelta(seconds=ahead_s))
    r = post(receiver.test_client(), peer, bundle(the_consent=ahead), sender_keys)
    if accepted:
        assert r.status_code == 200, r.get_json()
    else:
        assert r.status_code == 403
        text = r.get_json()["issue"][0]["diagnostics"]
        assert "tolerance of 300 s" in text and "clocks" in text


def test_consent_must_cover_the_data_classes(receiver, peer, sender_keys):
    data = json.loads(bundle(the_consent=consent(data_classes=("labs",))))
    data["entry"].append({"fullUrl": "urn:uuid:6e0b7c1e-3f38-4a8f-9d7e-000000000009", "resource": {
        "resourceType": "Composition", "status": "final", "type": {"text": "summary"},
        "date": "2026-01-01", "author": [{"display": "x"}], "title": "t",
        "section": [{"title": "Notes", "code": {"coding": [
            {"system": "urn:records-gateway:data-class", "code": "notes"}]}}]},
        "request": {"method": "POST", "url": "Composition"}})
    body = json.dumps(data).encode()
    r = post(receiver.test_client(), peer, body, sender_keys)
    assert r.status_code == 403
    assert "data class 'notes'" in r.get_json()["issue"][0]["diagnostics"]


def test_in_progress_claim_is_409_until_it_expires(receiver, peer, sender_keys):
    from gateway.inbound.receive import claim

    svc = receiver.extensions["gateway"]
    assert claim(svc, "hospital-a", "key-busy") is None  # a request holds the key
    r = post(receiver.test_client(), peer, bundle(), sender_keys, key="key-busy")
    assert r.status_code == 409


@pytest.mark.parametrize("body,status,text", [
    (b"{not json", 400, "not JSON"),
    (b'{"resourceType": "Patient"}', 422, "not a FHIR Bundle"),
    (json.dumps({"resourceType": "Bundle", "type": "batch"}).encode(), 422, "transaction"),
    (json.dumps({"resourceType": "Bundle", "type": "transaction",
                 "entry": [{"resource": {"resourceType": "Binary", "contentType": 5}}]}).encode(),
     422, "invalid Bundle"),
    (json.dumps({"resourceType": "Bundle", "type": "transaction"}).encode(), 422, "identifier"),
])
def test_bad_bundles_get_outcomes(receiver, peer, sender_keys, body, status, text):
    r = post(receiver.test_client(), peer, body, sender_keys)
    assert r.status_code == status
    assert text in r.get_json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("body", [b"{not json", json.dumps({"resourceType": "Patient"}).encode(),
                                  b"[" * 100_000])
def test_nothing_unsigned_is_parsed(receiver, peer, sender_keys, tmp_path, body):
    """The detached signature is checked over the raw bytes before any parsing: a body
    no trusted key signed is refused as such (403), whatever it holds."""
    client = receiver.test_client()
    stranger = SigningKeys(tmp_path / "stranger")
    stranger.ensure()
    for signature in ("", sign_bundle(stranger, body, "x")):
        r = post(client, peer, body, signature=signature)
        assert r.status_code == 403, r.get_json()
        assert "signature" in r.get_json()["issue"][0]["diagnostics"]


def test_idempotency_key_required_and_checked(receiver, peer, sender_keys):
    client = receiver.test_client()
    for key in ["", "has space", "x" * 200, "../etc"]:
        assert post(client, peer, bundle(), sender_keys, key=key).status_code == 400


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


def _with(extra: list[dict]) -> bytes:
    data = json.loads(bundle())
    data["entry"] += [{"fullUrl": f"urn:uuid:6e0b7c1e-3f38-4a8f-9d7e-0000000001{n:02d}",
                       "resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
                      for n, r in enumerate(extra)]
    return json.dumps(data).encode()


@pytest.mark.parametrize("extra, why", [
    ([{"resourceType": "Patient"},
      {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
       "subject": {"reference": "urn:uuid:6e0b7c1e-3f38-4a8f-9d7e-000000000100"}}],
     "2 Patient entries"),
    ([{"resourceType": "Observation", "status": "final", "code": {"text": "x"},
       "subject": {"reference": "Patient/someone-else"}}], "another patient"),
    ([{"resourceType": "Condition", "subject": {"reference": "https://ehr.example/fhir/Patient/9"}}],
     "another patient"),
])
def test_a_bundle_is_about_the_consents_patient_alone(receiver, peer, sender_keys, extra, why):
    """Signed by a trusted sender is not enough: a bundle for two patients, or a resource
    about another patient than the Consent's, is refused and not receipted."""
    r = post(receiver.test_client(), peer, _with(extra), sender_keys)
    assert r.status_code == 403, r.get_json()
    assert why in r.get_json()["issue"][0]["diagnostics"]
    svc = receiver.extensions["gateway"]
    from gateway.storage.models import ReceivedBundle

    with svc.db.session() as s:
        assert not s.query(ReceivedBundle).filter_by(state="accepted").count()


def test_a_reply_carries_the_opinion_and_nothing_else():
    from gateway.inbound.receive import ConsentNotCovering, check_reply_content

    def reply(*extra):
        resources = [{"resourceType": "Patient"},
                     {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "op"},
                      "subject": {"reference": "urn:uuid:p"}},
                     {"resourceType": "Provenance"}, {"resourceType": "List", "subject": {
                         "reference": "urn:uuid:p"}}, *extra]
        return {"entry": [{"fullUrl": "urn:uuid:p" if r["resourceType"] == "Patient" else f"urn:uuid:{n}",
                           "resource": r} for n, r in enumerate(resources)]}

    check_reply_content(reply())  # the opinion, its Provenance and List: fine
    with pytest.raises(ConsentNotCovering, match="also holds Observation"):
        check_reply_content(reply({"resourceType": "Observation", "subject": {"reference": "urn:uuid:p"}}))
    with pytest.raises(ConsentNotCovering, match="one opinion"):
        check_reply_content(reply({"resourceType": "DocumentReference"}))

