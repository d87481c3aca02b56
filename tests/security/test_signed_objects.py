"""Every signed object the gateway accepts, against the same forgeries.

| object | entry point | keys from |
| --- | --- | --- |
| release authorization (JWS) | engine/operations.import_authorization (POST /authorizations) | the issuer trust store |
| bundle signature (detached JWS, X-Bundle-Signature) | POST /fhir in receive mode | the sender's published JWKS |
| delivery receipt (JWS) | trust/receipts.check_receipt (the delivering step) | the recipient's JWKS |
| "opened" receipt (JWS) | trust/receipts.check_opened (POST /receipts) | the recipient's JWKS |
| audit checkpoint (C2SP note, Ed25519) | audit/verify.verify_log (`audit verify`) | the gateway's JWKS |
| API bearer token (random, not signed) | trust/tokens.authenticate (every endpoint) | the token table |

Forgeries: `alg: none`, HS256 keyed with the signer's public key bytes (raw and PEM),
an unknown kid, a stranger's signature with its key embedded in the header (`jwk`), one byte changed in the payload and in the signature, a key that was
retired (still verifies what it signed: accepted) or revoked (verifies nothing), and
expiry and replay where the object carries them (authorizations: exp and jti; bundles:
the Consent's period and the bundle identifier; receipts: the bundle they name). The
gateway accepts no SMART client assertion (it is the client; the FHIR server's token
endpoint verifies them), and its API tokens are opaque random values, so only the
token cases apply to them. Each case asserts the specific error; each object's valid
control is accepted, so every case can fail.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from gateway.audit import checkpoints as cpmod
from gateway.audit.verify import verify_log
from gateway.engine import operations
from gateway.errors import (
    AuthorizationExpired,
    AuthorizationInvalid,
    Conflict,
    ReceiptInvalid,
    Unauthenticated,
)
from gateway.inbound.receive import ConsentNotCovering, UnprocessableBundle
from gateway.storage.models import Authorization
from gateway.trust import receipts
from gateway.trust.authorizations import new_issuer_key, sign_authorization
from gateway.trust.issuers import trust_document
from gateway.trust.keys import OPENED_TYP, RECEIPT_TYP, SigningKeys
from gateway.trust.tokens import authenticate, create_token, revoke_token

from tests.helpers import ISSUER, RECEIVER_ORG, SENDER_ORG
from tests.security import jws_forge as forge
from tests.test_receive import bundle, consent, peer, post, receiver, sender_keys  # noqa: F401

FORGERIES = {
    "alg-none": lambda token, jwk: forge.alg_none(token),
    "alg-none-signature-kept": lambda token, jwk: forge.alg_none(token, keep_signature=True),
    "hs256-raw-public-key": lambda token, jwk: forge.hs256_with(token, forge.okp_public_bytes(jwk)),
    "hs256-public-pem": lambda token, jwk: forge.hs256_with(token, forge.public_pem(jwk)),
    "unknown-kid": lambda token, jwk: forge.with_kid(token, "kid-nobody-published"),
    "embedded-jwk": lambda token, jwk: forge.embedded_jwk(token),
    "payload-byte": lambda token, jwk: forge.flip_payload_byte(token),
    "signature-byte": lambda token, jwk: forge.flip_signature_byte(token),
}


def _public_jwk(keys: SigningKeys, purpose: str) -> dict:
    return keys.current(purpose).as_dict(private=False)


# --- release authorizations ----------------------------------------------------------

@pytest.fixture
def svc(app):
    return app.extensions["gateway"]


def _stored(svc) -> int:
    with svc.db.session() as s:
        return s.scalar(select(func.count()).select_from(Authorization))


def _import(svc, jws):
    return operations.import_authorization(svc, jws, actor="test-intake")


def _trust(svc, *keys) -> None:
    """Replace the trust store file: the issuer signs with these keys."""
    svc.settings.issuers_file.write_text(json.dumps(trust_document({ISSUER: list(keys)})))


def test_authorization_control_is_accepted(svc, claims_for, sign):
    row = _import(svc, sign(claims_for()))
    assert row.status == "active" and _stored(svc) == 1


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_authorizations_are_refused(svc, claims_for, sign, issuer_private_key, forgery):
    token = FORGERIES[forgery](sign(claims_for()), issuer_private_key)
    with pytest.raises(AuthorizationInvalid) as caught:
        _import(svc, token)
    expected = {"alg-none": "jws", "alg-none-signature-kept": "alg", "hs256-raw-public-key": "alg", "hs256-public-pem": "alg",
                "unknown-kid": "kid", "embedded-jwk": "signature", "payload-byte": "signature", "signature-byte": "signature"}
    assert caught.value.details["element"] == expected[forgery], caught.value.message
    assert _stored(svc) == 0


@pytest.mark.parametrize("seconds_past", [61, 86400])
def test_expired_authorization_is_refused(svc, claims_for, sign, seconds_past):
    now = datetime.now(timezone.utc)
    claims = claims_for(valid_days=1, now=now - timedelta(days=1, seconds=seconds_past))
    with pytest.raises(AuthorizationExpired):
        _import(svc, sign(claims))
    assert _stored(svc) == 0


def test_replayed_authorization_jti_is_refused(svc, claims_for, sign):
    jti = f"auth-{uuid.uuid4().hex[:12]}"
    first = sign(claims_for(jti))
    _import(svc, first)
    assert _import(svc, first).id == jti and _stored(svc) == 1  # the same JWS: the stored row
    again = sign(claims_for(jti, purpose="Another purpose under the same jti"))
    assert again != first
    with pytest.raises(Conflict):
        _import(svc, again)
    assert _stored(svc) == 1


def test_authorization_by_a_retired_issuer_key_still_verifies(svc, claims_for, sign,
                                                              issuer_private_key):
    signed_before = sign(claims_for())
    _trust(svc, new_issuer_key("test-esign-2"), issuer_private_key)  # rotated: old kid kept
    assert _import(svc, signed_before).status == "active"


def test_authorization_by_a_removed_issuer_key_is_refused(svc, claims_for, sign):
    signed_before = sign(claims_for())
    _trust(svc, new_issuer_key("test-esign-2"))  # the old kid removed: it verifies nothing
    with pytest.raises(AuthorizationInvalid) as caught:
        _import(svc, signed_before)
    assert caught.value.details["element"] == "kid" and _stored(svc) == 0


def test_authorization_by_a_stranger_under_the_trusted_kid_is_refused(svc, claims_for,
                                                                      issuer_private_key):
    stranger = new_issuer_key(issuer_private_key["kid"])
    with pytest.raises(AuthorizationInvalid) as caught:
        _import(svc, sign_authorization(claims_for(), stranger))
    assert caught.value.details["element"] == "signature" and _stored(svc) == 0


# --- the bundle's detached signature (receive mode, over HTTP) -------------------------

def _refused_with(response, error) -> None:
    """The answer is the OperationOutcome of `error`'s class."""
    assert response.status_code == error.http_status, response.get_json()
    assert response.get_json()["issue"][0]["code"] == error.code, response.get_json()


def _inbox_count(receiver) -> int:  # noqa: F811 (fixture name)
    from gateway.storage.models import ReceivedBundle

    with receiver.extensions["gateway"].db.session() as s:
        return s.scalar(select(func.count()).select_from(ReceivedBundle)
                        .where(ReceivedBundle.state == "accepted"))


def _publish(keys: SigningKeys, tmp_path) -> None:
    (tmp_path / "hospital-a-jwks.json").write_text(json.dumps(keys.jwks()))


def test_bundle_control_is_accepted(receiver, peer, sender_keys):  # noqa: F811
    assert post(receiver.test_client(), peer, bundle(), sender_keys).status_code == 200
    assert _inbox_count(receiver) == 1


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_bundle_signatures_are_refused(receiver, peer, sender_keys, forgery):  # noqa: F811
    body = bundle()
    signed = forge.attach(receipts.sign_bundle(sender_keys, body, "x"), body)
    forged = FORGERIES[forgery](signed, _public_jwk(sender_keys, "bundle"))
    if forgery == "payload-byte":  # the body travels beside the signature: change the body
        sent, signature = forge.flip(body, body.index(b'"aGk="') + 2), receipts.sign_bundle(
            sender_keys, body, "x")
    else:
        sent, signature = body, forge.detached(forged)
    r = post(receiver.test_client(), peer, sent, signature=signature)
    _refused_with(r, receipts.SignatureInvalid)
    assert _inbox_count(receiver) == 0


def test_bundle_signed_with_a_retired_key_still_verifies(receiver, peer, sender_keys, tmp_path):  # noqa: F811
    body = bundle()
    signature = receipts.sign_bundle(sender_keys, body, "x")
    sender_keys.rotate("bundle")
    _publish(sender_keys, tmp_path)
    assert post(receiver.test_client(), peer, body, signature=signature).status_code == 200


def test_bundle_signed_with_a_revoked_key_is_refused(receiver, peer, sender_keys, tmp_path):  # noqa: F811
    body = bundle()
    signature = receipts.sign_bundle(sender_keys, body, "x")
    sender_keys.revoke(sender_keys.current("bundle").kid)
    _publish(sender_keys, tmp_path)
    r = post(receiver.test_client(), peer, body, signature=signature)
    _refused_with(r, receipts.SignatureInvalid)
    assert _inbox_count(receiver) == 0
    # the new key the revocation made signs the same bundle fine
    assert post(receiver.test_client(), peer, body, sender_keys, key="key-2").status_code == 200


def test_bundle_signed_with_a_receipt_key_is_refused(receiver, peer, sender_keys):  # noqa: F811
    body = bundle()
    key = sender_keys.current("receipt")
    from joserfc import jws

    token = jws.serialize_compact({"alg": "Ed25519", "kid": key.kid, "typ": "fhir-bundle+jws"},
                                  body, key, algorithms=["Ed25519"])
    r = post(receiver.test_client(), peer, body, signature=forge.detached(token))
    _refused_with(r, receipts.SignatureInvalid)


def test_bundle_under_an_expired_consent_is_refused(receiver, peer, sender_keys):  # noqa: F811
    r = post(receiver.test_client(), peer, bundle(the_consent=consent(valid_days=-1)), sender_keys)
    _refused_with(r, ConsentNotCovering)
    assert "period" in r.get_json()["issue"][0]["diagnostics"]


def test_replayed_bundle_is_refused(receiver, peer, sender_keys):  # noqa: F811
    client = receiver.test_client()
    assert post(client, peer, bundle(), sender_keys).status_code == 200
    r = post(client, peer, bundle(), sender_keys, key="another-key")
    _refused_with(r, UnprocessableBundle)
    assert _inbox_count(receiver) == 1


# --- delivery and "opened" receipts -----------------------------------------------------

BUNDLE_ID = "urn:uuid:7f3c1a52-0000-4000-8000-000000000001"
BODY_SHA = hashlib.sha256(b"synthetic bundle bytes").hexdigest()
ENTRY_HASHES = {"urn:uuid:7f3c1a52-0000-4000-8000-000000000002": "ab" * 32}


@pytest.fixture
def center_keys(tmp_path) -> SigningKeys:
    keys = SigningKeys(tmp_path / "center-keys")
    keys.ensure()
    return keys


def _receipt(keys: SigningKeys, **changes) -> str:
    claims = {"iss": RECEIVER_ORG, "receipt_id": "r-1", "bundle": BUNDLE_ID, "sha256": BODY_SHA,
              "size": 22, "entries": 1, "entryHashes": ENTRY_HASHES, "attachments": {},
              "sender": SENDER_ORG, "recipient": RECEIVER_ORG, "status": "accepted"}
    return keys.sign({**claims, **changes}, RECEIPT_TYP)


def _check_receipt(token: str, jwks: dict) -> dict:
    return receipts.check_receipt(token, jwks, issuer=RECEIVER_ORG, sender=SENDER_ORG,
                                  bundle=BUNDLE_ID, sha256=BODY_SHA, size=22,
                                  entry_hashes=ENTRY_HASHES, who="center")


def _opened(keys: SigningKeys) -> str:
    return keys.sign({"iss": RECEIVER_ORG, "receipt_id": "r-1", "bundle": BUNDLE_ID,
                      "openedBy": "staff-1", "openedAt": "2026-03-01T12:00:00+00:00"}, OPENED_TYP)


def _check_opened(token: str, jwks: dict) -> dict:
    return receipts.check_opened(token, jwks, issuer=RECEIVER_ORG)


RECEIPTS = {"delivery": (_receipt, _check_receipt), "opened": (_opened, _check_opened)}


@pytest.mark.parametrize("kind", sorted(RECEIPTS))
def test_receipt_control_is_accepted(center_keys, kind):
    make, check = RECEIPTS[kind]
    assert check(make(center_keys), center_keys.jwks())["bundle"] == BUNDLE_ID


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
@pytest.mark.parametrize("kind", sorted(RECEIPTS))
def test_forged_receipts_are_refused(center_keys, kind, forgery):
    make, check = RECEIPTS[kind]
    forged = FORGERIES[forgery](make(center_keys), _public_jwk(center_keys, "receipt"))
    with pytest.raises(ReceiptInvalid):
        check(forged, center_keys.jwks())


@pytest.mark.parametrize("kind", sorted(RECEIPTS))
def test_receipt_by_a_retired_key_verifies_and_by_a_revoked_key_does_not(center_keys, kind):
    make, check = RECEIPTS[kind]
    old = make(center_keys)
    center_keys.rotate("receipt")
    assert check(old, center_keys.jwks())["bundle"] == BUNDLE_ID
    older = make(center_keys)
    center_keys.revoke(center_keys.current("receipt").kid)
    with pytest.raises(ReceiptInvalid):
        check(older, center_keys.jwks())
    assert check(make(center_keys), center_keys.jwks())["bundle"] == BUNDLE_ID  # the new key


@pytest.mark.parametrize("kind", sorted(RECEIPTS))
def test_receipt_signed_with_a_bundle_key_is_refused(center_keys, kind):
    from joserfc import jws

    make, check = RECEIPTS[kind]
    honest = forge.parts(make(center_keys))
    key = center_keys.current("bundle")
    token = jws.serialize_compact({**honest[0], "kid": key.kid}, honest[1], key,
                                  algorithms=["Ed25519"])
    with pytest.raises(ReceiptInvalid):
        check(token, center_keys.jwks())


def test_receipt_of_another_bundle_is_refused(center_keys):
    replayed = _receipt(center_keys, bundle="urn:uuid:7f3c1a52-0000-4000-8000-0000000000ff")
    with pytest.raises(ReceiptInvalid):
        _check_receipt(replayed, center_keys.jwks())


# --- audit checkpoints --------------------------------------------------------------

ROOT = hashlib.sha256(b"synthetic tree head").digest()


@pytest.fixture
def log_keys(tmp_path) -> SigningKeys:
    keys = SigningKeys(tmp_path / "gateway-keys")
    keys.ensure()
    return keys


def _checkpoint(keys: SigningKeys, size: int = 5) -> dict:
    key = keys.current("checkpoint")
    return cpmod.sign(key.private_key, origin="https://gateway.test.invalid", tree_size=size,
                      root_hash=ROOT, timestamp_ms=1_770_000_000_000 + size, key_id=key.kid)


def _checkpoint_problems(cp: dict, keys: SigningKeys) -> list[str]:
    return verify_log([], [cp], [], cpmod.load_public_keys(keys.jwks()), partial=True).problems


def _note(cp: dict) -> bytes:
    return cpmod.body(cp["origin"], cp["tree_size"], bytes.fromhex(cp["root_hash"]),
                      cp["timestamp_ms"])


def _sig_b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


CHECKPOINT_FORGERIES = {
    # no alg header here: an empty signature and an HMAC keyed with the public key stand in
    "empty-signature": lambda cp, pub: {**cp, "signature": ""},
    "hmac-with-public-key": lambda cp, pub: {
        **cp, "signature": _sig_b64(hmac.new(pub, _note(cp), hashlib.sha256).digest())},
    "unknown-kid": lambda cp, pub: {**cp, "key_id": "kid-nobody-published"},
    "payload-byte": lambda cp, pub: {**cp, "root_hash": forge.flip(bytes.fromhex(cp["root_hash"])).hex()},
    "tree-size": lambda cp, pub: {**cp, "tree_size": cp["tree_size"] + 1},
    "signature-byte": lambda cp, pub: {
        **cp, "signature": _sig_b64(forge.flip(base64.b64decode(cp["signature"])))},
}


def test_checkpoint_control_verifies(log_keys):
    assert _checkpoint_problems(_checkpoint(log_keys), log_keys) == []


@pytest.mark.parametrize("forgery", sorted(CHECKPOINT_FORGERIES))
def test_forged_checkpoints_are_refused(log_keys, forgery):
    pub = forge.okp_public_bytes(_public_jwk(log_keys, "checkpoint"))
    problems = _checkpoint_problems(CHECKPOINT_FORGERIES[forgery](_checkpoint(log_keys), pub), log_keys)
    assert len(problems) == 1
    wanted = "unknown key" if forgery == "unknown-kid" else "does not verify"
    assert wanted in problems[0], problems


def test_checkpoint_by_a_retired_key_verifies_and_by_a_revoked_key_does_not(log_keys):
    old = _checkpoint(log_keys, 5)
    log_keys.rotate("checkpoint")
    assert _checkpoint_problems(old, log_keys) == []
    older = _checkpoint(log_keys, 6)
    log_keys.revoke(log_keys.current("checkpoint").kid)
    problems = _checkpoint_problems(older, log_keys)
    assert len(problems) == 1 and "unknown key" in problems[0]
    assert _checkpoint_problems(_checkpoint(log_keys, 7), log_keys) == []


def test_checkpoint_signed_with_a_receipt_key_is_refused(log_keys):
    key = log_keys.current("receipt")
    cp = cpmod.sign(key.private_key, origin="https://gateway.test.invalid", tree_size=5,
                    root_hash=ROOT, timestamp_ms=1_770_000_000_005, key_id=key.kid)
    problems = _checkpoint_problems(cp, log_keys)
    assert len(problems) == 1 and "unknown key" in problems[0]


# --- API bearer tokens (random values, looked up by sha256) ----------------------------

def test_api_tokens_forged_changed_or_revoked_are_refused(svc):
    with svc.db.session() as s:
        row, plain = create_token(s, "intake", "operator", actor="test")
    with svc.db.session() as s:
        assert authenticate(s, plain).id == row.id  # the control
    header = forge.b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = forge.b64url(json.dumps({"sub": "intake", "role": "admin"}).encode())
    changed = plain[:-1] + ("A" if plain[-1] != "A" else "B")
    for presented in (f"{header}.{claims}.", changed, plain + "x", ""):
        with svc.db.session() as s, pytest.raises(Unauthenticated):
            authenticate(s, presented)
    with svc.db.session() as s:
        revoke_token(s, row.id, actor="test")
    with svc.db.session() as s, pytest.raises(Unauthenticated):
        authenticate(s, plain)


def test_authorization_refusals_over_http_carry_their_error(client, operator, claims_for, sign,
                                                            issuer_private_key):
    """POST /authorizations answers each refusal with its error's status and issue code."""
    jti = f"auth-{uuid.uuid4().hex[:12]}"
    valid = sign(claims_for(jti))
    expired = sign(claims_for(valid_days=1, now=datetime.now(timezone.utc) - timedelta(days=2)))
    cases = [(forge.alg_none(valid, keep_signature=True), AuthorizationInvalid),
             (FORGERIES["hs256-public-pem"](valid, issuer_private_key), AuthorizationInvalid),
             (forge.flip_signature_byte(valid), AuthorizationInvalid),
             (expired, AuthorizationExpired)]
    assert client.post("/authorizations", json={"jws": valid}, headers=operator).status_code == 201
    cases.append((sign(claims_for(jti, purpose="Another purpose, same jti")), Conflict))
    for token, error in cases:
        r = client.post("/authorizations", json={"jws": token}, headers=operator)
        assert (r.status_code, r.get_json()["issue"][0]["code"]) == (error.http_status, error.code), \
            (error.__name__, r.get_json())
