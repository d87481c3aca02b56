"""Receive mode: the second-opinion center's inbox of received bundles."""
from __future__ import annotations

from flask import Blueprint, Response, g, jsonify
from sqlalchemy import select

from .. import audit
from ..errors import NotFound
from ..models import ReceivedBundle
from .auth import require, svc

bp = Blueprint("inbox", __name__, url_prefix="/inbox")


def _view(row: ReceivedBundle) -> dict:
    return {"id": row.id, "sender": row.sender, "bundle": row.bundle_identifier,
            "sha256": row.sha256, "size": row.size, "entries": row.entries,
            "receivedAt": row.received_at.isoformat(),
            "openedAt": row.opened_at.isoformat() if row.opened_at else None}


@bp.get("")
@require("recipient", "admin")
def index():
    with svc().db.session() as s:
        rows = s.scalars(select(ReceivedBundle).order_by(ReceivedBundle.received_at.desc())
                         .limit(500)).all()
        return jsonify({"received": [_view(r) for r in rows]})


@bp.get("/<received_id>/bundle")
@require("recipient")
def bundle(received_id: str):
    with svc().db.session() as s:
        row = s.get(ReceivedBundle, received_id)
        if row is None:
            raise NotFound(f"no received bundle {received_id}")
        audit.record(s, "api.read.received_bundle", actor=g.actor, role=g.role,
                     bundle=row.bundle_identifier, received_id=row.id)
        key = row.blob_key
    return Response(svc().blobs.chunks(key), mimetype="application/fhir+json")
