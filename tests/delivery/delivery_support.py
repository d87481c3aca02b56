"""Helpers for the delivery tests (a module of its own: several folders have a conftest)."""
from __future__ import annotations

import base64
import hashlib
import json
import uuid

from gateway.trust.authorizations import example_claims
from tests import helpers

ISSUER = "https://esign.test.invalid"
SENDER_ORG = "org-test-hospital"
TERMINAL = {"completed", "failed", "cancelled", "dead_letter"}


def claims_to(recipient_id: str, address: str, drop_dir, **kw) -> dict:
    return example_claims(
        ISSUER, f"auth-{uuid.uuid4().hex[:12]}",
        disclosers=[{"id": SENDER_ORG, "name": "Test Hospital",
                     "endpoints": [{"type": "pdf-folder", "address": str(drop_dir)}]}],
        recipient={"id": recipient_id, "name": "Recipient",
                   "endpoint": {"type": "gateway", "address": address}}, **kw)


def record_binaries(bundles: list[dict]) -> list[str]:
    """sha256 of every record Binary across bundles (not the summary PDF or manifest)."""
    return sorted(hashlib.sha256(base64.b64decode(b["data"])).hexdigest()
                  for bundle in bundles for b in helpers.record_binaries(bundle))


def start_from_sources(stack, sign, receiver_url, sources: dict[str, dict], **kw) -> str:
    """Start a transfer from the named sources (name -> the authorization's endpoint for
    it) to the test center; return its id. `kw` goes to example_claims (patient, ...)."""
    claims = example_claims(
        ISSUER, f"auth-{uuid.uuid4().hex[:12]}",
        disclosers=[{"id": SENDER_ORG, "name": "Test Hospital", "endpoints": list(sources.values())}],
        recipient={"id": "org-test-center", "name": "Test Center",
                   "endpoint": {"type": "gateway", "address": receiver_url}}, **kw)
    stack.start_receiver()
    r = stack.client.post("/transfers", json={"authorization": stack.authorize(claims, sign),
                                              "sources": list(sources), "recipient": "center"},
                          headers=stack.operator)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def start_from_two_sources(stack, sign, drop_dir, copies, receiver_url) -> str:
    """From the "records" and "copies" PDF folders (the `two_sources` fixture)."""
    return start_from_sources(stack, sign, receiver_url, {
        "records": {"type": "pdf-folder", "address": str(drop_dir)},
        "copies": {"type": "pdf-folder", "address": str(copies)}})


def manifest_of(bundle: dict) -> dict:
    """The completeness manifest a bundle carries."""
    doc = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference"
               and e["resource"]["type"]["coding"][0]["code"] == "completeness-manifest")
    url = doc["content"][0]["attachment"]["url"]
    binary = next(e["resource"] for e in bundle["entry"] if e["fullUrl"] == url)
    return json.loads(base64.b64decode(binary["data"]))


def write_large_pdf(path, megabytes: float) -> str:
    """A one-page PDF carrying an incompressible image of about `megabytes` (like a
    scan) at `path`; returns its sha256."""
    import io
    import os

    from PIL import Image
    from reportlab.lib.pagesizes import letter
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    side = int((megabytes * 1024 * 1024 / 3) ** 0.5)
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, "PNG")
    c = canvas.Canvas(str(path), pagesize=letter, invariant=1)
    c.drawString(72, 740, "Synthetic scan (random pixels)")
    c.drawImage(ImageReader(io.BytesIO(buf.getvalue())), 72, 72, 400, 400)
    c.showPage()
    c.save()
    return hashlib.sha256(path.read_bytes()).hexdigest()
