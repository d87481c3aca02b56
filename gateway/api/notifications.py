"""/notifications: what the gateway told people, and replaying a dead notification."""
from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from gateway.notify.outbox import list_notifications, replay

from .auth import require, svc
from .params import query_number

bp = Blueprint("notifications", __name__, url_prefix="/notifications")


@bp.get("")
@require("operator", "admin", "auditor")
def index():
    limit = query_number("limit", 100)
    with svc().db.session() as s:
        return jsonify({"notifications": list_notifications(s, request.args.get("state"), limit)})


@bp.post("/<notification_id>/replay")
@require("operator", "admin")
def replay_one(notification_id: str):
    with svc().db.session() as s:
        return jsonify(replay(s, notification_id, g.actor, g.role))
