"""The OpenAPI 3.1 description, built from the registered routes so it cannot drift:
each route's roles come from its `require` decorator, its request body from BODIES."""
from __future__ import annotations

import re

from flask import Flask

DESCRIPTION = "Records interoperability gateway for second opinions."

OUTCOME = {"description": "error as a FHIR OperationOutcome",
           "content": {"application/fhir+json": {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}}

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
    "meta.health": "Liveness and database check",
    "meta.jwks": "The gateway's public signing keys (JWKS)",
    "meta.openapi": "This document",
    "faxes.cover_sheet": "The records-request cover sheet (PDF with a signed QR code) for a fax source",
    "faxes.review_list": "Faxes awaiting review, and quarantined files with their reasons",
    "faxes.review_show": "One fax awaiting review",
    "faxes.review_preview": "PNG of the fax's first page",
    "faxes.review_assign": "Attach a fax to an open transfer",
    "faxes.review_reject": "Set a fax aside for good",
    "web.dashboard": "Operator dashboard (HTML; reads the API with the user's token)",
    "authorizations.create": "Import a signed release authorization (verified before it is stored)",
    "authorizations.index": "List authorizations",
    "authorizations.show": "One authorization with its claims and Consent (audited read)",
    "authorizations.revoke": "Revoke an authorization; transfers in flight under it are cancelled",
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


def document(app: Flask) -> dict:
    paths: dict = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            op = {"operationId": rule.endpoint, "summary": SUMMARIES.get(rule.endpoint, rule.endpoint),
                  "responses": {"200": {"description": "success"}, "default": OUTCOME}}
            roles = getattr(view, "roles", None)
            if roles:
                op["security"] = [{"bearer": []}]
                op["x-roles"] = list(roles)
            params = [{"name": a, "in": "path", "required": True, "schema": {"type": "string"}}
                      for a in rule.arguments]
            if params:
                op["parameters"] = params
            if rule.endpoint in BODIES and method == "POST":
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
