"""HTTP API: one blueprint per resource, FHIR OperationOutcome errors."""
from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from ..errors import GatewayError

log = logging.getLogger(__name__)

HTTP_CODE = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found",
             405: "not-supported", 409: "conflict", 413: "too-costly", 415: "not-supported",
             422: "invalid", 429: "throttled"}


def operation_outcome(status: int, message: str, code: str | None = None):
    body = {"resourceType": "OperationOutcome", "issue": [{
        "severity": "error" if status < 500 else "fatal",
        "code": code or HTTP_CODE.get(status, "exception"),
        "diagnostics": message}]}
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/fhir+json"
    return response


def register(app: Flask, mode: str) -> None:
    from . import (audit, authorizations, dicomweb, faxes, inbox, meta, receipts, receive,
                   transfers)

    app.register_blueprint(meta.bp)
    app.register_blueprint(audit.bp)
    if mode in ("send", "both"):
        from ..web import bp as dashboard

        app.register_blueprint(dashboard)
        app.register_blueprint(authorizations.bp)
        app.register_blueprint(faxes.bp)
        app.register_blueprint(transfers.bp)
        app.register_blueprint(receipts.bp)
    if mode in ("receive", "both"):
        app.register_blueprint(receive.bp)
        app.register_blueprint(dicomweb.bp)
        app.register_blueprint(inbox.bp)

    @app.errorhandler(GatewayError)
    def _gateway_error(exc: GatewayError):
        return operation_outcome(exc.http_status, exc.message, exc.code)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        return operation_outcome(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled %s", type(exc).__name__)
        return operation_outcome(500, "internal error; the gateway log has the details")

    @app.after_request
    def _no_store(response):
        # responses may carry patient data: never cached by browsers or proxies
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response
