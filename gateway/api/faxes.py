"""Faxes: a transfer's cover sheet, and the review queue of unmatched faxes."""
from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, Response, g, jsonify, request, send_file

from connectors.fax.review import ReviewError
from gateway.engine import faxes
from gateway.errors import Conflict, InvalidInput

from .auth import json_body, require, svc
from .params import optional_text

bp = Blueprint("faxes", __name__)


def _queue(what: str, fax_id: str | None = None):
    return faxes.read_review(svc(), request.args.get("source"), what, g.actor, g.role, fax_id)


@bp.get("/transfers/<transfer_id>/cover-sheet")
@require("operator", "admin")
def cover_sheet(transfer_id: str):
    pdf = faxes.cover_sheet(svc(), transfer_id, request.args.get("source"), g.actor, g.role)
    response = Response(pdf, mimetype="application/pdf")
    response.headers["Content-Disposition"] = f'inline; filename="cover-{transfer_id[:12]}.pdf"'
    return response


@bp.get("/faxes/review")
@require("operator", "admin")
def review_list():
    name, queue = _queue("list")
    return jsonify({"source": name, "review": [asdict(i) for i in queue.list()],
                    "quarantine": [asdict(i) for i in queue.quarantined()]})


@bp.get("/faxes/review/<fax_id>")
@require("operator", "admin")
def review_show(fax_id: str):
    _, queue = _queue("item", fax_id)
    try:
        return jsonify(asdict(queue.get(fax_id)))
    except ReviewError as exc:
        raise Conflict(str(exc)) from None


@bp.get("/faxes/review/<fax_id>/preview")
@require("operator", "admin")
def review_preview(fax_id: str):
    _, queue = _queue("preview", fax_id)
    try:
        return send_file(queue.preview(fax_id), mimetype="image/png")
    except ReviewError as exc:
        raise Conflict(str(exc)) from None


@bp.post("/faxes/review/<fax_id>/assign")
@require("operator", "admin")
def review_assign(fax_id: str):
    transfer_id = json_body().get("transfer")
    if not isinstance(transfer_id, str):
        raise InvalidInput("'transfer' (the transfer id) is required")
    faxes.assign(svc(), request.args.get("source"), fax_id, transfer_id, g.actor, g.role)
    return jsonify({"fax": fax_id, "transfer": transfer_id, "state": "matched"})


@bp.post("/faxes/review/<fax_id>/reject")
@require("operator", "admin")
def review_reject(fax_id: str):
    faxes.reject(svc(), request.args.get("source"), fax_id,
                 optional_text(json_body(), "reason") or "", g.actor, g.role)
    return jsonify({"fax": fax_id, "state": "rejected"})
