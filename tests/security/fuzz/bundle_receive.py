"""Fuzz receive mode's bundle intake: `inbound/receive.accept`, what POST /fhir calls with
the body and the X-Bundle-Signature header, on a receive-mode gateway (SQLite, a temp
folder). Most inputs are signed by the trusted sender first, so the parser, the Bundle
and Consent checks and the receipt are reached; inputs whose first byte is odd carry
their own signature header (first line) instead.

Expected: a GatewayError subclass (UnprocessableBundle, ConsentNotCovering,
SignatureInvalid, ...), or acceptance. Anything else is a finding.

Longer run by hand (from the repository root):

    python tests/security/fuzz/bundle_receive.py --seeds /tmp/fuzz-bundle
    python tests/security/fuzz/bundle_receive.py /tmp/fuzz-bundle -max_total_time=600 \
        -timeout=5 -artifact_prefix=/tmp/fuzz-bundle-
"""
from __future__ import annotations

import common  # noqa: F401  (puts the repository on sys.path)

import atheris

with atheris.instrument_imports(include=["gateway", "mappings"]):
    from gateway import create_app
    from gateway.errors import GatewayError
    from gateway.inbound import receive
    from gateway.trust.receipts import sign_bundle

import base64
import itertools
import json
import sys
import tempfile
from pathlib import Path

from gateway.runtime import warmup
from gateway.storage.blobstore import new_master_key
from gateway.trust.keys import SigningKeys

SENDER, SENDER_ORG, RECEIVER_ORG = "hospital-a", "org-test-hospital", "org-test-center"
_work = Path(tempfile.mkdtemp(prefix="fuzz-bundle-"))
_sender_keys = SigningKeys(_work / "sender-keys")
_sender_keys.ensure()
(_work / "sender-jwks.json").write_text(json.dumps(_sender_keys.jwks()))
_app = create_app({"data_dir": str(_work / "receiver"), "blob_key": new_master_key(),
                   "organization": RECEIVER_ORG, "mode": "receive",
                   "senders": {SENDER: {"organization": SENDER_ORG,
                                        "jwks_file": str(_work / "sender-jwks.json")}}})
_svc = _app.extensions["gateway"]
_svc.keys.ensure()
_keys = itertools.count()
if __name__ == "__main__" and "--seeds" not in sys.argv:
    # as `records-gateway serve` does at start: the schema check's validators compiled
    # once, before the first input, not inside one input's time limit
    warmup.fhir_models(schema_check=True)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        line, _, body = data[1:].partition(b"\n")
        signature = line.decode("latin-1")
    else:
        body = data[1:]
        signature = sign_bundle(_sender_keys, body, "fuzz")
    key = f"fuzz-{next(_keys)}"
    receive.claim(_svc, SENDER, key)
    try:
        receive.accept(_svc, sender=SENDER, key=key, body=body, signature=signature)
    except GatewayError:
        receive.release(_svc, SENDER, key)


def seeds():
    """Valid bundles (signed in the harness), and a few with their own signature line."""
    from tests.test_receive import bundle, consent

    yield b"\x00" + bundle(1)
    yield b"\x00" + bundle(3, ident="urn:uuid:6e0b7c1e-3f38-4a8f-9d7e-1c2b3a4d5e70")
    yield b"\x00" + bundle(1, the_consent=consent(data_classes=("labs",)))
    body = bundle(2)
    yield b"\x01" + sign_bundle(_sender_keys, body, "fuzz").encode() + b"\n" + body
    yield b"\x01" + base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=") + b"..\n" + body
    # past findings: nested deeper than the parser (RecursionError) and than the entry
    # hash can write (orjson's 255 levels)
    yield b"\x00" + b'{"resourceType":"Bundle","type":"transaction","entry":' + b"[" * 3000 \
        + b"]" * 3000 + b"}"
    data = json.loads(bundle(1, ident="urn:uuid:6e0b7c1e-3f38-4a8f-9d7e-1c2b3a4d5e71"))
    extension = {"url": "http://example.org/synthetic", "valueString": "leaf"}
    for _ in range(150):
        extension = {"url": "http://example.org/synthetic", "extension": [extension]}
    data["entry"][0]["resource"]["extension"] = [extension]
    yield b"\x00" + json.dumps(data).encode()


if __name__ == "__main__":
    common.main(test_one_input, seeds)
