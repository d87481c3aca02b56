"""/center: the second-opinion center's requests (gateway/center/).

The center's staff (operator or recipient tokens) take a patient's request: a one-time
form token first (`POST /center/forms`), then the filled form (`POST /center/requests`);
each provider is then asked by itself. Staff scoped to another organization see none
of the requests. `POST /center/requests/{id}/status-link` mails the patient a new status
link and revokes the previous one. The patient's status link opens
`GET /center/status` and `POST /center/status/revoke`, the link's token in the
`X-Status-Token` header (never in an API URL)."""
from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from gateway import audit
from gateway.center import links, status, tasks
from gateway.center import requests as reqs
from gateway.errors import InvalidInput
from gateway.storage.models import CenterRequest

from .auth import json_body, require, svc
from .params import query_number

bp = Blueprint("center", __name__, url_prefix="/center")
STAFF = ("operator", "recipient", "admin")


def field_errors(exc: InvalidInput):
    """An OperationOutcome with one issue a wrong field (its name as the expression)."""
    fields = exc.details.get("fields") or {}
    body = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": message, "expression": [name]}
        for name, message in fields.items()] or [
        {"severity": "error", "code": "invalid", "diagnostics": exc.message}]}
    response = jsonify(body)
    response.status_code, response.mimetype = 400, "application/fhir+json"
    return response


@bp.get("/providers")
@require(*STAFF)
def providers():
    reqs.check_organization(svc(), g.organization)
    cfg = reqs.center(svc())
    return jsonify({"providers": [{"id": k, "name": p.name, "kind": p.kind}
                                  for k, p in sorted(cfg.providers.items())]})


@bp.post("/forms")
@require(*STAFF)
def new_form():
    reqs.check_organization(svc(), g.organization)
    return jsonify({"formToken": reqs.new_form(svc())}), 201


@bp.post("/requests")
@require(*STAFF)
def create():
    reqs.check_organization(svc(), g.organization)
    try:
        row = reqs.create(svc(), json_body(), actor=g.actor, role=g.role)
    except InvalidInput as exc:
        if exc.details.get("fields"):
            return field_errors(exc)
        raise
    tasks.enqueue_new(row.id, [p.id for p in row.providers])
    return jsonify(reqs.staff_view(row)), 201


@bp.get("/requests")
@require(*STAFF, "auditor")
def index():
    reqs.check_organization(svc(), g.organization)
    limit = query_number("limit", 100)
    with svc().db.session() as s:
        q = s.query(CenterRequest).order_by(CenterRequest.created_at.desc())
        if state := request.args.get("state"):
            q = q.filter(CenterRequest.state == state)
        return jsonify({"requests": [reqs.staff_view(r) for r in q.limit(limit)]})


@bp.get("/requests/<request_id>")
@require(*STAFF, "auditor")
def show(request_id: str):
    reqs.check_organization(svc(), g.organization)
    with svc().db.session() as s:
        row = reqs.get(s, request_id)
        audit.record(s, "api.read.center-request", actor=g.actor, role=g.role, request=row.id,
                     authorization_id=row.authorization_id)
        return jsonify(reqs.staff_view(row))


@bp.post("/requests/<request_id>/opinion-ready")
@require(*STAFF)
def opinion_ready(request_id: str):
    reqs.check_organization(svc(), g.organization)
    reqs.mark_opinion_ready(svc(), request_id, g.actor, g.role)
    with svc().db.session() as s:
        return jsonify(reqs.staff_view(reqs.get(s, request_id)))


@bp.post("/requests/<request_id>/revoke")
@require(*STAFF)
def staff_revoke(request_id: str):
    reqs.check_organization(svc(), g.organization)
    reason = json_body(required=False).get("reason") or "revoked on the patient's request"
    if not isinstance(reason, str) or len(reason) > 1000:
        raise InvalidInput("'reason' must be a string of at most 1000 characters")
    for provider_id in reqs.revoke(svc(), request_id, g.actor, g.role, reason):
        tasks.revoke.delay(provider_id)
    with svc().db.session() as s:
        return jsonify(reqs.staff_view(reqs.get(s, request_id)))


@bp.post("/requests/<request_id>/status-link")
@require(*STAFF)
def reissue_link(request_id: str):
    reqs.check_organization(svc(), g.organization)
    links.reissue(svc(), request_id, g.actor, g.role)
    with svc().db.session() as s:
        return jsonify(reqs.staff_view(reqs.get(s, request_id)))


@bp.get("/status")
def patient_status():
    return jsonify(status.for_link(svc(), request.headers.get("X-Status-Token")))


@bp.post("/status/revoke")
def patient_revoke():
    request_id, providers = status.revoke_by_link(svc(), request.headers.get("X-Status-Token"))
    for provider_id in providers:
        tasks.revoke.delay(provider_id)
    return jsonify(status.for_link(svc(), request.headers.get("X-Status-Token"), what="after-revoke"))
