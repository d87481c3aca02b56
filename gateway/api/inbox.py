"""Receive mode: a second-opinion center's inbox of received bundles.

Recipient role only. Each center sees its own: a recipient token is scoped to an
organization (`token create --organization`, default this gateway's own), and only
bundles whose Consent names that organization as the recipient are listed or served.
Opening a bundle signs an "opened" receipt and sends it back to the sender. The images
of the bundle's studies (received by STOW-RS beside it) are served as WADO-RS serves
them: a study as multipart/related; type="application/dicom", or one instance.
"""
from __future__ import annotations

import base64
import json
import re
import uuid

from flask import Blueprint, Response, g, jsonify
from sqlalchemy import select

from connectors.dicom.uids import clean_uid
from gateway import audit
from gateway.errors import NotFound
from gateway.inbound.opened import mark_opened
from gateway.inbound.uploads import open_for
from gateway.storage.models import ReceivedBundle

from .auth import require, svc

bp = Blueprint("inbox", __name__, url_prefix="/inbox")


def _org() -> str:
    return g.organization or svc().settings.organization


def _view(row: ReceivedBundle) -> dict:
    return {"id": row.id, "sender": row.sender, "senderOrganization": row.sender_org,
            "recipient": row.recipient_org, "bundle": row.bundle_identifier,
            "submissionGroup": row.submission_group, "part": row.part, "parts": row.parts,
            "sha256": row.sha256, "size": row.size, "entries": row.entries,
            "receivedAt": row.received_at.isoformat(),
            "openedAt": row.opened_at.isoformat() if row.opened_at else None,
            "openedBy": row.opened_by,
            "senderNotified": row.opened_notified_at is not None}


def _row(s, received_id: str, action: str) -> ReceivedBundle:
    row = s.get(ReceivedBundle, received_id)
    if row is None or row.state != "accepted" or row.recipient_org != _org():
        raise NotFound(f"no received bundle {received_id}")
    audit.record(s, f"api.read.{action}", actor=g.actor, role=g.role,
                 bundle=row.bundle_identifier, received_id=row.id)
    return row


def _load(received_id: str, action: str) -> dict:
    with svc().db.session() as s:
        key = _row(s, received_id, action).blob_key
    return json.loads(svc().blobs.read_bytes(key))


@bp.get("")
@require("recipient")
def index():
    with svc().db.session() as s:
        rows = s.scalars(select(ReceivedBundle).where(
            ReceivedBundle.state == "accepted", ReceivedBundle.recipient_org == _org())
            .order_by(ReceivedBundle.received_at.desc()).limit(500)).all()
        return jsonify({"received": [_view(r) for r in rows]})


@bp.get("/<received_id>/bundle")
@require("recipient")
def bundle(received_id: str):
    with svc().db.session() as s:
        key = _row(s, received_id, "received_bundle").blob_key
    return Response(svc().blobs.chunks(key), mimetype="application/fhir+json")


@bp.get("/<received_id>/documents")
@require("recipient")
def documents(received_id: str):
    data = _load(received_id, "received_documents")
    docs = []
    for entry in data.get("entry", []):
        res = entry["resource"]
        if res.get("resourceType") != "DocumentReference":
            continue
        att = (res.get("content") or [{}])[0].get("attachment", {})
        docs.append({"fullUrl": entry["fullUrl"], "date": res.get("date"),
                     "type": ((res.get("type") or {}).get("coding") or [{}])[0].get("display"),
                     "description": res.get("description"), "contentType": att.get("contentType"),
                     "size": att.get("size"), "title": att.get("title"),
                     "sha256": next((i.get("value") for i in res.get("identifier") or []
                                     if i.get("system") == "urn:records-gateway:sha256"), None),
                     "content": f"/inbox/{received_id}/documents/{entry['fullUrl'].rsplit(':', 1)[-1]}"})
    return jsonify({"documents": docs})


@bp.get("/<received_id>/documents/<doc_id>")
@require("recipient")
def document_content(received_id: str, doc_id: str):
    with svc().db.session() as s:
        row = _row(s, received_id, "received_document")
    data = json.loads(svc().blobs.read_bytes(row.blob_key))
    entries = {e["fullUrl"]: e["resource"] for e in data.get("entry", [])}
    doc = entries.get(f"urn:uuid:{doc_id}")
    if doc is None or doc.get("resourceType") != "DocumentReference":
        raise NotFound(f"no document {doc_id} in {received_id}")
    att = doc["content"][0]["attachment"]
    if str(att.get("url", "")).startswith("Binary/"):
        return _uploaded(row, att)
    binary = entries.get(att.get("url", ""))
    if binary is None or binary.get("resourceType") != "Binary":
        raise NotFound(f"document {doc_id} has no content in this bundle")
    return _document(base64.b64decode(binary["data"]), binary.get("contentType"), doc_id)


def _uploaded(row: ReceivedBundle, att: dict) -> Response:
    """A document sent before its bundle (Binary/{id}); the bundle's acceptance checked
    its sha256 and size, so it is streamed as stored."""
    upload = open_for(svc(), row.sender, att["url"])
    if upload is None or upload.bundle_id is None:
        raise NotFound("the document's content is not held by this gateway")
    response = _document(svc().blobs.chunks(upload.blob_key), upload.content_type,
                         att["url"].rsplit("/", 1)[-1])
    response.headers["Content-Length"] = str(upload.size)
    return response


# Media types served as they are; anything else a sender names (text/html, SVG, scripts)
# goes as application/octet-stream. Always as an attachment in a sandbox: the document
# never runs in the gateway's origin, whatever it holds.
SERVED_AS_IS = {"application/pdf": "pdf", "image/tiff": "tiff", "image/png": "png",
                "image/jpeg": "jpg", "text/plain": "txt", "application/json": "json",
                "application/fhir+json": "json", "application/dicom": "dcm"}


def _document(body, content_type: str | None, name: str) -> Response:
    media = str(content_type or "").split(";")[0].strip().lower()
    ext = SERVED_AS_IS.get(media)
    if ext is None:
        media, ext = "application/octet-stream", "bin"
    stem = name if re.fullmatch(r"[A-Za-z0-9-]{1,64}", name or "") else "document"
    response = Response(body, mimetype=media)
    response.headers["Content-Disposition"] = f'attachment; filename="{stem}.{ext}"'
    response.headers["Content-Security-Policy"] = "sandbox"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/<received_id>/studies")
@require("recipient")
def studies(received_id: str):
    """The ImagingStudies of a bundle, each with the instances it announces and how many
    of them this gateway actually holds (received by STOW-RS from the same sender)."""
    from gateway.inbound import stow

    with svc().db.session() as s:
        row = _row(s, received_id, "received_studies")
        sender, key = row.sender, row.blob_key
    data = json.loads(svc().blobs.read_bytes(key))
    out = []
    for entry in data.get("entry", []):
        res = entry["resource"]
        if res.get("resourceType") == "ImagingStudy":
            uid = next((i.get("value") for i in res.get("identifier") or []
                        if i.get("system") == "urn:dicom:uid"), None)
            out.append({"fullUrl": entry["fullUrl"], "studyInstanceUid": uid,
                        "started": res.get("started"), "description": res.get("description"),
                        "modalities": [m.get("code") for m in res.get("modality") or []],
                        "series": res.get("numberOfSeries"), "instances": res.get("numberOfInstances")})
    uids = [o["studyInstanceUid"].removeprefix("urn:oid:") for o in out if o["studyInstanceUid"]]
    held = stow.received_counts(svc(), sender, uids)
    for o in out:
        uid = (o["studyInstanceUid"] or "").removeprefix("urn:oid:")
        o["instancesReceived"] = held.get(uid, 0)
        o["retrieve"] = f"/inbox/{received_id}/studies/{uid}" if uid else None
    return jsonify({"studies": out})


def _study_rows(received_id: str, study_uid: str, sop_uid: str | None = None):
    """The instances of one of this bundle's studies that this gateway holds."""
    study = clean_uid(study_uid)
    if study is None or (sop_uid is not None and clean_uid(sop_uid) is None):
        raise NotFound("not a DICOM UID")
    from gateway.inbound import stow

    with svc().db.session() as s:
        row = _row(s, received_id, "received_images")
        sender, key = row.sender, row.blob_key
    data = json.loads(svc().blobs.read_bytes(key))
    described = {i.get("value") for e in data.get("entry", [])
                 if e["resource"].get("resourceType") == "ImagingStudy"
                 for i in e["resource"].get("identifier") or [] if i.get("system") == "urn:dicom:uid"}
    if f"urn:oid:{study}" not in described:
        raise NotFound(f"bundle {received_id} describes no study {study}")
    rows = stow.taken(svc(), sender, study, sop_uid)
    if not rows:
        raise NotFound(f"no instances of study {study} are held here" if sop_uid is None
                       else f"instance {sop_uid} is not held here")
    return rows


@bp.get("/<received_id>/studies/<study_uid>")
@require("recipient")
def study_instances(received_id: str, study_uid: str):
    """Every held instance of the study, streamed from the blob store part by part."""
    rows = _study_rows(received_id, study_uid)
    boundary, blobs = uuid.uuid4().hex, svc().blobs  # the generator runs after the request context

    def parts():
        for r in rows:
            yield (f"--{boundary}\r\nContent-Type: application/dicom\r\n"
                   f"Content-Length: {r.size}\r\n\r\n").encode()
            yield from blobs.chunks(r.blob_key)
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()
    return Response(parts(), content_type=f'multipart/related; type="application/dicom"; '
                                          f"boundary={boundary}")


@bp.get("/<received_id>/studies/<study_uid>/instances/<sop_uid>")
@require("recipient")
def study_instance(received_id: str, study_uid: str, sop_uid: str):
    [r] = _study_rows(received_id, study_uid, sop_uid)
    return Response(svc().blobs.chunks(r.blob_key), mimetype="application/dicom",
                    headers={"Content-Length": str(r.size)})


@bp.post("/<received_id>/reply")
@require("recipient")
def reply(received_id: str):
    """The return path: send the center's written opinion back to the sender, signed;
    answers with the sender's verified receipt."""
    from gateway.inbound.replies import send_reply

    from .auth import json_body

    body = json_body()
    resource = body.get("resource", body)
    with svc().db.session() as s:
        row = _row(s, received_id, "received_reply")
    return jsonify(send_reply(svc(), row, resource, g.actor))


@bp.post("/<received_id>/opened")
@require("recipient")
def opened(received_id: str):
    with svc().db.session() as s:
        _row(s, received_id, "received_opened")
    row = mark_opened(svc(), received_id, g.actor)
    return jsonify(_view(row))
