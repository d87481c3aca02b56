"""Helpers for the delivery tests (a module of its own: several folders have a conftest)."""
from __future__ import annotations

import base64
import hashlib
import socket
import time
import uuid

from gateway.authorizations import example_claims

ISSUER = "https://esign.test.invalid"
SENDER_ORG = "org-test-hospital"
GENERATED = {"60591-5", "completeness-manifest"}  # the summary PDF and the manifest
TERMINAL = {"completed", "failed", "cancelled", "dead_letter"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float = 30, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def claims_to(recipient_id: str, address: str, drop_dir, **kw) -> dict:
    return example_claims(
        ISSUER, f"auth-{uuid.uuid4().hex[:12]}",
        disclosers=[{"id": SENDER_ORG, "name": "Test Hospital",
                     "endpoints": [{"type": "pdf-folder", "address": str(drop_dir)}]}],
        recipient={"id": recipient_id, "name": "Recipient",
                   "endpoint": {"type": "gateway", "address": address}}, **kw)


def record_binaries(bundles: list[dict]) -> list[str]:
    """sha256 of every record Binary across bundles (not the summary PDF or manifest)."""
    out = []
    for bundle in bundles:
        resources = [e["resource"] for e in bundle["entry"]]
        generated = {d["content"][0]["attachment"]["url"] for d in resources
                     if d["resourceType"] == "DocumentReference"
                     and d["type"]["coding"][0]["code"] in GENERATED}
        out += [hashlib.sha256(base64.b64decode(e["resource"]["data"])).hexdigest()
                for e in bundle["entry"]
                if e["resource"]["resourceType"] == "Binary" and e["fullUrl"] not in generated]
    return sorted(out)
