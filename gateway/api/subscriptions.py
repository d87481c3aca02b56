"""Sending side: POST /subscriptions/{sid}/notify takes the notifications of a FHIR
Subscription we hold at a source (R4 Backport IG, rest-hook channel). No API token: the
source proves itself with the channel's shared secret; `sid` is our own unguessable id,
so the URL says nothing about the patient."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from gateway.engine import notifications
from gateway.errors import PayloadTooLarge

from .auth import svc

bp = Blueprint("subscriptions", __name__)


@bp.post("/subscriptions/<sid>/notify")
def notify(sid: str):
    if (request.content_length or 0) > notifications.MAX_NOTIFICATION_BYTES:
        raise PayloadTooLarge(f"a notification is at most {notifications.MAX_NOTIFICATION_BYTES} bytes")
    taken = notifications.take(svc(), sid, request.headers.get("Authorization"),
                               request.get_data(cache=False))
    summary = (f"{taken['type']}: {taken['stored']} event(s) stored, {taken['duplicates']} duplicate(s), "
               f"{taken['gaps']} gap(s)")
    response = jsonify({"resourceType": "OperationOutcome",
                        "issue": [{"severity": "information", "code": "informational",
                                   "diagnostics": summary}]})
    response.mimetype = "application/fhir+json"
    return response
