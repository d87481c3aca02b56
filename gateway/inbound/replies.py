"""The return path: the center sends its written second opinion (a DiagnosticReport or a
DocumentReference) back to the gateway that sent the records, signed the same way and
receipted the same way.

The reply is a transaction Bundle: the Patient as the center received it, the opinion,
a Provenance naming the bundle it answers, and a SubmissionSet List whose
`in-reply-to` extension names that bundle. The receiving (original sending) gateway
accepts it without a Consent only because it answers a bundle that gateway itself
sent to this center (see receive.accept). Ids derive from the received bundle and the
opinion's content, so sending the same opinion again is a replay with the original
receipt, never a second copy.
"""
from __future__ import annotations

import hashlib
import json
import uuid

import requests
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.list import List as FhirList
from fhir.resources.R4B.provenance import Provenance
from pydantic import ValidationError

from gateway import audit
from gateway.errors import (
    Conflict,
    DeliveryFailed,
    DeliveryRejected,
    InvalidInput,
    ReceiptInvalid,
)
from gateway.exchange import jsontext
from gateway.exchange.ids import MHD, canonical, entry_hash
from gateway.exchange.structure import SUBMISSION_SET
from gateway.runtime.services import Services
from gateway.storage.models import ReceivedBundle, utcnow
from gateway.trust import receipts

IN_REPLY_TO = "urn:records-gateway:in-reply-to"
MODELS = {"DiagnosticReport": DiagnosticReport, "DocumentReference": DocumentReference}
NS = uuid.UUID("1b0e7a52-1c61-4d0e-9a0b-3f6f5b8f2e11")


def _opinion(resource: dict, patient_url: str) -> dict:
    if not isinstance(resource, dict) or resource.get("resourceType") not in MODELS:
        raise InvalidInput("a reply is a DiagnosticReport or a DocumentReference")
    body = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    body["subject"] = {"reference": patient_url}
    try:
        return json.loads(MODELS[body["resourceType"]].model_validate(body).model_dump_json())
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"invalid {body['resourceType']} at {'.'.join(map(str, first['loc']))}: "
                           f"{first['msg']}") from None


def build_reply(svc: Services, row: ReceivedBundle, original: dict, resource: dict) -> tuple[str, bytes]:
    """(bundle id, canonical bytes) of the reply Bundle."""
    patient = next((e for e in original.get("entry", [])
                    if e["resource"].get("resourceType") == "Patient"), None)
    if patient is None:
        raise InvalidInput("the received bundle has no Patient to reply about")
    opinion = _opinion(resource, patient["fullUrl"])
    seed = f"{row.id}:{hashlib.sha256(canonical(opinion)).hexdigest()}"

    def urn(*parts: str) -> str:
        return "urn:uuid:" + str(uuid.uuid5(NS, ":".join((seed, *parts))))

    bid = urn("bundle")[len("urn:uuid:"):]
    # the opinion's own time, so the same opinion sent again is byte-identical
    opinion_url = urn("opinion")
    now = opinion.get("issued") or opinion.get("date") or row.received_at.isoformat()
    submission = json.loads(FhirList.model_validate({
        "resourceType": "List", "status": "current", "mode": "working", "title": "Second opinion",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": urn("submissionset")}],
        "code": {"coding": [SUBMISSION_SET]},
        "subject": {"reference": patient["fullUrl"]}, "date": now,
        "source": {"display": svc.settings.organization},
        "entry": [{"item": {"reference": opinion_url}}],
    }).model_dump_json())
    submission["extension"] = [
        {"url": IN_REPLY_TO, "valueIdentifier": {"system": "urn:ietf:rfc:3986",
                                                 "value": row.bundle_identifier}},
        {"url": f"{MHD}/StructureDefinition/ihe-intendedRecipient",
         "valueReference": {"identifier": {"system": "urn:records-gateway:organization",
                                           "value": row.sender_org}}}]
    provenance = json.loads(Provenance.model_validate({
        "resourceType": "Provenance", "target": [{"reference": opinion_url}], "recorded": now,
        "agent": [{"who": {"display": svc.settings.organization}}],
        "entity": [{"role": "source", "what": {"identifier": {
            "system": "urn:ietf:rfc:3986", "value": row.bundle_identifier}}}],
    }).model_dump_json())
    entries = [(patient["fullUrl"], patient["resource"]), (opinion_url, opinion),
               (urn("provenance"), provenance), (urn("submissionset"), submission)]
    bundle = {"resourceType": "Bundle", "id": bid, "type": "transaction", "timestamp": now,
              "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{bid}"},
              "entry": [{"fullUrl": u, "resource": r,
                         "request": {"method": "POST", "url": r["resourceType"]}} for u, r in entries]}
    return bid, json.dumps(bundle).encode()


def send_reply(svc: Services, row: ReceivedBundle, resource: dict, actor: str) -> dict:
    """Sign and send the reply to the gateway that sent `row`; return the verified receipt."""
    sender = svc.settings.senders.get(row.sender)
    token = sender.bearer() if sender else None
    if sender is None or not sender.base_url or not token:
        # the staff's request is fine; this gateway lacks the route (409, not a fault of ours)
        raise Conflict(f"no way back to sender {row.sender}: an admin must configure senders."
                       f"{row.sender}.base_url and token_file")
    original = json.loads(svc.blobs.read_bytes(row.blob_key))
    bid, body = build_reply(svc, row, original, resource)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json",
               "Idempotency-Key": bid,
               receipts.SIGNATURE_HEADER: receipts.sign_bundle(svc.keys, body, f"urn:uuid:{bid}")}
    try:
        response = requests.post(f"{sender.base_url}/fhir", data=body, headers=headers,
                                 timeout=(10, svc.settings.http_timeout_s), allow_redirects=False,
                                 **sender.tls())
    except requests.RequestException as exc:
        raise DeliveryFailed(f"sender {row.sender} unreachable ({type(exc).__name__}); "
                             "send the reply again later (it is idempotent)") from None
    if response.status_code in (408, 409, 429) or response.status_code >= 500:
        raise DeliveryFailed(f"sender {row.sender} answered HTTP {response.status_code}; "
                             "send the reply again later")
    if response.status_code >= 300:
        raise DeliveryRejected(f"sender {row.sender} refused the reply: HTTP {response.status_code}")
    try:
        import base64

        receipt_jws = base64.b64decode(response.json()["signature"]["data"]).decode("ascii")
    except (ValueError, KeyError, TypeError):
        raise ReceiptInvalid(f"sender {row.sender} answered without a signed receipt") from None
    jwks = receipts.fetch_jwks(sender.jwks_file, sender.jwks_url or f"{sender.base_url}/.well-known/jwks.json",
                               f"sender {row.sender}", tls=sender.tls())
    data = jsontext.loads(body)  # as the receiver parses it: the same entry hashes
    claims = receipts.check_receipt(
        receipt_jws, jwks, issuer=sender.organization, sender=svc.settings.organization,
        bundle=f"urn:uuid:{bid}", sha256=hashlib.sha256(body).hexdigest(), size=len(body),
        entry_hashes={e["fullUrl"]: entry_hash(e["resource"]) for e in data["entry"]},
        who=f"sender {row.sender}")
    with svc.db.session() as s:
        audit.record(s, "receive.reply.sent", actor=actor, role="recipient", bundle=f"urn:uuid:{bid}",
                     in_reply_to=row.bundle_identifier, receipt_id=claims.get("receipt_id"),
                     sha256=claims["sha256"], at=utcnow().isoformat())
    return {"bundle": f"urn:uuid:{bid}", "inReplyTo": row.bundle_identifier, "receipt": claims}
