"""/authorizations: import a signed authorization, read it, revoke it.

A peer (a second-opinion center's gateway, with the peer token we issued it) may post
the authorizations its intake signed, and revoke them with a revocation signed by the
same issuer (`/authorizations/{id}/revocation`)."""
from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from gateway import audit
from gateway.engine.operations import (
    authorization_view,
    import_authorization,
    revoke_authorization,
    trust_store,
)
from gateway.errors import InvalidInput, NotFound, PayloadTooLarge
from gateway.storage.models import Authorization
from gateway.trust.authorizations import MAX_JWS_BYTES, verify_revocation

from .auth import json_body, require, svc

bp = Blueprint("authorizations", __name__, url_prefix="/authorizations")


def _jws_from_request() -> str:
    """The compact JWS: a raw body (application/jose, text/plain) or {"jws": "..."}."""
    if (request.content_length or 0) > MAX_JWS_BYTES:
        raise PayloadTooLarge(f"an authorization is at most {MAX_JWS_BYTES} bytes")
    if request.is_json:
        jws = json_body().get("jws")
    else:
        raw = request.get_data(cache=False)
        try:
            jws = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise InvalidInput("authorization must be a compact JWS (ASCII)") from None
    if not isinstance(jws, str) or not jws:
        raise InvalidInput("send the signed authorization as a compact JWS body or {\"jws\": ...}")
    return jws


@bp.post("")
@require("operator", "admin", "peer")
def create():
    row = import_authorization(svc(), _jws_from_request(), actor=g.actor, role=g.role)
    return jsonify(authorization_view(row)), 201


@bp.get("")
@require("operator", "admin", "auditor")
def index():
    with svc().db.session() as s:
        q = s.query(Authorization).order_by(Authorization.created_at.desc())
        if status := request.args.get("status"):
            q = q.filter(Authorization.status == status)
        return jsonify({"authorizations": [authorization_view(a) for a in q.limit(500)]})


@bp.get("/<auth_id>")
@require("operator", "admin", "auditor")
def show(auth_id: str):
    with svc().db.session() as s:
        row = s.get(Authorization, auth_id)
        if row is None:
            raise NotFound(f"no authorization {auth_id}")
        audit.record(s, "api.read.authorization", actor=g.actor, role=g.role,
                     authorization_id=row.id, patient_key=audit_key(row))
        return jsonify(authorization_view(row, full=True))


def audit_key(row: Authorization) -> str | None:
    from gateway.engine.policy import patient_key

    return patient_key(row, svc().patient_secret)


@bp.post("/<auth_id>/revoke")
@require("operator", "admin")
def revoke(auth_id: str):
    reason = json_body().get("reason")
    row, stopped = revoke_authorization(svc(), auth_id, reason, actor=g.actor, role=g.role)
    return jsonify({**authorization_view(row), "transfersCancelled": stopped})


@bp.post("/<auth_id>/revocation")
@require("peer", "operator", "admin")
def signed_revocation(auth_id: str):
    """Revoke on the issuer's signed word (a compact JWS, revocation+jwt)."""
    jws = _jws_from_request()
    with svc().db.session() as s:
        row = s.get(Authorization, auth_id)
        if row is None:
            raise NotFound(f"no authorization {auth_id}")
        issuer = row.issuer
    payload = verify_revocation(jws, trust_store(svc()), auth_id, issuer)
    row, stopped = revoke_authorization(svc(), auth_id, payload["reason"], actor=g.actor,
                                        role=g.role)
    return jsonify({**authorization_view(row), "transfersCancelled": stopped})
