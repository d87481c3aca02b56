"""Benchmark: assembling, signing and receiving the standard case's bundle, in process.

    python bench/standard_bundle.py

The bundle of bench/e2e.py's standard case without the peers around it: one Synthea
patient (the generated one closest to 3,000 resources, as e2e_world picks it), its
$everything as a FHIR source's NDJSON records of 500 resources (server-style fullUrls and
references), mapped by the real mapping (mappings/fhir_r4.py); 10 PDFs (records pages
from tests/fax/faxgen.py) mapped as documents; a 300-instance CT study (a study record
mapped to ImagingStudy, and 300 instance items that go beside the bundle). Measured,
median of ROUNDS (the FHIR models and the schema check loaded first, as `serve` and
`worker` do at start, gateway/runtime/warmup.py):
- assembly (gateway/outbound/bundles.py `assemble`) and signing (`receipts.sign_bundle`),
  the two halves of the `assembling` step;
- receiving the bundle in process (gateway/inbound/receive.py through the HTTP
  endpoint: signature, validation, Consent and scope, entry hashes, store, receipt),
  each round by a new receiving gateway (the same bundle twice would be a replay).
The last line is one JSON object with the figures.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROUNDS = 5
CHUNK = 500  # resources a "fhir-json" record (the connector's chunk_resources default)
FAXES = 10
INSTANCES = 300
BASE = "http://127.0.0.1:9/fhir"
SENDER, CENTER, ISSUER = "org-bench-hospital", "org-bench-center", "https://bench-esign.example"


def say(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


def synthea_subject() -> Path:
    from bench.e2e_world import TARGET_RESOURCES
    from tests.fhir.fhir_peers import synthea_patients

    files = synthea_patients(8, 11)
    sizes = {f: len(orjson.loads(f.read_bytes())["entry"]) for f in files}
    return min(files, key=lambda f: abs(sizes[f] - TARGET_RESOURCES))


def server_lines(path: Path) -> tuple[dict, list[bytes]]:
    """The Synthea patient and its resources as a server serves them: fullUrl under the
    base, references "Type/id" (Synthea's urn:uuid ones rewritten, conditional ones to the
    resource they name)."""
    entries = orjson.loads(path.read_bytes())["entry"]
    types = {e["fullUrl"]: e["resource"]["resourceType"] for e in entries}
    by_ident = {}
    for e in entries:
        r = e["resource"]
        for i in r.get("identifier") or []:
            by_ident[f"{r['resourceType']}?identifier={i.get('system')}|{i.get('value')}"] = \
                f"{r['resourceType']}/{r['id']}"

    def fix(node):
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str):
                if ref in types:
                    node["reference"] = f"{types[ref]}/{ref.rsplit(':', 1)[-1]}"
                elif ref in by_ident:
                    node["reference"] = by_ident[ref]
            for v in node.values():
                fix(v)
        elif isinstance(node, list):
            for v in node:
                fix(v)

    lines, patient = [], None
    for e in entries:
        r = e["resource"]
        fix(r)
        if r["resourceType"] == "Patient":
            patient = r
        lines.append(orjson.dumps({"fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}", "resource": r}))
    return patient, lines


def setup(root: Path, patient: dict):
    from gateway import create_app
    from gateway.engine.operations import import_authorization
    from gateway.engine.transfers import create_transfer
    from gateway.storage.blobstore import new_master_key
    from gateway.trust.authorizations import example_claims, new_issuer_key, sign_authorization
    from gateway.trust.issuers import trust_document

    root.mkdir(parents=True, exist_ok=True)
    key = new_issuer_key("bench-1")
    (root / "issuers.json").write_text(json.dumps(trust_document({ISSUER: [key]})))
    sources, endpoints = {}, []
    for name in ("ehr", "pacs", "fax"):
        drop = root / f"drop-{name}"
        sources[name] = {"kind": "pdf-folder", "organization": SENDER, "endpoint": str(drop),
                         "options": {"path": str(drop)}}
        endpoints.append({"type": "pdf-folder", "address": str(drop)})
    app = create_app({"data_dir": str(root / "sender"), "blob_key": new_master_key(),
                      "trust_file": str(root / "issuers.json"), "organization": SENDER,
                      "sources": sources,
                      "peers": {"center": {"base_url": "http://127.0.0.1:9", "organization": CENTER,
                                           "token": "unused"}}})
    svc = app.extensions["gateway"]
    svc.keys.ensure()
    name = patient["name"][0]
    who = {"identifiers": [{"system": "urn:bench:mrn", "value": "bench-1"}],
           "name": {"family": name["family"], "given": list(name.get("given", []))},
           "birthDate": patient["birthDate"]}
    claims = example_claims(ISSUER, f"bench-{uuid.uuid4().hex[:8]}", patient=who,
                            disclosers=[{"id": SENDER, "name": "Hospital", "endpoints": endpoints}],
                            recipient={"id": CENTER, "name": "Center", "endpoint": {
                                "type": "gateway", "address": "http://127.0.0.1:9"}})
    auth = import_authorization(svc, sign_authorization(claims, key), "bench")
    with svc.db.session() as s:
        t = create_transfer(svc, s, authorization_id=auth.id, sources=["ehr", "pacs", "fax"],
                            recipient="center", actor="bench")
        tid = t.id
    return svc, tid


def add_items(svc, tid: str, root: Path, lines: list[bytes]) -> int:
    from connectors.base import RawRecord
    from gateway.engine.mapping import _stored  # as a pull stores a mapped record
    from gateway.exchange.ids import patient_urn
    from gateway.storage.models import Item, TransferSource
    from mappings import MappingContext, map_record
    from tests.fax import faxgen

    context = MappingContext(patient_reference=patient_urn(tid))
    now = datetime.now(timezone.utc)
    records = []  # (source, kind, media type, file, metadata)
    for n in range(0, len(lines), CHUNK):
        path = root / f"page-{n // CHUNK:03d}.ndjson"
        path.write_bytes(b"\n".join(lines[n:n + CHUNK]) + b"\n")
        records.append(("ehr", "fhir-json", "application/fhir+ndjson", path,
                        {"base_url": BASE, "fhir_version": "4.0.1", "stream": "everything",
                         "page": n // CHUNK, "chunk": 0}))
    for n, person in enumerate(faxgen.people(FAXES, seed=3)):
        path = root / f"fax-{n:02d}.pdf"
        path.write_bytes(faxgen.records_pdf(person, pages=2, seed=n))
        records.append(("fax", "pdf", "application/pdf", path, {"data_class": "notes"}))
    study = "1.2.826.0.1.3680043.8.498.1"
    series = {f"{study}.{s}": {"uid": f"{study}.{s}", "modality": "CT", "number": s, "body_part": "CHEST",
                                "instances": {f"{study}.{s}.{i}": {
                                    "sop_instance_uid": f"{study}.{s}.{i}",
                                    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "number": i}
                                    for i in range(1, INSTANCES // 3 + 1)}} for s in (1, 2, 3)}
    path = root / "study.json"
    path.write_text(json.dumps({"study": {"uid": study, "date": "20240115", "accession": "E2E0000",
                                          "description": "CT CHEST"},
                                "series": list(series.values()),
                                "endpoint": {"type": "dicom-wado-rs", "address": "http://127.0.0.1:9/wado"}}))
    records.append(("pacs", "dicom-study", "application/json", path, {"study_uid": study}))
    resources = 0
    with svc.db.session() as s:
        for source, kind, media, path, meta in records:
            blob = svc.blobs.put_file(path)
            record = RawRecord(source=source, kind=kind, media_type=media, path=path, sha256=blob.sha256,
                               size=blob.size, origin=f"{source}:{path.name}", fetched_at=now, metadata=meta)
            mapped = map_record(record, context)
            resources += len(mapped)
            payload = svc.blobs.put_bytes(b"[" + b",".join(_stored(m) for m in mapped) + b"]")
            s.add(Item(transfer_id=tid, source=source, origin=record.origin, kind=kind, media_type=media,
                       size=blob.size, sha256=blob.sha256, blob_key=blob.key, fetched_at=now,
                       state="mapped", resources_blob=payload.key, data_class=mapped[0].data_class,
                       record_meta=meta))
        for s_uid, ser in series.items():
            for sop in ser["instances"]:
                blob = svc.blobs.put_bytes(hashlib.sha256(sop.encode()).digest() * 64)
                s.add(Item(transfer_id=tid, source="pacs", origin=f"{study}/{s_uid}/{sop}", kind="dicom",
                           media_type="application/dicom", size=blob.size, sha256=blob.sha256,
                           blob_key=blob.key, fetched_at=now, state="mapped",
                           record_meta={"study_uid": study}))
        for src in s.query(TransferSource).filter_by(transfer_id=tid):
            src.state = "done"
    return resources


def main() -> None:
    from delivery import receiver  # bench/delivery.py: the same receiving gateway

    from gateway.outbound import bundles
    from gateway.runtime.warmup import fhir_models
    from gateway.storage.models import Transfer
    from gateway.trust import receipts
    from gateway.trust.receipts import SIGNATURE_HEADER

    root = Path(tempfile.mkdtemp(prefix="bench-standard-bundle-"))
    subject = synthea_subject()
    patient, lines = server_lines(subject)
    say(f"Synthea patient with {len(lines)} resources; working in {root}")
    say(f"loading the FHIR models and the schema check: {fhir_models(schema_check=True):.1f} s")
    svc, tid = setup(root, patient)
    started = time.perf_counter()
    resources = add_items(svc, tid, root, lines)
    say(f"mapped {resources} resources of {len(lines) // CHUNK + 1} FHIR records, {FAXES} PDFs "
        f"and a {INSTANCES}-instance study in {time.perf_counter() - started:.1f} s")
    with svc.db.session() as s:
        t = s.get(Transfer, tid)
        _ = t.sources, t.authorization

    assemble_s, sign_s, receive_s = [], [], []
    for n in range(ROUNDS):
        started = time.perf_counter()
        parts = bundles.assemble(svc, t)
        assemble_s.append(time.perf_counter() - started)
        body = svc.blobs.read_bytes(parts[0].blob.key)
        started = time.perf_counter()
        signature = receipts.sign_bundle(svc.keys, body, f"urn:uuid:{parts[0].bundle_id}")
        sign_s.append(time.perf_counter() - started)
        rsvc, client, token = receiver(root, svc)
        started = time.perf_counter()
        response = client.post("/fhir", data=body, content_type="application/fhir+json",
                               headers={"Authorization": f"Bearer {token}", "Idempotency-Key": f"bench-{n}",
                                        SIGNATURE_HEADER: signature})
        receive_s.append(time.perf_counter() - started)
        assert response.status_code == 200, response.get_data()[:2000]
        rsvc.close()
        if n < ROUNDS - 1:
            for p in parts:
                svc.blobs.delete(p.blob.key)
        say(f"round {n + 1}: {len(parts)} bundle(s) of {parts[0].entries} entries, {len(body) / 1e6:.1f} MB: "
            f"assembly {assemble_s[-1]:.2f} s, signing {sign_s[-1]:.3f} s, receiving {receive_s[-1]:.2f} s")
    figures = {
        "resources": len(lines), "entries": parts[0].entries, "bundle_mb": round(len(body) / 1e6, 2),
        "sha256": hashlib.sha256(body).hexdigest(),
        "assemble_s": round(statistics.median(assemble_s), 3),
        "sign_s": round(statistics.median(sign_s), 3),
        "receive_s": round(statistics.median(receive_s), 3),
        "rounds": ROUNDS,
    }
    svc.close()
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
