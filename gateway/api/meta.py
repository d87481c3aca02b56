"""Unauthenticated endpoints: health, published keys, the API description."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

from .auth import svc

bp = Blueprint("meta", __name__)


@bp.get("/health")
def health():
    with svc().db.session() as s:
        s.execute(text("SELECT 1"))
    return jsonify({"status": "ok", "organization": svc().settings.organization,
                    "mode": svc().settings.mode})


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
