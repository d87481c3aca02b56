"""Receive mode: POST /fhir takes a transaction Bundle from a peer gateway."""
from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from ..errors import InvalidInput, PayloadTooLarge
from ..receive import accept_bundle, response_bundle
from .auth import require, svc

bp = Blueprint("receive", __name__)


@bp.post("/fhir")
@require("peer")
def transaction():
    limit = svc().settings.max_body_bytes
    if request.content_length is None:
        raise InvalidInput("Content-Length is required")
    if request.content_length > limit:
        raise PayloadTooLarge(f"bundle is larger than the {limit} byte limit")
    if request.mimetype not in ("application/fhir+json", "application/json"):
        raise InvalidInput("Content-Type must be application/fhir+json")
    body = request.get_data(cache=False)
    with svc().db.session() as s:
        row, created = accept_bundle(svc(), s, sender=g.actor,
                                     idempotency_key=request.headers.get("Idempotency-Key", ""),
                                     body=body)
        reply = response_bundle(row)
    response = jsonify(reply)
    response.mimetype = "application/fhir+json"
    response.status_code = 200
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response
