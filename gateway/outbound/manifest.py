"""The completeness manifest: per source, counts and the sha256 of every item delivered,
in the bundle or beside it (DICOM instances go by C-STORE/STOW-RS: kind "dicom", no
bundle entry). Items not delivered (outside the authorization, skipped) are only
counted, never named: their names may say what the patient did not release."""
from __future__ import annotations

import base64
import hashlib
import json

from fhir.resources.R4B.documentreference import DocumentReference

from gateway.exchange.manifest import MANIFEST_TYPE, MEDIA_TYPE

from . import completeness
from .units import Unit


def manifest_document(t, items, places, part_of, group: str) -> dict:
    where: dict[tuple[str, str], str] = {}
    for full_url, seen in places.items():
        for place in seen:
            where.setdefault(place, full_url)
    sources: dict[str, dict] = {}
    for src in t.sources:
        sources[src.name] = {"state": src.state, "items": 0, "bytes": 0, "byState": {},
                             "delivered": [], "sha256": None}
    for item in items:
        entry = sources.setdefault(item.source, {"state": "unknown", "items": 0, "bytes": 0,
                                                 "byState": {}, "delivered": [], "sha256": None})
        entry["items"] += 1
        entry["byState"][item.state] = entry["byState"].get(item.state, 0) + 1
        if item.state != "mapped":
            continue
        entry["bytes"] += item.size
        full_url = where.get((item.source, item.origin))
        entry["delivered"].append({
            "origin": item.origin, "kind": item.kind, "mediaType": item.media_type,
            "size": item.size, "sha256": item.sha256,
            "entry": full_url if item.kind != "dicom" else None,
            "part": part_of.get(full_url, 1) if full_url and item.kind != "dicom" else None,
            "sentBeside": item.kind == "dicom",
            **({"study": item.record_meta.get("study_uid")} if item.kind == "dicom" else {})})
    for name, found in completeness.report(t.sources, items).items():
        entry = sources.setdefault(name, {"state": found["state"], "items": 0, "bytes": 0,
                                          "byState": {}, "delivered": [], "sha256": None})
        entry["completeness"] = {k: v for k, v in found.items() if k != "state"}
    for entry in sources.values():
        entry["delivered"].sort(key=lambda d: d["origin"])
        entry["sha256"] = hashlib.sha256("".join(d["sha256"] for d in entry["delivered"])
                                         .encode()).hexdigest()
    return {"transfer": t.id, "submissionGroup": group, "sources": sources}


def build(svc, t, shape, items, places, part_of, patient_url, urn) -> list:
    group = urn(t.id, "submission-group")
    data = json.dumps(manifest_document(t, items, places, part_of, group),
                      sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    doc_url, bin_url = urn(t.id, "manifest"), urn(t.id, "manifest-binary")
    doc = json.loads(DocumentReference.model_validate({
        "resourceType": "DocumentReference",
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": doc_url},
        "identifier": [{"system": "urn:records-gateway:sha256", "value": digest}],
        "status": "current", "type": {"coding": [MANIFEST_TYPE]},
        "subject": {"reference": patient_url}, "date": t.created_at.isoformat(),
        "author": [{"display": svc.settings.organization}],
        "description": "Completeness manifest: per source, counts and sha256 of every item",
        "content": [{"attachment": {"contentType": MEDIA_TYPE, "url": bin_url, "size": len(data),
                                    "title": "manifest.json",
                                    "hash": base64.b64encode(hashlib.sha1(data).digest()).decode()}}],
    }).model_dump_json())
    binary = {"resourceType": "Binary", "contentType": MEDIA_TYPE,
              "data": base64.b64encode(data).decode()}
    return [Unit(date="", full_url=doc_url, data_class="manifest",
                 entries=[shape.entry(doc_url, doc), shape.entry(bin_url, binary)])]
