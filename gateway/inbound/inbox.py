"""The center's inbox: what the API (gateway/api/inbox.py) and the staff's pages
(gateway/web/) both read, so they show the same bundles, documents and studies.

Every read names its reader in the audit log. A bundle is seen only by the organization
its Consent names as recipient (`org`); anything else reads as not found.
"""
from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select

from gateway import audit
from gateway.errors import NotFound
from gateway.runtime.services import Services
from gateway.storage.models import ReceivedBundle, ReceivedInstance

from . import stow
from .uploads import open_for

SHA256_SYSTEM = "urn:records-gateway:sha256"
DICOM_UID_SYSTEM = "urn:dicom:uid"
PATIENT_SUMMARY = "60591-5"  # LOINC Patient summary Document
MANIFEST = "completeness-manifest"


# Media types served as they are; anything else a sender names (text/html, SVG, scripts)
# goes as application/octet-stream. Always in a sandbox (CSP `sandbox`): the document
# never runs in the gateway's origin, whatever it holds.
SERVED_AS_IS = {"application/pdf": "pdf", "image/tiff": "tiff", "image/png": "png",
                "image/jpeg": "jpg", "text/plain": "txt", "application/json": "json",
                "application/fhir+json": "json", "application/dicom": "dcm"}


def served_as(content_type: str | None, name: str) -> tuple[str, str]:
    """(media type, file name) a document is served with: a known type as it is, any
    other as application/octet-stream; the name only from safe characters."""
    media = str(content_type or "").split(";")[0].strip().lower()
    ext = SERVED_AS_IS.get(media)
    if ext is None:
        media, ext = "application/octet-stream", "bin"
    stem = name if re.fullmatch(r"[A-Za-z0-9-]{1,64}", name or "") else "document"
    return media, f"{stem}.{ext}"


def view(row: ReceivedBundle) -> dict:
    return {"id": row.id, "sender": row.sender, "senderOrganization": row.sender_org,
            "recipient": row.recipient_org, "bundle": row.bundle_identifier,
            "submissionGroup": row.submission_group, "part": row.part, "parts": row.parts,
            "sha256": row.sha256, "size": row.size, "entries": row.entries,
            "receivedAt": row.received_at.isoformat(),
            "openedAt": row.opened_at.isoformat() if row.opened_at else None,
            "openedBy": row.opened_by,
            "senderNotified": row.opened_notified_at is not None}


def received(svc: Services, org: str, limit: int = 500) -> list[ReceivedBundle]:
    """The organization's accepted bundles, newest first."""
    with svc.db.session() as s:
        return list(s.scalars(select(ReceivedBundle).where(
            ReceivedBundle.state == "accepted", ReceivedBundle.recipient_org == org)
            .order_by(ReceivedBundle.received_at.desc()).limit(limit)).all())


def get(s, received_id: str, org: str, action: str | None, actor: str, role: str | None,
        face: str = "api") -> ReceivedBundle:
    """One of the organization's bundles, the read logged as `{face}.read.{action}`
    (`action` None: not logged, for a part of a page whose view was logged)."""
    row = s.get(ReceivedBundle, received_id)
    if row is None or row.state != "accepted" or row.recipient_org != org:
        raise NotFound(f"no received bundle {received_id}")
    if action is not None:
        audit.record(s, f"{face}.read.{action}", actor=actor, role=role,
                     bundle=row.bundle_identifier, received_id=row.id)
    return row


def load(svc: Services, row: ReceivedBundle) -> dict:
    return json.loads(svc.blobs.read_bytes(row.blob_key))


def _resources(data: dict, rtype: str) -> Iterable[tuple[str, dict]]:
    for entry in data.get("entry", []):
        if entry["resource"].get("resourceType") == rtype:
            yield entry["fullUrl"], entry["resource"]


def _code(res: dict) -> str | None:
    return ((res.get("type") or {}).get("coding") or [{}])[0].get("code")


def documents(data: dict, received_id: str) -> list[dict]:
    """The bundle's DocumentReferences, each with the path of its content."""
    docs = []
    for url, res in _resources(data, "DocumentReference"):
        att = (res.get("content") or [{}])[0].get("attachment", {})
        docs.append({"fullUrl": url, "date": res.get("date"),
                     "type": ((res.get("type") or {}).get("coding") or [{}])[0].get("display"),
                     "description": res.get("description"), "contentType": att.get("contentType"),
                     "size": att.get("size"), "title": att.get("title"),
                     "sha256": next((i.get("value") for i in res.get("identifier") or []
                                     if i.get("system") == SHA256_SYSTEM), None),
                     "content": f"/inbox/{received_id}/documents/{url.rsplit(':', 1)[-1]}"})
    return docs


@dataclass
class Content:
    """A document's bytes (or chunks) as the sender sent them, and what it says it is."""
    body: object  # bytes or an iterator of chunks
    content_type: str | None
    name: str
    size: int | None = None


def document_content(svc: Services, row: ReceivedBundle, doc_id: str) -> Content:
    data = load(svc, row)
    entries = {e["fullUrl"]: e["resource"] for e in data.get("entry", [])}
    doc = entries.get(f"urn:uuid:{doc_id}")
    if doc is None or doc.get("resourceType") != "DocumentReference":
        raise NotFound(f"no document {doc_id} in {row.id}")
    att = doc["content"][0]["attachment"]
    if str(att.get("url", "")).startswith("Binary/"):
        # sent before its bundle; the bundle's acceptance checked its sha256 and size
        upload = open_for(svc, row.sender, att["url"])
        if upload is None or upload.bundle_id is None:
            raise NotFound("the document's content is not held by this gateway")
        return Content(svc.blobs.chunks(upload.blob_key), upload.content_type,
                       att["url"].rsplit("/", 1)[-1], upload.size)
    binary = entries.get(att.get("url", ""))
    if binary is None or binary.get("resourceType") != "Binary":
        raise NotFound(f"document {doc_id} has no content in this bundle")
    body = base64.b64decode(binary["data"])
    return Content(body, binary.get("contentType"), doc_id, len(body))


def studies(svc: Services, row: ReceivedBundle, data: dict) -> list[dict]:
    """The bundle's ImagingStudies, each with the instances it announces and how many of
    them this gateway actually holds (received by STOW-RS from the same sender)."""
    out = []
    for url, res in _resources(data, "ImagingStudy"):
        uid = next((i.get("value") for i in res.get("identifier") or []
                    if i.get("system") == DICOM_UID_SYSTEM), None)
        out.append({"fullUrl": url, "studyInstanceUid": uid,
                    "started": res.get("started"), "description": res.get("description"),
                    "modalities": [m.get("code") for m in res.get("modality") or []],
                    "series": res.get("numberOfSeries"), "instances": res.get("numberOfInstances")})
    uids = [o["studyInstanceUid"].removeprefix("urn:oid:") for o in out if o["studyInstanceUid"]]
    held = stow.received_counts(svc, row.sender, uids)
    for o in out:
        uid = (o["studyInstanceUid"] or "").removeprefix("urn:oid:")
        o["instancesReceived"] = held.get(uid, 0)
        o["retrieve"] = f"/inbox/{row.id}/studies/{uid}" if uid else None
    return out


def study_rows(svc: Services, row: ReceivedBundle, data: dict, study: str,
               sop_uid: str | None = None) -> list[ReceivedInstance]:
    """The held instances of one of this bundle's studies (UIDs already checked)."""
    described = {i.get("value") for _, res in _resources(data, "ImagingStudy")
                 for i in res.get("identifier") or [] if i.get("system") == DICOM_UID_SYSTEM}
    if f"urn:oid:{study}" not in described:
        raise NotFound(f"bundle {row.id} describes no study {study}")
    rows = stow.taken(svc, row.sender, study, sop_uid)
    if not rows:
        raise NotFound(f"no instances of study {study} are held here" if sop_uid is None
                       else f"instance {sop_uid} is not held here")
    return rows


def _name(patient: dict) -> str | None:
    for name in patient.get("name") or []:
        if name.get("text"):
            return name["text"]
        parts = [*(name.get("given") or []), name.get("family") or ""]
        if any(parts):
            return " ".join(p for p in parts if p)
    return None


def summary(data: dict, received_id: str) -> dict:
    """What a reader needs first: who the records are about, the sender's patient summary
    (its Composition's sections and its PDF), and what else the bundle holds."""
    patient = next((res for _, res in _resources(data, "Patient")), {})
    composition = next((res for _, res in _resources(data, "Composition")), None)
    docs = documents(data, received_id)
    summary_doc = next((d for d, (_, res) in zip(docs, _resources(data, "DocumentReference"))
                        if _code(res) == PATIENT_SUMMARY), None)
    counts: dict[str, int] = {}
    for entry in data.get("entry", []):
        rtype = entry["resource"].get("resourceType")
        counts[rtype] = counts.get(rtype, 0) + 1
    sections = []
    for sec in (composition or {}).get("section") or []:
        # the entries' own short titles, not the section's XHTML: nothing from outside
        # is ever rendered as markup
        sections.append({"title": sec.get("title"),
                         "entries": [{"display": e.get("display"), "reference": e.get("reference")}
                                     for e in sec.get("entry") or []]})
    return {"patient": {"name": _name(patient), "birthDate": patient.get("birthDate"),
                        "gender": patient.get("gender"),
                        "identifiers": [f"{i.get('system', '')}|{i.get('value', '')}"
                                        for i in patient.get("identifier") or []]},
            "composition": ({"title": composition.get("title"), "date": composition.get("date"),
                             "sections": sections} if composition else None),
            "summaryDocument": summary_doc,
            "counts": counts,
            "documents": [d for d, (_, res) in zip(docs, _resources(data, "DocumentReference"))
                          if _code(res) not in (PATIENT_SUMMARY, MANIFEST)]}
