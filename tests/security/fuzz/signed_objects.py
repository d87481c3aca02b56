"""Fuzz the verification of signed objects from outside: release authorizations
(`trust/authorizations.verify_authorization`), delivery and "opened" receipts
(`trust/receipts.check_receipt`, `check_opened`), detached bundle signatures
(`trust/receipts.verify_bundle`) and audit checkpoint files (`audit/verify.verify_files_report`,
what `records-gateway audit verify` runs on an auditor's files). The first byte picks the
target; the rest is the object.

Expected: AuthorizationDenied (authorizations), ReceiptInvalid (receipts, bundle
signatures), InvalidInput or a list of problems (checkpoints). Anything else is a finding.

Longer run by hand (from the repository root):

    python tests/security/fuzz/signed_objects.py --seeds /tmp/fuzz-signed
    python tests/security/fuzz/signed_objects.py /tmp/fuzz-signed -max_total_time=600 \
        -timeout=5 -artifact_prefix=/tmp/fuzz-signed-
"""
from __future__ import annotations

import common  # noqa: F401  (puts the repository on sys.path)

import atheris

with atheris.instrument_imports(include=["gateway.trust", "gateway.audit", "mappings.consent"]):
    from gateway.audit import checkpoints as cpmod
    from gateway.audit.verify import verify_files_report
    from gateway.errors import AuthorizationDenied, InvalidInput, ReceiptInvalid
    from gateway.trust import receipts
    from gateway.trust.authorizations import (example_claims, new_issuer_key, sign_authorization,
                                              verify_authorization)
    from gateway.trust.issuers import TrustStore
    from gateway.trust.keys import OPENED_TYP, RECEIPT_TYP, SigningKeys

import hashlib
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ISSUER, CENTER, HOSPITAL = "https://esign.test.invalid", "org-test-center", "org-test-hospital"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
BUNDLE = "urn:uuid:7f3c1a52-0000-4000-8000-000000000001"
_issuer_key = new_issuer_key("fuzz-esign-1")
_trust = TrustStore.from_issuers({ISSUER: [_issuer_key]})
_work = Path(tempfile.mkdtemp(prefix="fuzz-signed-"))
_keys = SigningKeys(_work)
_keys.ensure()
_jwks = _keys.jwks()
_jwks_file, _checkpoint_file = _work / "jwks.json", _work / "checkpoints.json"
_jwks_file.write_text(json.dumps(_jwks))


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _authorization(data: bytes) -> None:
    try:
        verify_authorization(data, _trust, now=NOW)
    except AuthorizationDenied:
        pass


def _receipt(data: bytes) -> None:
    try:
        receipts.check_receipt(_text(data), _jwks, issuer=CENTER, sender=HOSPITAL, bundle=BUNDLE,
                               sha256="00" * 32, size=10, entry_hashes={}, who="center")
    except ReceiptInvalid:
        pass


def _opened(data: bytes) -> None:
    try:
        receipts.check_opened(_text(data), _jwks, issuer=CENTER)
    except ReceiptInvalid:
        pass


def _bundle_signature(data: bytes) -> None:
    signature, _, body = data.partition(b"\n")
    try:
        receipts.verify_bundle(_text(signature), body, _jwks)
    except ReceiptInvalid:
        pass


def _checkpoints(data: bytes) -> None:
    _checkpoint_file.write_bytes(data)
    try:
        verify_files_report(None, [_checkpoint_file], _jwks_file)
    except InvalidInput:
        pass


TARGETS = [_authorization, _receipt, _opened, _bundle_signature, _checkpoints]


def test_one_input(data: bytes) -> None:
    if data:
        TARGETS[data[0] % len(TARGETS)](data[1:])


def seeds():
    claims = example_claims(ISSUER, "auth-fuzz-1", now=NOW)
    yield bytes([0]) + sign_authorization(claims, _issuer_key).encode()
    receipt = {"iss": CENTER, "receipt_id": "r-1", "bundle": BUNDLE, "sha256": "00" * 32, "size": 10,
               "entryHashes": {}, "attachments": {}, "sender": HOSPITAL, "status": "accepted"}
    yield bytes([1]) + _keys.sign(receipt, RECEIPT_TYP).encode()
    opened = {"iss": CENTER, "receipt_id": "r-1", "bundle": BUNDLE, "openedBy": "staff",
              "openedAt": NOW.isoformat()}
    yield bytes([2]) + _keys.sign(opened, OPENED_TYP).encode()
    body = b'{"resourceType":"Bundle","type":"transaction"}'
    yield bytes([3]) + receipts.sign_bundle(_keys, body, "x").encode() + b"\n" + body
    key = _keys.current("checkpoint")
    cps = [cpmod.sign(key.private_key, origin="https://gateway.test.invalid", tree_size=n,
                      root_hash=hashlib.sha256(bytes([n])).digest(), timestamp_ms=1_770_000_000_000 + n,
                      key_id=key.kid) for n in (1, 2)]
    yield bytes([4]) + json.dumps({"checkpoints": cps, "consistency_proofs": [
        {"first": 1, "second": 2, "path": []}]}).encode()
    # past findings: a proof without "first", checkpoints that are not objects
    yield bytes([4]) + json.dumps({"checkpoints": cps, "consistency_proofs": [{"second": 2}]}).encode()
    yield bytes([4]) + json.dumps({"checkpoints": ["x", 7, None]}).encode()
    yield bytes([4]) + json.dumps({"checkpoints": cps, "consistency_proofs": 1}).encode()


if __name__ == "__main__":
    common.main(test_one_input, seeds)
