"""Receive mode: accept a transaction Bundle from a peer gateway, store it encrypted,
answer with a signed delivery receipt.

Idempotent by (sender, Idempotency-Key): a replay of the same bytes gets the original
answer, the same key with other bytes is refused (422), nothing is stored twice.
"""
from __future__ import annotations

import base64
import hashlib
import json
import uuid

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import audit
from .delivery import RECEIPT_TYP
from .errors import Conflict, InvalidInput
from .models import ReceivedBundle, utcnow
from .services import Services

KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


class UnprocessableBundle(InvalidInput):
    http_status = 422


def _validate(body: bytes) -> Bundle:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        raise UnprocessableBundle("body is not a FHIR Bundle")
    if data.get("type") != "transaction":
        raise UnprocessableBundle("Bundle.type must be 'transaction'")
    try:
        bundle = Bundle.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UnprocessableBundle(f"invalid Bundle at {where}: {first['msg']} "
                                  f"({exc.error_count()} problem(s))") from None
    if not bundle.identifier or not bundle.identifier.value:
        raise UnprocessableBundle("Bundle.identifier is required")
    return bundle


def response_bundle(row: ReceivedBundle) -> dict:
    """The transaction-response, with the receipt as the Bundle's signature."""
    return {
        "resourceType": "Bundle", "type": "transaction-response",
        "id": row.id,
        "entry": [{"response": {"status": "201 Created"}} for _ in range(row.entries)],
        "signature": {
            "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.7",
                      "display": "Consent Signature"}],
            "when": row.received_at.isoformat(),
            "who": {"display": "receiving gateway"},
            "sigFormat": "application/jose",
            "data": base64.b64encode(row.receipt_jws.encode()).decode(),
        },
    }


def accept_bundle(svc: Services, session: Session, *, sender: str, idempotency_key: str,
                  body: bytes) -> tuple[ReceivedBundle, bool]:
    """Store a delivered bundle once; return (row, created). Caller commits."""
    if not idempotency_key or len(idempotency_key) > 128 or not set(idempotency_key) <= KEY_CHARS:
        raise InvalidInput("Idempotency-Key header is missing or malformed")
    digest = hashlib.sha256(body).hexdigest()
    existing = session.scalars(select(ReceivedBundle).filter_by(
        sender=sender, idempotency_key=idempotency_key)).first()
    if existing is not None:
        if existing.sha256 != digest:
            raise UnprocessableBundle("Idempotency-Key was already used for a different bundle")
        return existing, False
    bundle = _validate(body)
    blob = svc.blobs.put_bytes(body)
    now = utcnow()
    row = ReceivedBundle(id=uuid.uuid4().hex, sender=sender, idempotency_key=idempotency_key,
                         bundle_identifier=bundle.identifier.value, sha256=digest,
                         size=len(body), entries=len(bundle.entry or []), blob_key=blob.key,
                         received_at=now, receipt_jws="")
    row.receipt_jws = svc.keys.sign({
        "iss": svc.settings.organization, "receipt_id": row.id, "bundle": row.bundle_identifier,
        "sha256": digest, "size": row.size, "entries": row.entries, "sender": sender,
        "received_at": now.isoformat(), "status": "accepted"}, RECEIPT_TYP)
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # the same delivery is being stored by a parallel request
        svc.blobs.delete(blob.key)
        raise Conflict("this delivery is already being processed; retry shortly") from None
    audit.record(session, "receive.bundle.accepted", actor=sender, role="peer",
                 bundle=row.bundle_identifier, sha256=digest, size=row.size, entries=row.entries,
                 receipt_id=row.id)
    return row, True
