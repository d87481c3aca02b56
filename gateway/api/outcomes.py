"""Errors as FHIR OperationOutcome bodies with the right HTTP status."""
from __future__ import annotations

from flask import jsonify

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
