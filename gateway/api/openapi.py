"""The OpenAPI 3.1 description, built from the registered routes so it cannot drift:
each route's roles come from its `require` decorator, its request body from BODIES, its
query and header parameters from PARAMETERS, what it answers from ANSWERS (default: 200
with a JSON object), and every error is an OperationOutcome."""
from __future__ import annotations

import re

from flask import Flask

from gateway.web import is_page

from .params import MAX_WHOLE

DESCRIPTION = "Records interoperability gateway for second opinions."

OUTCOME = {"description": "error as a FHIR OperationOutcome",
           "content": {"application/fhir+json": {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}}
REFUSED = {"401": {**OUTCOME, "description": "no token, or an unknown, expired or revoked one"},
           "403": {**OUTCOME, "description": "the token's role may not do this"}}

_JSON = {"application/json": {"schema": {"type": "object"}}}
_FHIR = {"application/fhir+json": {"schema": {"type": "object"}}}
_BYTES = {"schema": {"type": "string", "format": "binary"}}

# What an operation answers on success, where it is not 200 with a JSON object
ANSWERS = {
    "meta.ready": {"200": _JSON, "503": {"application/fhir+json": {"schema": {"type": "object"}}}},
    "meta.metrics": {"200": {"text/plain": _BYTES}},
    "faxes.cover_sheet": {"200": {"application/pdf": _BYTES}},
    "faxes.review_preview": {"200": {"image/png": _BYTES}},
    "authorizations.create": {"201": _JSON},
    "transfers.create": {"202": _JSON},
    "audit.checkpoint_create": {"201": _JSON},
    "audit.checkpoint_list": {"200": _JSON, "304": None},
    "audit.checkpoint_latest": {"200": {"application/json": {"schema": {"type": ["object", "null"]}}}},
    "audit.export_events": {"200": {"application/x-ndjson": _BYTES, **_FHIR}},
    "audit.accounting": {"200": {**_JSON, "application/pdf": _BYTES}},
    "receive.transaction": {"200": _FHIR},
    "receive.binary_put": {"200": _FHIR, "201": _FHIR},
    "receive.binary_head": {"200": None},
    "dicomweb.store_instances": {s: {"application/dicom+json": {"schema": {"type": "object"}}}
                                 for s in ("200", "202", "409")},
    "inbox.bundle": {"200": _FHIR},
    # as received: PDF, TIFF, PNG, JPEG, text, JSON; any other type as octet-stream
    "inbox.document_content": {"200": {"*/*": _BYTES}},
    "inbox.study_instances": {"200": {"multipart/related": _BYTES}},
    "inbox.study_instance": {"200": {"application/dicom": _BYTES}},
}


WHOLE = {"type": "integer", "minimum": 0, "maximum": MAX_WHOLE}


def _q(name: str, type_: str = "string", **schema) -> dict:
    schema = WHOLE | schema if type_ == "integer" else {"type": type_, **schema}
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _h(name: str, required: bool, description: str) -> dict:
    return {"name": name, "in": "header", "required": required, "description": description,
            "schema": {"type": "string"}}


_PATIENT = [_q("patient", description="a patient key (64 hex); an identifier goes in X-Patient",
               pattern="^[0-9a-f]{64}$"),
            _h("X-Patient", False, "the patient's identifier as 'system|value' (kept out of URLs)")]
_AUDIT_FILTERS = [*_PATIENT, _q("transfer"), _q("authorization"), _q("actor"), _q("type"),
                  _q("since", format="date-time"), _q("until", format="date-time")]
PARAMETERS = {
    "receive.transaction": [_h("Idempotency-Key", True, "the same key for every try of one bundle"),
                            _h("X-Bundle-Signature", True, "detached JWS over the body")],
    "transfers.index": [_q("state"), _q("authorization"), _q("limit", "integer")],
    "cases.index": [_q("state"), _q("limit", "integer")],
    "notifications.index": [_q("state"), _q("limit", "integer")],
    "authorizations.index": [_q("status")],
    "faxes.cover_sheet": [_q("source")],
    "faxes.review_list": [_q("source")],
    "faxes.review_show": [_q("source")],
    "faxes.review_preview": [_q("source")],
    "faxes.review_assign": [_q("source")],
    "faxes.review_reject": [_q("source")],
    "audit.events": [*_AUDIT_FILTERS, _q("after", "integer"), _q("limit", "integer")],
    "audit.export_events": [*_AUDIT_FILTERS, _q("format", enum=["ndjson", "fhir-ndjson", "bundle"])],
    "audit.accounting": [*_PATIENT, _q("since", format="date-time"),
                         _q("until", format="date-time"), _q("format", enum=["json", "pdf"])],
    "audit.checkpoint_list": [_q("since_size", "integer"), _q("limit", "integer")],
    "audit.consistency": [_q("first", "integer"), _q("second", "integer")],
    "audit.inclusion": [_q("tree_size", "integer")],
}

BODIES = {
    "authorizations.create": {"application/jose": {"schema": {"type": "string",
                              "description": "compact JWS of a release authorization"}},
                              "application/json": {"schema": {"type": "object", "required": ["jws"],
                              "properties": {"jws": {"type": "string"}}}}},
    "authorizations.revoke": {"application/json": {"schema": {"type": "object", "required": ["reason"],
                              "properties": {"reason": {"type": "string"}}}}},
    "transfers.create": {"application/json": {"schema": {"type": "object",
                         "required": ["authorization", "sources", "recipient"],
                         "properties": {"authorization": {"type": "string"},
                                        "sources": {"type": "array", "items": {"type": "string"}},
                                        "recipient": {"type": "string"}}}}},
    "transfers.retry": {"application/json": {"schema": {"type": "object",
                        "properties": {"skip_failed_items": {"type": "boolean"}}}}},
    "faxes.review_assign": {"application/json": {"schema": {"type": "object", "required": ["transfer"],
                            "properties": {"transfer": {"type": "string"}}}}},
    "faxes.review_reject": {"application/json": {"schema": {"type": "object", "required": ["reason"],
                            "properties": {"reason": {"type": "string"}}}}},
    "transfers.cancel": {"application/json": {"schema": {"type": "object",
                         "properties": {"reason": {"type": "string"}}}}},
    "receive.transaction": {"application/fhir+json": {"schema": {"type": "object",
                            "description": "FHIR R4 transaction Bundle; headers Idempotency-Key "
                                           "and X-Bundle-Signature (detached JWS)"}}},
    "dicomweb.store_instances": {"multipart/related": {"schema": {"type": "string", "format": "binary",
                                 "description": 'STOW-RS: multipart/related; type="application/dicom", '
                                                "one DICOM Part 10 instance a part"}}},
    "receive.binary_put": {"application/octet-stream": {"schema": {"type": "string", "format": "binary",
                           "description": "a document's raw bytes, sent before the bundle that "
                                          "references it as Binary/{id} (HEAD asks whether it is held)"}}},
    "inbox.reply": {"application/json": {"schema": {"type": "object",
                    "description": "a DiagnosticReport or DocumentReference (R4), or {\"resource\": ...}",
                    "properties": {"resourceType": {"enum": ["DiagnosticReport", "DocumentReference"]},
                                   "resource": {"type": "object"}}}}},
    "receipts.opened": {"application/json": {"schema": {"type": "object", "required": ["jws"],
                        "properties": {"jws": {"type": "string"}}}}},
    "subscriptions.notify": {"application/fhir+json": {"schema": {"type": "object",
                             "description": "Subscriptions Backport notification: history Bundle, "
                                            "SubscriptionStatus (Parameters) first; header "
                                            "Authorization: Bearer <the channel's secret>"}}},
    "cases.no_records": {"application/json": {"schema": {"type": "object", "required": ["reason"],
                         "properties": {"reason": {"type": "string"}}}}},
    "cases.close": {"application/json": {"schema": {"type": "object",
                    "description": "a reason, or the authorization's expiration event that happened",
                    "properties": {"reason": {"type": "string"}, "event": {"type": "string"}}}}},
}

SUMMARIES = {
    "meta.health": "Liveness: the process answers",
    "meta.ready": "Readiness: database, broker, blob store and signing keys work now (503 naming each failed check)",
    "meta.metrics": "Prometheus metrics (text exposition format): counts by state and kind, step durations, delivery latency, queue depth",
    "meta.jwks": "The gateway's public signing keys (JWKS)",
    "meta.openapi": "This document",
    "faxes.cover_sheet": "The records-request cover sheet (PDF with a signed QR code) for a fax source",
    "faxes.review_list": "Faxes awaiting review, and quarantined files with their reasons",
    "faxes.review_show": "One fax awaiting review",
    "faxes.review_preview": "PNG of the fax's first page",
    "faxes.review_assign": "Attach a fax to an open transfer",
    "faxes.review_reject": "Set a fax aside for good",
    "authorizations.create": "Import a signed release authorization (verified before it is stored)",
    "authorizations.index": "List authorizations",
    "authorizations.show": "One authorization with its claims and Consent (audited read)",
    "authorizations.revoke": "Revoke an authorization; transfers in flight under it are cancelled",
    "authorizations.signed_revocation": "Revoke on the issuer's signed word (revocation+jwt JWS)",
    "center.providers": "The center's directory of providers a patient's request may name",
    "center.new_form": "A one-time token for a blank request form (its submission uses it up)",
    "center.create": "Take a patient's request: checked, signed by the intake key, sent to every provider",
    "center.index": "List the center's requests",
    "center.show": "One center request: each provider's status and what arrived (audited read)",
    "center.opinion_ready": "Record that the written opinion is ready (the patient's page says so)",
    "center.reissue_link": "Email the patient a new status link; the previous one stops working",
    "center.staff_revoke": "Revoke a request's authorization at every provider (signed revocation)",
    "center.patient_status": "The patient's status (X-Status-Token: the link's token; audited)",
    "center.patient_revoke": "The patient revokes their authorization (X-Status-Token)",
    "transfers.create": "Start a transfer from sources to a recipient under an authorization",
    "transfers.index": "List transfers (filters: state, authorization, limit)",
    "transfers.show": "One transfer with per-source progress and items",
    "transfers.retry": "Resume a failed transfer from the step that failed",
    "transfers.cancel": "Cancel a transfer",
    "receive.transaction": "Receive a transaction Bundle from a peer gateway; answers with a signed receipt",
    "dicomweb.store_instances": "Receive DICOM instances from a peer gateway by STOW-RS (stored encrypted, counted in receipts)",
    "receive.binary_put": "Receive a large document before its bundle; ETag is its sha256",
    "inbox.index": "Bundles received for this center (recipient role, organization-scoped)",
    "audit.events": "Audit events by patient, transfer, authorization, actor, type, time, with inclusion proofs",
    "audit.chain": "A transfer's whole chain of events, each with its inclusion proof",
    "audit.export_events": "Export events as NDJSON, FHIR AuditEvent NDJSON, or a FHIR Bundle",
    "audit.accounting": "Accounting of disclosures for one patient (JSON or PDF)",
    "audit.checkpoint_list": "Signed checkpoints with consistency proofs and the public keys",
    "audit.checkpoint_latest": "The latest signed checkpoint",
    "audit.checkpoint_create": "Sign a checkpoint now",
    "audit.consistency": "Consistency proof between two tree sizes",
    "audit.inclusion": "Inclusion proof of one event",
    "inbox.bundle": "One received bundle (audited read)",
    "inbox.documents": "The documents of a received bundle",
    "inbox.document_content": "One document's content (audited read)",
    "inbox.studies": "The imaging studies of a received bundle",
    "inbox.study_instances": "A study's images as received (multipart/related of application/dicom, as WADO-RS)",
    "inbox.study_instance": "One image as received (application/dicom)",
    "receive.binary_head": "Whether a document sent before its bundle is held; ETag is its sha256",
    "inbox.opened": "Mark a received bundle opened; signs an 'opened' receipt and sends it to the sender",
    "transfers.replay": "Deliver a dead-lettered transfer again",
    "inbox.reply": "Send the center's second opinion (DiagnosticReport or DocumentReference) back to the sender",
    "receipts.opened": "Take an 'opened' receipt signed by a recipient gateway",
    "subscriptions.notify": "Take a FHIR Subscription notification from a source into the trigger inbox",
    "cases.index": "List cases (filter: state review|open|closed, limit)",
    "cases.show": "One case: its sources' status and counts, deadlines, transfers, progress",
    "cases.approve": "Approve a case waiting for review: its review sources start",
    "cases.no_records": "Record that a source holds no records for the patient (with a reason)",
    "cases.close": "Close a case (a reason, or the authorization's expiration event)",
}


def _responses(endpoint: str, secured: bool) -> dict:
    answers = ANSWERS.get(endpoint, {"200": _JSON})
    out = {status: {"description": "not modified (If-None-Match)" if status == "304" else "success"}
           | ({"content": content} if content else {}) for status, content in answers.items()}
    return out | (REFUSED if secured else {}) | {"default": OUTCOME}


def _path_parameter(rule, name: str) -> dict:
    # werkzeug's int converter takes digits only; the default one any text without "/"
    if f"<int:{name}>" in rule.rule:
        schema = WHOLE
    else:
        schema = {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _methods(rule) -> list[str]:
    """A GET route answers HEAD by itself (not listed); a route made for HEAD alone is."""
    methods = rule.methods - {"OPTIONS"}
    if "GET" in methods:
        methods -= {"HEAD"}
    return sorted(methods)


def document(app: Flask) -> dict:
    paths: dict = {}
    seen: set[str] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or is_page(rule.rule):
            continue  # the web pages are not API operations
        view = app.view_functions[rule.endpoint]
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        roles = getattr(view, "roles", None)
        for method in _methods(rule):
            # one view on two paths (e.g. STOW-RS with and without a study): ids stay unique
            op_id = rule.endpoint
            if op_id in seen:
                op_id = "_".join([op_id, *sorted(rule.arguments)]) or f"{op_id}_{method.lower()}"
            seen.add(op_id)
            op = {"operationId": op_id, "summary": SUMMARIES.get(rule.endpoint, rule.endpoint),
                  "responses": _responses(rule.endpoint, bool(roles))}
            if roles:
                op["security"] = [{"bearer": []}]
                op["x-roles"] = list(roles)
            params = [_path_parameter(rule, a) for a in sorted(rule.arguments)]
            params += PARAMETERS.get(rule.endpoint, [])
            if params:
                op["parameters"] = params
            if rule.endpoint in BODIES and method in ("POST", "PUT"):
                op["requestBody"] = {"required": True, "content": BODIES[rule.endpoint]}
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "records-gateway", "version": "0.1.0", "description": DESCRIPTION},
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"OperationOutcome": {"type": "object", "required": ["resourceType", "issue"],
                                             "properties": {"resourceType": {"const": "OperationOutcome"},
                                                            "issue": {"type": "array"}}}},
        },
    }
