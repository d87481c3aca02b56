"""Unauthenticated endpoints: liveness, readiness, metrics, published keys, the API
description."""
from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, jsonify, request

from gateway.runtime.health import readiness

from .auth import svc

bp = Blueprint("meta", __name__)


@bp.get("/health")
def health():
    """Liveness: the process answers. Cheap on purpose (an orchestrator polls it often and
    restarts the process when it fails); what it depends on is /ready's business."""
    return jsonify({"status": "ok", "organization": svc().settings.organization,
                    "mode": svc().settings.mode})


@bp.get("/ready")
def ready():
    """200 when the database, the broker, the blob store and the signing keys all work
    now; else 503 with one OperationOutcome issue per failed check."""
    checks = readiness(svc())
    failed = [c for c in checks if not c.ok]
    if not failed:
        return jsonify({"status": "ready", "checks": {c.name: c.detail for c in checks}})
    response = jsonify({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "transient", "diagnostics": f"{c.name}: {c.detail}",
         "expression": [c.name]} for c in failed]})
    response.status_code = 503
    response.mimetype = "application/fhir+json"
    return response


@bp.get("/metrics")
def metrics():
    """Prometheus text exposition of the deployment's figures (runtime/metrics.py): no
    ids, no records. Public unless `metrics_token` is set; 404 when `metrics_enabled`
    is false."""
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

    from gateway.errors import NotFound, Unauthenticated

    settings = svc().settings
    if not settings.metrics_enabled:
        raise NotFound("metrics are disabled on this gateway (metrics_enabled = false)")
    if settings.metrics_token is not None:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), settings.metrics_token.get_secret_value().encode()):
            raise Unauthenticated("GET /metrics needs the bearer token set as metrics_token")
    registry = current_app.extensions.get("gateway.metrics")
    if registry is None:
        registry = current_app.extensions["gateway.metrics"] = _registry()
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_PLAIN_0_0_4)  # what every scraper reads


def _registry():
    """One collector per app: it keeps how far it has read the audit log."""
    from gateway.engine.cases import STATES as CASE_STATES
    from gateway.engine.transfers import STATES as TRANSFER_STATES
    from gateway.runtime.metrics import registry

    return registry(svc(), TRANSFER_STATES, CASE_STATES)


@bp.get("/.well-known/jwks.json")
def jwks():
    from gateway.trust.keys import ClientKeys

    keys = svc().keys.jwks()["keys"] + ClientKeys(svc().settings.keys_dir).public_jwks()["keys"]
    response = jsonify({"keys": keys})
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.get("/openapi.json")
def openapi():
    from .openapi import document

    return jsonify(document(current_app))
