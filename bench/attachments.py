"""Benchmark: a large document inline in its bundle against uploaded before it.

    python bench/attachments.py [SIZE_MB]

One record of SIZE_MB (default 64; random bytes standing for a scan) in a synthetic
transfer (bench/delivery.py's setup). Assembled twice: with the document inline (the
limit above it) and with the default `attachment_inline_max_bytes` (uploaded as
Binary/{id}). Each is received in process by a gateway in receive mode: inline, one
POST /fhir; uploaded, PUT /fhir/Binary/{id} (the raw bytes, streamed from a file), then
the small bundle. Measured per way: bundle bytes, receive time, peak Python heap on
the receive side (tracemalloc). The last line is one JSON object with the figures.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import delivery as base  # noqa: E402  (bench/delivery.py: the synthetic transfer)


def say(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


def _assemble(root: Path, inline: bool):
    from gateway.outbound import bundles
    from gateway.trust import receipts
    from gateway.storage.models import Transfer

    svc, tid, _ = base.setup(root)
    base.add_records(svc, tid)
    if inline:
        svc.settings.attachment_inline_max_bytes = 1 << 40
    with svc.db.session() as s:
        t = s.get(Transfer, tid)
        _ = t.sources, t.authorization
    [part] = bundles.assemble(svc, t)
    body = svc.blobs.read_bytes(part.blob.key)
    return svc, part, body, receipts.sign_bundle(svc.keys, body, "x")


def _receiver(root: Path, sender_svc):
    from gateway import create_app
    from gateway.storage.blobstore import new_master_key
    from gateway.trust.tokens import create_token

    (root / "sender-jwks.json").write_text(json.dumps(sender_svc.keys.jwks()))
    app = create_app({"data_dir": str(root / "receiver"), "blob_key": new_master_key(),
                      "organization": base.CENTER, "mode": "receive",
                      "senders": {"hospital": {"organization": base.SENDER,
                                               "jwks_file": str(root / "sender-jwks.json")}}})
    app.extensions["gateway"].keys.ensure()
    with app.extensions["gateway"].db.session() as s:
        _, token = create_token(s, "hospital", "peer", "bench")
    return app, {"Authorization": f"Bearer {token}"}


def _receive(root: Path, sender_svc, part, body: bytes, signature: str) -> tuple[float, float]:
    from gateway.trust.receipts import SIGNATURE_HEADER

    app, auth = _receiver(root, sender_svc)
    client = app.test_client()
    for up in part.uploads:  # the test client needs a seekable body: the plaintext on disk
        sender_svc.blobs.copy_to(up.blob_key, root / up.binary_id)
    tracemalloc.start()
    start = time.perf_counter()
    for up in part.uploads:
        with open(root / up.binary_id, "rb") as fh:
            r = client.put(f"/fhir/Binary/{up.binary_id}", input_stream=fh, content_length=up.size,
                           content_type=up.media_type, headers=auth)
        assert r.status_code == 201, r.get_json()
    r = client.post("/fhir", data=body, content_type="application/fhir+json",
                    headers={**auth, "Idempotency-Key": "bench-1", SIGNATURE_HEADER: signature})
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert r.status_code == 200, r.get_json()
    app.extensions["gateway"].close()
    return seconds, peak


def main() -> None:
    base.DOCS, base.SIZE_MB = 1, float(sys.argv[1]) if len(sys.argv) > 1 else 64.0
    root = Path(tempfile.mkdtemp(prefix="bench-attachments-"))
    say(f"one record of {base.SIZE_MB} MB in {root}")
    figures = {"record_mb": base.SIZE_MB}
    for way, inline in (("inline", True), ("upload", False)):
        svc, part, body, signature = _assemble(root / way, inline)
        assert bool(part.uploads) != inline
        seconds, peak = _receive(root / way, svc, part, body, signature)
        say(f"{way}: bundle {len(body) / 1e6:.2f} MB, received in {seconds:.2f} s, "
            f"peak heap on the receive side {peak / 1e6:.1f} MB")
        figures.update({f"{way}_bundle_mb": round(len(body) / 1e6, 3), f"{way}_receive_s": round(seconds, 3),
                        f"{way}_peak_heap_mb": round(peak / 1e6, 1)})
        svc.close()
    figures["heap_inline_vs_upload"] = round(figures["inline_peak_heap_mb"] / figures["upload_peak_heap_mb"], 1)
    figures["time_inline_vs_upload"] = round(figures["inline_receive_s"] / figures["upload_receive_s"], 2)
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
