"""/transfers: start, list, follow, retry and cancel transfers."""
from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from gateway import audit
from gateway.engine.operations import (
    cancel_transfer,
    create_transfer,
    get_transfer,
    list_transfers,
    replay_transfer,
    retry_transfer,
)
from gateway.engine.transfers import STATES
from gateway.errors import InvalidInput

from .auth import json_body, require, svc
from .params import optional_text, query_number

bp = Blueprint("transfers", __name__, url_prefix="/transfers")


@bp.post("")
@require("operator", "admin")
def create():
    body = json_body()
    auth_id, sources, recipient = body.get("authorization"), body.get("sources"), body.get("recipient")
    if not isinstance(auth_id, str) or not isinstance(recipient, str):
        raise InvalidInput("'authorization' and 'recipient' must be strings")
    if not isinstance(sources, list) or not all(isinstance(x, str) for x in sources):
        raise InvalidInput("'sources' must be a list of source names")
    view = create_transfer(svc(), auth_id, sources, recipient, actor=g.actor, role=g.role)
    return jsonify(view), 202


@bp.get("")
@require("operator", "admin", "auditor")
def index():
    state = request.args.get("state")
    if state and state not in STATES:
        raise InvalidInput(f"unknown state {state!r}; states: {', '.join(STATES)}")
    return jsonify({"transfers": list_transfers(svc(), state, request.args.get("authorization"),
                                                query_number("limit", 100))})


@bp.get("/<transfer_id>")
@require("operator", "admin", "auditor")
def show(transfer_id: str):
    view = get_transfer(svc(), transfer_id)
    # the item list names records (file names can carry patient data): an audited read
    with svc().db.session() as s:
        audit.record(s, "api.read.transfer", actor=g.actor, role=g.role, transfer_id=transfer_id,
                     authorization_id=view["authorization"])
    return jsonify(view)


@bp.post("/<transfer_id>/retry")
@require("operator", "admin")
def retry(transfer_id: str):
    skip = json_body(required=False).get("skip_failed_items", False)
    if not isinstance(skip, bool):
        raise InvalidInput("'skip_failed_items' must be true or false")
    return jsonify(retry_transfer(svc(), transfer_id, g.actor, g.role, skip_failed_items=skip))


@bp.post("/<transfer_id>/replay")
@require("operator", "admin")
def replay(transfer_id: str):
    return jsonify(replay_transfer(svc(), transfer_id, g.actor, g.role))


@bp.post("/<transfer_id>/cancel")
@require("operator", "admin")
def cancel(transfer_id: str):
    reason = optional_text(json_body(required=False), "reason")
    return jsonify(cancel_transfer(svc(), transfer_id, reason or "cancelled by an operator",
                                   g.actor, g.role))
