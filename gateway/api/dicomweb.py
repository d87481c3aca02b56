"""Receive mode: STOW-RS (POST /dicomweb/studies[/{study}]) for a trusted peer gateway's
DICOM instances; see gateway/inbound/stow.py."""
from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from gateway.errors import Forbidden, InvalidInput, PayloadTooLarge
from gateway.inbound import stow

from .auth import require, svc

bp = Blueprint("dicomweb", __name__, url_prefix="/dicomweb")


@bp.post("/studies")
@bp.post("/studies/<study>")
@require("peer")
def store_instances(study: str | None = None):
    settings = svc().settings
    if g.actor not in settings.senders:
        raise Forbidden(f"sender {g.actor!r} is not a trusted sender of this gateway")
    if study is not None and stow.clean_uid(study) is None:
        raise InvalidInput("the study in the URL is not a valid UID")
    if request.content_length is None:
        raise InvalidInput("Content-Length is required")
    if request.content_length > settings.max_body_bytes:
        raise PayloadTooLarge(f"request is larger than the {settings.max_body_bytes} byte limit")
    result = stow.receive(svc(), g.actor, request.stream, request.content_length,
                          request.headers.get("Content-Type", ""), study)
    response = jsonify(result.response(f"{settings.base_url}/dicomweb/studies"))
    response.mimetype = "application/dicom+json"
    response.status_code = result.status()
    return response
