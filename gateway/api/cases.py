"""/cases: everything done under one authorization, started by itself; approve a case
waiting for review, record that a source has no records, close a case."""
from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from gateway.engine.operations import (
    approve_case,
    close_case,
    get_case,
    list_cases,
    mark_no_records,
)
from gateway.errors import InvalidInput

from .auth import json_body, require, svc
from .params import query_number

bp = Blueprint("cases", __name__, url_prefix="/cases")


@bp.get("")
@require("operator", "admin", "auditor")
def index():
    limit = query_number("limit", 100)
    return jsonify({"cases": list_cases(svc(), request.args.get("state"), limit)})


@bp.get("/<case_id>")
@require("operator", "admin", "auditor")
def show(case_id: str):
    return jsonify(get_case(svc(), case_id))


@bp.post("/<case_id>/approve")
@require("operator", "admin")
def approve(case_id: str):
    return jsonify(approve_case(svc(), case_id, actor=g.actor, role=g.role))


@bp.post("/<case_id>/sources/<source>/no-records")
@require("operator", "admin")
def no_records(case_id: str, source: str):
    reason = json_body().get("reason")
    return jsonify(mark_no_records(svc(), case_id, source, reason, actor=g.actor, role=g.role))


@bp.post("/<case_id>/close")
@require("operator", "admin")
def close(case_id: str):
    body = json_body()
    reason, event = body.get("reason"), body.get("event")
    if not all(v is None or isinstance(v, str) for v in (reason, event)):
        raise InvalidInput("'reason' and 'event' must be strings")
    return jsonify(close_case(svc(), case_id, g.actor, g.role, reason=reason, event=event))
