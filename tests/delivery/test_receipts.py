"""Receipts and bundle signatures in process: a receipt signed by the right key that names
anything other than what was sent is an error; detached JWS per RFC 7515 appendix F."""
from __future__ import annotations

import pytest

from gateway.errors import ReceiptInvalid
from gateway.trust.keys import SigningKeys
from gateway.trust.receipts import (RECEIPT_TYP, SignatureInvalid, check_receipt, sign_bundle,
                                    verify_bundle)

SENT = {"issuer": "org-center", "sender": "org-hospital", "bundle": "urn:uuid:b-1", "sha256": "a" * 64,
        "size": 1234, "entry_hashes": {"urn:uuid:e-1": "1" * 64, "urn:uuid:e-2": "2" * 64}}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    k = SigningKeys(tmp_path_factory.mktemp("receiver-keys"))
    k.ensure()
    return k


def receipt(keys, **change) -> str:
    claims = {"iss": SENT["issuer"], "sender": SENT["sender"], "bundle": SENT["bundle"],
              "sha256": SENT["sha256"], "size": SENT["size"], "entryHashes": dict(SENT["entry_hashes"]),
              "status": "accepted", "receipt_id": "r-1"}
    claims.update(change)
    return keys.sign(claims, RECEIPT_TYP)


def test_a_matching_receipt_verifies(keys):
    claims = check_receipt(receipt(keys), keys.jwks(), who="center", **SENT)
    assert claims["receipt_id"] == "r-1"


@pytest.mark.parametrize("change,text", [
    ({"sha256": "b" * 64}, "hash differs"),
    ({"size": 1}, "size differs"),
    ({"bundle": "urn:uuid:other"}, "another bundle"),
    ({"iss": "org-elsewhere"}, "another organization"),
    ({"sender": "org-someone"}, "another sender"),
    ({"status": "rejected"}, "status"),
    ({"entryHashes": {"urn:uuid:e-1": "1" * 64, "urn:uuid:e-2": "3" * 64}}, "per-entry hashes differ"),
    ({"entryHashes": {"urn:uuid:e-1": "1" * 64}}, "per-entry hashes differ"),
])
def test_a_receipt_naming_something_else_is_an_error(keys, change, text):
    with pytest.raises(ReceiptInvalid, match=text):
        check_receipt(receipt(keys, **change), keys.jwks(), who="center", **SENT)


def test_a_receipt_by_another_key_or_altered_is_an_error(keys, tmp_path):
    other = SigningKeys(tmp_path)
    other.ensure()
    with pytest.raises(ReceiptInvalid, match="does not verify"):
        check_receipt(receipt(other), keys.jwks(), who="center", **SENT)
    head, payload, sig = receipt(keys).split(".")
    with pytest.raises(ReceiptInvalid, match="does not verify"):
        check_receipt(f"{head}.{payload[:-2]}AA.{sig}", keys.jwks(), who="center", **SENT)


def test_detached_bundle_signature(keys):
    body = b'{"resourceType":"Bundle","type":"transaction"}'
    detached = sign_bundle(keys, body, "urn:uuid:b-1")
    head, payload, sig = detached.split(".")
    assert payload == "" and head and sig  # RFC 7515 appendix F: payload left out
    assert verify_bundle(detached, body, keys.jwks())["typ"] == "fhir-bundle+jws"
    with pytest.raises(SignatureInvalid):
        verify_bundle(detached, body + b" ", keys.jwks())
    with pytest.raises(SignatureInvalid, match="no detached JWS"):
        verify_bundle("", body, keys.jwks())


def test_one_key_per_purpose_and_none_vouches_for_another(tmp_path):
    """Bundles, receipts and log checkpoints are signed with three keys; a receipt made
    with the bundle key (say, one that leaked from a sender's signing path) is refused,
    and the log's verifier takes only the checkpoint key."""
    import json

    from joserfc import jws

    from gateway.audit.checkpoints import load_public_keys
    from gateway.trust.keys import ALG

    k = SigningKeys(tmp_path / "keys")
    current = k.ensure()
    assert sorted(current) == ["bundle", "checkpoint", "receipt"] and len(set(current.values())) == 3
    published = {j["kid"]: j["purpose"] for j in k.jwks()["keys"]}
    assert published == {kid: purpose for purpose, kid in current.items()}
    body = b'{"resourceType":"Bundle"}'
    assert verify_bundle(sign_bundle(k, body, "urn:uuid:b-1"), body, k.jwks())["kid"] == current["bundle"]
    claims = check_receipt(receipt(k), k.jwks(), who="center", **SENT)
    assert claims["receipt_id"] == "r-1"
    bundle_key = k.current("bundle")
    forged = jws.serialize_compact({"alg": ALG, "kid": bundle_key.kid, "typ": RECEIPT_TYP},
                                   json.dumps({"iss": SENT["issuer"]}).encode(), bundle_key,
                                   algorithms=[ALG])
    with pytest.raises(ReceiptInvalid, match="key for bundles"):
        check_receipt(forged, k.jwks(), who="center", **SENT)
    assert set(load_public_keys(k.jwks()).by_kid) >= {current["checkpoint"]}
    assert current["bundle"] not in load_public_keys(k.jwks()).by_kid


def test_retired_keys_verify_old_signatures_revoked_ones_nothing(tmp_path):
    k = SigningKeys(tmp_path / "keys")
    first = k.ensure()["receipt"]
    old = receipt(k)
    k.retire(first)
    assert k.current("receipt").kid != first  # a new key took the purpose at once
    assert check_receipt(old, k.jwks(), who="center", **SENT)["receipt_id"] == "r-1"
    assert {j["kid"]: j.get("retired") for j in k.jwks()["keys"]}[first] is True
    assert check_receipt(receipt(k), k.jwks(), who="center", **SENT)  # signed by the new key
    rotated = k.rotate("receipt")["receipt"]
    assert k.current("receipt").kid == rotated
    k.revoke(first)  # it leaked: what it signed is worthless now
    assert first not in {j["kid"] for j in k.jwks()["keys"]}
    with pytest.raises(ReceiptInvalid):
        check_receipt(old, k.jwks(), who="center", **SENT)
    states = {e["kid"]: e["state"] for e in k.states()}
    assert states[first] == "revoked" and states[rotated] == "active"
    assert list(states.values()).count("active") == 3
