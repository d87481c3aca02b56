"""Sending side: POST /receipts takes an "opened" receipt a recipient gateway signed."""
from __future__ import annotations

from flask import Blueprint, g, jsonify

from gateway.errors import InvalidInput
from gateway.outbound.opened import store_opened

from .auth import json_body, require, svc

bp = Blueprint("receipts", __name__)


@bp.post("/receipts")
@require("peer")
def opened():
    token = json_body().get("jws")
    if not isinstance(token, str) or len(token) > 64 * 1024:
        raise InvalidInput("'jws' must be a compact JWS string")
    return jsonify(store_opened(svc(), token, g.actor))
