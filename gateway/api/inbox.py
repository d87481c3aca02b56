"""Receive mode: a second-opinion center's inbox of received bundles.

Recipient role only. Each center sees its own: a recipient token is scoped to an
organization (`token create --organization`, default this gateway's own), and only
bundles whose Consent names that organization as the recipient are listed or served.
Opening a bundle signs an "opened" receipt and sends it back to the sender. The images
of the bundle's studies (received by STOW-RS beside it) are served as WADO-RS serves
them: a study as multipart/related; type="application/dicom", or one instance.
"""
from __future__ import annotations

import uuid

from flask import Blueprint, Response, g, jsonify

from connectors.dicom.uids import clean_uid
from gateway.errors import NotFound
from gateway.inbound import inbox
from gateway.inbound.opened import mark_opened
from gateway.storage.models import ReceivedBundle

from .auth import require, svc

bp = Blueprint("inbox", __name__, url_prefix="/inbox")


def _org() -> str:
    return g.organization or svc().settings.organization


def _row(s, received_id: str, action: str) -> ReceivedBundle:
    return inbox.get(s, received_id, _org(), action, g.actor, g.role)


def _load(received_id: str, action: str) -> dict:
    with svc().db.session() as s:
        row = _row(s, received_id, action)
    return inbox.load(svc(), row)


@bp.get("")
@require("recipient")
def index():
    return jsonify({"received": [inbox.view(r) for r in inbox.received(svc(), _org())]})


@bp.get("/<received_id>/bundle")
@require("recipient")
def bundle(received_id: str):
    with svc().db.session() as s:
        key = _row(s, received_id, "received_bundle").blob_key
    return Response(svc().blobs.chunks(key), mimetype="application/fhir+json")


@bp.get("/<received_id>/documents")
@require("recipient")
def documents(received_id: str):
    return jsonify({"documents": inbox.documents(_load(received_id, "received_documents"),
                                                 received_id)})


@bp.get("/<received_id>/documents/<doc_id>")
@require("recipient")
def document_content(received_id: str, doc_id: str):
    with svc().db.session() as s:
        row = _row(s, received_id, "received_document")
    content = inbox.document_content(svc(), row, doc_id)
    response = document_response(content.body, content.content_type, content.name)
    if content.size is not None:
        response.headers["Content-Length"] = str(content.size)
    return response


def document_response(body, content_type: str | None, name: str) -> Response:
    """As an attachment, in a sandbox, with no sniffing (see inbox.served_as)."""
    media, filename = inbox.served_as(content_type, name)
    response = Response(body, mimetype=media)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Content-Security-Policy"] = "sandbox"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/<received_id>/studies")
@require("recipient")
def studies(received_id: str):
    """The ImagingStudies of a bundle, each with the instances it announces and how many
    of them this gateway actually holds (received by STOW-RS from the same sender)."""
    with svc().db.session() as s:
        row = _row(s, received_id, "received_studies")
    return jsonify({"studies": inbox.studies(svc(), row, inbox.load(svc(), row))})


def _study_rows(received_id: str, study_uid: str, sop_uid: str | None = None):
    """The instances of one of this bundle's studies that this gateway holds."""
    study = clean_uid(study_uid)
    if study is None or (sop_uid is not None and clean_uid(sop_uid) is None):
        raise NotFound("not a DICOM UID")
    with svc().db.session() as s:
        row = _row(s, received_id, "received_images")
    return inbox.study_rows(svc(), row, inbox.load(svc(), row), study, sop_uid)


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
    return jsonify(inbox.view(row))
