"""Receive mode: POST /fhir takes a signed transaction Bundle from a trusted peer gateway;
PUT /fhir/Binary/{id} the documents too large to travel inside it, sent before it."""
from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request

from gateway.errors import GatewayError, InvalidInput, PayloadTooLarge
from gateway.inbound import receive, uploads
from gateway.trust.receipts import SIGNATURE_HEADER

from .auth import require, svc
from .outcomes import operation_outcome

bp = Blueprint("receive", __name__)


def _answer(row, replayed: bool):
    response = jsonify(receive.response_bundle(row))
    response.mimetype = "application/fhir+json"
    response.status_code = 200
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _body() -> bytes:
    body = request.get_data(cache=False)
    if len(body) != request.content_length:
        raise InvalidInput("the body is shorter than its Content-Length")
    return body


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
    key = request.headers.get("Idempotency-Key", "")
    receive.check_key(key)
    done = receive.claim(svc(), g.actor, key)
    if done is not None:
        return _answer(receive.replay(done, _body()), True)
    try:
        row = receive.accept(svc(), sender=g.actor, key=key, body=_body(),
                             signature=request.headers.get(SIGNATURE_HEADER, ""))
    except GatewayError as exc:
        receive.release(svc(), g.actor, key)
        receive.record_refusal(svc(), g.actor, key, str(exc))
        if exc.transient or exc.http_status >= 500:
            raise
        response = operation_outcome(exc.http_status, exc.message, exc.code)
        response.headers[receive.REJECTION_HEADER] = receive.rejection_receipt(
            svc(), sender=g.actor, key=key, status=exc.http_status, message=exc.message)
        return response
    except BaseException:  # the sender went away mid-body, or a fault: nothing stored
        receive.release(svc(), g.actor, key)
        raise
    return _answer(row, False)


# --- documents uploaded before their bundle (Binary/{id}) -----------------------------

def _binary_headers(response, row):
    from gateway.exchange.ids import etag

    response.headers["ETag"] = etag(row.sha256)
    response.headers["Location"] = f"Binary/{row.binary_id}"
    return response


@bp.put("/fhir/Binary/<binary_id>")
@require("peer")
def binary_put(binary_id: str):
    """A document's raw bytes (Content-Type the document's), streamed into the blob
    store; answers with its sha256 as the ETag."""
    uploads.check_id(binary_id)
    if request.content_length is None:
        raise InvalidInput("Content-Length is required")
    limit = svc().settings.max_binary_bytes
    if request.content_length > limit:
        raise PayloadTooLarge(f"document is larger than the {limit} byte limit")
    request.max_content_length = limit  # documents have their own cap, not max_body_bytes
    row, created = uploads.store(svc(), g.actor, binary_id, request.stream,
                                          request.content_length,
                                          request.mimetype or "application/octet-stream")
    response = jsonify({"resourceType": "Binary", "id": row.binary_id, "contentType": row.content_type})
    response.mimetype = "application/fhir+json"
    response.status_code = 201 if created else 200
    return _binary_headers(response, row)


@bp.route("/fhir/Binary/<binary_id>", methods=["HEAD"])
@require("peer")
def binary_head(binary_id: str):
    """Whether this sender's upload is held, and its sha256 (the ETag): a resumed
    delivery asks before sending it again."""
    uploads.check_id(binary_id)
    row = uploads.held(svc(), g.actor, binary_id)
    return _binary_headers(Response(status=200, mimetype=row.content_type), row)
