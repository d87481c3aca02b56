"""The HTTP API: one blueprint per resource (sending side: authorizations, transfers,
faxes, receipts, subscription notifications; receive mode: receive, dicomweb, inbox;
audit, notifications and meta for both), errors as FHIR OperationOutcome bodies
(outcomes.py), the OpenAPI document built from the routes (openapi.py). A face: it may
import any room below it (engine, outbound, inbound, runtime, notify, trust, audit,
storage, exchange); only `create_app` imports it."""
from __future__ import annotations

import logging

from flask import Flask
from werkzeug.exceptions import HTTPException

from gateway.errors import GatewayError

from .outcomes import operation_outcome
from .params import url_without_nul

log = logging.getLogger(__name__)

def register(app: Flask, mode: str) -> None:
    from . import (
        audit,
        authorizations,
        cases,
        dicomweb,
        faxes,
        inbox,
        meta,
        notifications,
        receipts,
        receive,
        subscriptions,
        transfers,
    )

    app.register_blueprint(meta.bp)
    app.register_blueprint(audit.bp)
    app.register_blueprint(notifications.bp)
    if mode in ("send", "both"):
        app.register_blueprint(authorizations.bp)
        app.register_blueprint(cases.bp)
        app.register_blueprint(faxes.bp)
        app.register_blueprint(transfers.bp)
        app.register_blueprint(receipts.bp)
        app.register_blueprint(subscriptions.bp)
    if mode in ("receive", "both"):
        app.register_blueprint(receive.bp)
        app.register_blueprint(dicomweb.bp)
        app.register_blueprint(inbox.bp)

    from gateway import web

    web.register(app, mode)
    app.before_request(url_without_nul)

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
