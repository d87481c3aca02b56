"""Assemble a transfer's FHIR transaction Bundle, streamed into the blob store.

Shape of IHE MHD "Provide Document Bundle": a SubmissionSet List, the Patient, the
DocumentReferences with their Binaries, other clinical resources, the Consent of the
authorization and a Provenance per source, ordered by clinical date. Binaries are
base64-encoded from the encrypted record blobs chunk by chunk, so a large document
never sits in memory. Ids are derived from the transfer, so assembling twice gives
the same bytes.
"""
from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass

from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.list import List as FhirList
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.provenance import Provenance
from sqlalchemy import select

from .blobstore import BlobInfo
from .models import Item, Transfer
from .services import Services

NS = uuid.UUID("6f1c1f4e-8f0b-4d55-9a53-2b8e5c1d7a10")


def urn(transfer_id: str, *parts: str) -> str:
    return "urn:uuid:" + str(uuid.uuid5(NS, ":".join((transfer_id, *parts))))


def patient_urn(transfer_id: str) -> str:
    return urn(transfer_id, "patient")


def bundle_id(transfer_id: str) -> str:
    return urn(transfer_id, "bundle")[len("urn:uuid:"):]


@dataclass(frozen=True)
class Assembled:
    bundle_id: str
    blob: BlobInfo
    entries: int


def _dump(model) -> dict:
    return json.loads(model.model_dump_json())


def patient_resource(claims: dict) -> dict:
    p = claims["patient"]
    return _dump(Patient.model_validate({
        "resourceType": "Patient",
        "identifier": [{"system": i["system"], "value": i["value"]} for i in p["identifiers"]],
        "name": [{"family": p["name"]["family"], "given": list(p["name"].get("given", []))}],
        "birthDate": p["birthDate"],
    }))


def consent_resource(consent: dict, patient: str) -> dict:
    body = dict(consent)
    body["patient"] = {"reference": patient}
    body.pop("id", None)
    return _dump(Consent.model_validate(body))


def _entry(full_url: str, resource: dict) -> dict:
    return {"fullUrl": full_url, "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"]}}


def assemble(svc: Services, t: Transfer) -> Assembled:
    claims = t.authorization.claims
    patient = patient_urn(t.id)
    with svc.db.session() as s:
        items = s.scalars(select(Item).filter_by(transfer_id=t.id, state="mapped")).all()
    documents: list[tuple[str, dict, Item | None]] = []  # (clinical date, entry, binary source)
    by_source: dict[str, list[str]] = {}
    for item in items:
        for n, mapped in enumerate(json.loads(svc.blobs.read_bytes(item.resources_blob))):
            resource = mapped["resource"]
            full_url = urn(t.id, "item", str(item.id), str(n))
            resource.pop("id", None)
            binary_url = None
            if mapped["carries_record_bytes"]:
                binary_url = urn(t.id, "binary", str(item.id))
                for content in resource.get("content", []):
                    content["attachment"]["url"] = binary_url
            documents.append((mapped["clinical_date"] or "", _entry(full_url, resource),
                              item if binary_url else None))
            by_source.setdefault(item.source, []).append(full_url)
    documents.sort(key=lambda d: (d[0], d[1]["fullUrl"]))

    entries_head = [_entry(patient, patient_resource(claims))]
    consent_url = urn(t.id, "consent")
    entries_head.append(_entry(consent_url, consent_resource(t.authorization.consent, patient)))
    submission = _dump(FhirList.model_validate({
        "resourceType": "List",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": urn(t.id, "submissionset")}],
        "status": "current", "mode": "working", "title": "Records for a second opinion",
        "code": {"coding": [{"system": "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes",
                             "code": "submissionset"}]},
        "subject": {"reference": patient},
        "date": t.created_at.isoformat(),
        "source": {"display": svc.settings.organization},
        "entry": [{"item": {"reference": d[1]["fullUrl"]}} for d in documents
                  if d[1]["resource"]["resourceType"] == "DocumentReference"],
    }))
    submission["extension"] = [{
        "url": "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-intendedRecipient",
        "valueReference": {"display": claims["recipient"]["name"]}}]
    entries_head.append(_entry(urn(t.id, "submissionset"), submission))
    provenances = [_entry(urn(t.id, "provenance", name), _dump(Provenance.model_validate({
        "resourceType": "Provenance",
        "target": [{"reference": u} for u in urls],
        "recorded": t.created_at.isoformat(),
        "policy": [consent_url],
        "agent": [{"who": {"display": svc.settings.sources[name].organization
                           if name in svc.settings.sources else name}}],
    }))) for name, urls in sorted(by_source.items())]

    bid = bundle_id(t.id)
    head = {"resourceType": "Bundle", "id": bid,
            "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{bid}"},
            "type": "transaction", "timestamp": t.created_at.isoformat()}
    count = 0
    with svc.blobs.writer() as w:
        w.write(json.dumps(head)[:-1].encode() + b',"entry":[')
        for entry in entries_head + [d[1] for d in documents] + provenances:
            w.write((b"," if count else b"") + json.dumps(entry).encode())
            count += 1
        for _, entry, item in documents:
            if item is not None:
                w.write(b",")
                _write_binary(svc, w, entry["resource"]["content"][0]["attachment"]["url"], item)
                count += 1
        w.write(b"]}")
    return Assembled(bid, w.info, count)


def _write_binary(svc: Services, w, full_url: str, item: Item) -> None:
    prefix = {"fullUrl": full_url, "resource": {"resourceType": "Binary",
                                                "contentType": item.media_type, "data": ""},
              "request": {"method": "POST", "url": "Binary"}}
    text = json.dumps(prefix)
    cut = text.index('"data": ""') + len('"data": "')
    w.write(text[:cut].encode())
    pending = b""
    for chunk in svc.blobs.chunks(item.blob_key):
        pending += chunk
        usable = len(pending) - len(pending) % 3
        w.write(base64.b64encode(pending[:usable]))
        pending = pending[usable:]
    w.write(base64.b64encode(pending))
    w.write(text[cut:].encode())
