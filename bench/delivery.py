"""Benchmark: what assembling, signing and receiving a transfer's bundles costs.

    python bench/delivery.py

A synthetic transfer of DOCS records of SIZE_MB each (random bytes standing for PDFs,
already "mapped": assembly does not parse them) in a SQLite database and an encrypted
blob store. Measured:
- assembly (summary PDF, manifest, de-duplication, base64 streaming, per-entry hashes)
  against the reference of the same run: streaming the same record blobs through the
  blob store into one new blob (decrypt + encrypt, no FHIR). Also the peak Python heap
  during assembly (tracemalloc), to show that records are streamed, not held;
- splitting: the same transfer with bundle_max_bytes a quarter of its size;
- signing each bundle (detached Ed25519 JWS over its bytes) against sha256 of the same bytes;
- receiving one bundle in process (signature, Consent, validation, per-entry hashes,
  encrypted store, signed receipt) against the bare sha256 of the body.
The last line is one JSON object with the figures.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DOCS = 24
SIZE_MB = 2.0
SENDER, CENTER, ISSUER = "org-bench-hospital", "org-bench-center", "https://bench-esign.example"


def say(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


def setup(root: Path, max_bytes: int | None = None):
    from gateway import create_app
    from gateway.trust.authorizations import example_claims, new_issuer_key, sign_authorization
    from gateway.storage.blobstore import new_master_key
    from gateway.engine.operations import import_authorization
    from gateway.engine.transfers import create_transfer
    from gateway.trust.issuers import trust_document

    root.mkdir(parents=True, exist_ok=True)
    key = new_issuer_key("bench-1")
    (root / "issuers.json").write_text(json.dumps(trust_document({ISSUER: [key]})))
    drop = root / "drop"
    config = {"data_dir": str(root / "sender"), "blob_key": new_master_key(),
              "trust_file": str(root / "issuers.json"), "organization": SENDER,
              "sources": {"records": {"kind": "pdf-folder", "organization": SENDER,
                                      "endpoint": str(drop), "options": {"path": str(drop)}}},
              "peers": {"center": {"base_url": "http://127.0.0.1:9", "organization": CENTER,
                                   "token": "unused"}}}
    if max_bytes:
        config["bundle_max_bytes"] = max_bytes
    app = create_app(config)
    svc = app.extensions["gateway"]
    svc.keys.ensure()
    claims = example_claims(ISSUER, f"bench-{uuid.uuid4().hex[:8]}",
                            disclosers=[{"id": SENDER, "name": "Hospital", "endpoints": [
                                {"type": "pdf-folder", "address": str(drop)}]}],
                            recipient={"id": CENTER, "name": "Center", "endpoint": {
                                "type": "gateway", "address": "http://127.0.0.1:9"}})
    auth = import_authorization(svc, sign_authorization(claims, key), "bench")
    with svc.db.session() as s:
        t = create_transfer(svc, s, authorization_id=auth.id, sources=["records"],
                            recipient="center", actor="bench")
        tid = t.id
    return svc, tid, claims


def add_records(svc, tid: str) -> list[str]:
    from gateway.storage.models import Item, TransferSource

    size = int(SIZE_MB * 1024 * 1024)
    keys = []
    with svc.db.session() as s:
        for n in range(DOCS):
            blob = svc.blobs.put_bytes(os.urandom(size))
            doc = {"resourceType": "DocumentReference", "status": "current",
                   "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
                   "identifier": [{"system": "urn:records-gateway:sha256", "value": blob.sha256}],
                   "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3",
                                        "display": "Progress note"}]},
                   "subject": {"reference": "urn:uuid:x"}, "date": f"2025-01-{n % 28 + 1:02d}T00:00:00Z",
                   "content": [{"attachment": {"contentType": "application/pdf", "size": blob.size,
                                               "hash": base64.b64encode(b"x" * 20).decode()}}]}
            mapped = svc.blobs.put_bytes(json.dumps([{
                "resource": doc, "data_class": "notes", "clinical_date": f"2025-01-{n % 28 + 1:02d}",
                "carries_record_bytes": True}]).encode())
            s.add(Item(transfer_id=tid, source="records", origin=f"doc-{n:03d}.pdf", kind="pdf",
                       media_type="application/pdf", size=blob.size, sha256=blob.sha256,
                       blob_key=blob.key, fetched_at=datetime.now(timezone.utc), state="mapped",
                       resources_blob=mapped.key, data_class="notes"))
            keys.append(blob.key)
        src = s.query(TransferSource).filter_by(transfer_id=tid).one()
        src.state, src.items = "done", DOCS
    return keys


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    from gateway.outbound import bundles
    from gateway.trust import receipts
    from gateway.storage.models import Transfer

    root = Path(tempfile.mkdtemp(prefix="bench-delivery-"))
    total_mb = DOCS * SIZE_MB
    say(f"{DOCS} records of {SIZE_MB} MB ({total_mb:.0f} MB) in {root}")
    svc, tid, claims = setup(root / "one")
    keys = add_records(svc, tid)

    def load():
        with svc.db.session() as s:
            t = s.get(Transfer, tid)
            _ = t.sources, t.authorization
            return t

    def reference():
        with svc.blobs.writer() as w:
            for key in keys:
                for chunk in svc.blobs.chunks(key):
                    w.write(chunk)
        return w.info

    ref_s, _ = timed(reference)
    say(f"reference: stream {total_mb:.0f} MB of record blobs into one blob: {ref_s:.2f} s")
    t = load()
    tracemalloc.start()
    asm_s, parts = timed(lambda: bundles.assemble(svc, t))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    size = sum(p.blob.size for p in parts)
    say(f"assembly: {len(parts)} bundle(s), {size / 1e6:.1f} MB in {asm_s:.2f} s "
        f"({size / 1e6 / asm_s:.0f} MB/s), peak Python heap {peak / 1e6:.1f} MB")

    body = svc.blobs.read_bytes(parts[0].blob.key)
    sha_s, _ = timed(lambda: hashlib.sha256(body).hexdigest())
    sign_s, signature = timed(lambda: receipts.sign_bundle(svc.keys, body, "x"))
    say(f"signing {len(body) / 1e6:.1f} MB: {sign_s:.3f} s (sha256 alone {sha_s:.3f} s)")

    split_svc, split_tid, _ = setup(root / "split", max_bytes=int(size / 4))
    add_records(split_svc, split_tid)
    with split_svc.db.session() as s:
        st = s.get(Transfer, split_tid)
        _ = st.sources, st.authorization
    split_s, split_parts = timed(lambda: bundles.assemble(split_svc, st))
    say(f"split at {size / 4e6:.1f} MB: {len(split_parts)} bundles in {split_s:.2f} s")

    receive_s = _receive(root, svc, body, signature)
    say(f"receiving one {len(body) / 1e6:.1f} MB bundle in process: {receive_s:.2f} s")
    figures = {
        "records": DOCS, "record_mb": SIZE_MB, "bundle_mb": round(size / 1e6, 1),
        "reference_stream_s": round(ref_s, 3), "assemble_s": round(asm_s, 3),
        "assemble_vs_reference": round(asm_s / ref_s, 2),
        "assemble_mb_per_s": round(size / 1e6 / asm_s, 1),
        "assemble_peak_heap_mb": round(peak / 1e6, 1),
        "sign_s": round(sign_s, 3), "sign_vs_sha256": round(sign_s / sha_s, 2),
        "split_bundles": len(split_parts), "split_assemble_s": round(split_s, 3),
        "receive_s": round(receive_s, 3), "receive_vs_sha256": round(receive_s / sha_s, 1),
    }
    svc.close()
    split_svc.close()
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures))


def receiver(root: Path, sender_svc):
    """A receiving gateway in process that knows the sender's keys: (its services, a test
    client, the sender's peer token)."""
    from gateway import create_app
    from gateway.storage.blobstore import new_master_key
    from gateway.trust.tokens import create_token

    (root / "sender-jwks.json").write_text(json.dumps(sender_svc.keys.jwks()))
    app = create_app({"data_dir": str(root / f"receiver-{uuid.uuid4().hex[:6]}"),
                      "blob_key": new_master_key(), "organization": CENTER, "mode": "receive",
                      "senders": {"hospital": {"organization": SENDER,
                                               "jwks_file": str(root / "sender-jwks.json")}}})
    svc = app.extensions["gateway"]
    svc.keys.ensure()
    with svc.db.session() as s:
        _, token = create_token(s, "hospital", "peer", "bench")
    return svc, app.test_client(), token


def _receive(root: Path, sender_svc, body: bytes, signature: str) -> float:
    from gateway.trust.receipts import SIGNATURE_HEADER

    svc, client, token = receiver(root, sender_svc)
    seconds, response = timed(lambda: client.post(
        "/fhir", data=body, content_type="application/fhir+json",
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "bench-1",
                 SIGNATURE_HEADER: signature}))
    assert response.status_code == 200, response.get_json()
    svc.close()
    return seconds


if __name__ == "__main__":
    main()
