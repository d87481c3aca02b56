"""Each audit event as a FHIR R4 AuditEvent following IHE BALP, validated with R4B models.

- A disclosure (a bundle delivered to a recipient) is BALP PrivacyDisclosure.Source:
  type DCM 110106 Export, subtype ISO 21089 "disclose", action R, with the source and
  destination agents, the patient, the data entities and the purpose.
- A pull from a provider is the recipient's side of a disclosure: DCM 110107 Import.
- An authorization decision is BALP AuthZconsent: DCM 110113, subtype AuthZ-Consent,
  permit (outcome 0) or deny (outcome 8), with the Consent referenced.
- API reads of patient data are BALP "rest" read/search events; anything else is typed
  with its ISO 21089 lifecycle code.
Every AuditEvent carries the log entry (sequence number, canonical bytes, leaf hash and,
when asked, an inclusion proof) in one extension, so an exported Bundle can be verified
offline by `records-gateway audit verify`.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

from fhir.resources.R4B.auditevent import AuditEvent

from .canonical import canonical_bytes, event_fields

LOG_ENTRY_URL = "https://records-gateway.org/fhir/StructureDefinition/audit-log-entry"
PATIENT_KEY_SYSTEM = "urn:records-gateway:patient-key"  # sha256 of "system|value", not PHI
AUTHORIZATION_SYSTEM = "urn:records-gateway:authorization"
TRANSFER_SYSTEM = "urn:records-gateway:transfer"

DCM = "http://dicom.nema.org/resources/ontology/DCM"
LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
AUTHZ_SUBTYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType"
AUDIT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
SECURITY_ROLE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/"

OUTCOME = {"success": "0", "failure": "8", "deny": "8"}

# Event types the gateway writes, grouped by what they are for an auditor (see `classify`).
# A completed disclosure: the bundle reached the recipient (counted in the accounting).
DISCLOSED = ("transfer.delivery.sent", "delivery.sent", "delivery.succeeded", "transfer.delivered")
DELIVERY = ("transfer.delivery.", "delivery.")  # attempts, failures: still Export events
PULL = ("transfer.pull.", "pull.")  # we receive from a provider (its disclosure to us)
RECEIVED = ("receive.bundle.",)  # receive mode: a peer's disclosure to us
DECISIONS = {"verified": True, "rejected": False, "revoked": False, "denied": False}
API_READ = ("api.read", "api.search", "inbox.")
LIFECYCLE_OF = {"mapping": "transform", "bundle": "originate", "receipt": "verify",
                "authorization": "receive", "admin": "amend", "transfer": "transmit"}


@dataclass(frozen=True)
class GatewayIdentity:
    """Who observed the events (our gateway), for AuditEvent.source and agents."""

    name: str = "records-gateway"
    base_url: str | None = None


def classify(type: str) -> str:
    """disclosure | import | authz | read | other, from the event type."""
    if type in DISCLOSED or type.startswith(DELIVERY):
        return "disclosure"
    if type.startswith(PULL + RECEIVED):
        return "import"
    if type.startswith("authorization.") and type.rsplit(".", 1)[-1] in DECISIONS:
        return "authz"
    if type.startswith(API_READ):
        return "read"
    return "other"


def is_disclosure(type: str, outcome: str) -> bool:
    """A completed disclosure, for the accounting of disclosures."""
    return type in DISCLOSED and outcome == "success"


def _permit(f: dict) -> bool:
    return f["outcome"] == "success" and DECISIONS.get(f["type"].rsplit(".", 1)[-1], False)


def _ref(display: str | None = None, system: str | None = None, value: str | None = None) -> dict:
    ref: dict = {}
    if system and value:
        ref["identifier"] = {"system": system, "value": str(value)}
    if display:
        ref["display"] = str(display)
    return ref or {"display": "unknown"}


def _coding(system: str, code: str, display: str | None = None) -> dict:
    c = {"system": system, "code": code}
    if display:
        c["display"] = display
    return c


def _gateway_ref(me: GatewayIdentity) -> dict:
    return _ref(me.name, "urn:ietf:rfc:3986", me.base_url) if me.base_url else _ref(me.name)


def _log_extension(fields: dict, leaf_hash: str | None, proof: dict | None) -> dict:
    subs = [{"url": "seq", "valueString": str(fields["seq"])},
            {"url": "canonical",
             "valueBase64Binary": base64.b64encode(canonical_bytes(fields)).decode()}]
    if leaf_hash:
        subs.append({"url": "leafHash", "valueString": leaf_hash})
    if proof:
        subs.append({"url": "proofTreeSize", "valueString": str(proof["tree_size"])})
        subs += [{"url": "proofPath", "valueString": h} for h in proof["path"]]
    return {"url": LOG_ENTRY_URL, "extension": subs}


def to_fhir(event, *, me: GatewayIdentity = GatewayIdentity(), proof: dict | None = None) -> dict:
    """The BALP AuditEvent (R4 JSON dict, validated) for an AuditEvent row or event dict."""
    f = event_fields(event)
    d = f["detail"] or {}
    kind = classify(f["type"])
    leaf_hash = event.get("leaf_hash") if isinstance(event, dict) else getattr(event, "leaf_hash", None)
    actor_agent = {
        "type": {"coding": [_coding(SECURITY_ROLE, "humanuser", "human user") if f["role"] else
                            _coding(DCM, "110150", "Application")]},
        "who": _ref(f["actor"]), "requestor": kind in ("read", "other") and bool(f["role"]),
    }
    if f["role"]:
        actor_agent["role"] = [{"text": f["role"]}]
    res: dict = {
        "resourceType": "AuditEvent", "id": f"audit-{f['seq']}",
        "extension": [_log_extension(f, leaf_hash, proof)],
        "recorded": f["at"], "outcome": OUTCOME.get(f["outcome"], "8"),
        "outcomeDesc": f"{f['type']}: {f['outcome']}",
        "source": {"observer": _gateway_ref(me),
                   "type": [_coding(SOURCE_TYPE, "4", "Application Server")]},
        "agent": [actor_agent], "entity": [],
    }
    recipient = d.get("recipient")
    source = d.get("source")
    if kind == "disclosure":
        res.update(type=_coding(DCM, "110106", "Export"), action="R",
                   subtype=[_coding(LIFECYCLE, "disclose", "Disclose Record Lifecycle Event")])
        res["meta"] = {"profile": [BALP + "IHE.BasicAudit.PrivacyDisclosure.Source"]}
        res["agent"] += [
            {"type": {"coding": [_coding(DCM, "110153", "Source Role ID")]},
             "who": _gateway_ref(me), "requestor": False},
            {"type": {"coding": [_coding(DCM, "110152", "Destination Role ID")]},
             "who": _ref(recipient or "recipient"), "requestor": False,
             **({"network": {"address": str(d["recipient_endpoint"]), "type": "5"}}
                if d.get("recipient_endpoint") else {})}]
    elif kind == "import":
        res.update(type=_coding(DCM, "110107", "Import"), action="C",
                   subtype=[_coding(LIFECYCLE, "disclose", "Disclose Record Lifecycle Event")])
        res["agent"] += [
            {"type": {"coding": [_coding(DCM, "110153", "Source Role ID")]},
             "who": _ref(source or (f["actor"] if f["type"].startswith(RECEIVED) else "source")),
             "requestor": False},
            {"type": {"coding": [_coding(DCM, "110152", "Destination Role ID")]},
             "who": _gateway_ref(me), "requestor": False}]
    elif kind == "authz":
        permit = _permit(f)
        res.update(type=_coding(DCM, "110113", "Security Alert"), action="E",
                   subtype=[_coding(AUTHZ_SUBTYPE, "AuthZ-Consent",
                                    "Authorization Decision using Roles and Consent")])
        res["meta"] = {"profile": [BALP + "IHE.BasicAudit.AuthZconsent"]}
        res["outcome"] = "0" if permit else "8"
        res["outcomeDesc"] = f"{'permit' if permit else 'deny'}: {f['type']}" + (
            f" ({d['reason']})" if isinstance(d.get("reason"), str) else "")
    elif kind == "read":
        res.update(type=_coding(AUDIT_TYPE, "rest", "RESTful Operation"), action="R",
                   subtype=[_coding(RESTFUL, "search-type" if "search" in f["type"] else "read")])
        res["meta"] = {"profile": [BALP + "IHE.BasicAudit.PatientRead"]}
    else:
        words = f["type"].split(".")
        word = words[1] if words[0] == "transfer" and len(words) > 2 else words[0]
        code = LIFECYCLE_OF.get(word, "access")
        if words[0] == "admin":
            kind_coding = _coding(DCM, "110137", "User Security Attributes Changed") \
                if "token" in words else _coding(DCM, "110100", "Application Activity")
        elif f["patient_key"] or f["transfer_id"]:
            kind_coding = _coding(DCM, "110110", "Patient Record")
        else:
            kind_coding = _coding(DCM, "110100", "Application Activity")
        res.update(type=kind_coding, action="E", subtype=[_coding(LIFECYCLE, code)])
    purpose = d.get("purpose")
    if purpose:
        concept = ({"coding": [_coding(ACT_REASON, purpose)]}
                   if isinstance(purpose, str) and purpose.isupper() and purpose.isalpha()
                   else {"text": str(purpose)})
        res["purposeOfEvent"] = [concept]
    res["entity"] = _entities(f, d, kind)
    if not res["entity"]:
        del res["entity"]
    return AuditEvent.model_validate(res).model_dump(mode="json", exclude_none=True)


def _detail(d: dict, keys: tuple[str, ...]) -> list[dict]:
    return [{"type": k, "valueString": str(d[k])} for k in keys if d.get(k) not in (None, "")]


def _entities(f: dict, d: dict, kind: str) -> list[dict]:
    out = []
    if f["patient_key"]:
        out.append({"what": _ref(None, PATIENT_KEY_SYSTEM, f["patient_key"]),
                    "type": _coding(RESOURCE_TYPES, "Patient"),
                    "role": _coding(OBJECT_ROLE, "1", "Patient")})
    if f["authorization_id"]:
        ent = {"what": _ref("release authorization (FHIR Consent)", AUTHORIZATION_SYSTEM,
                            f["authorization_id"]),
               "type": _coding(RESOURCE_TYPES, "Consent"),
               "role": _coding(OBJECT_ROLE, "13", "Security Resource")}
        if kind == "authz":
            permit = _permit(f)
            ent["detail"] = [{"type": "decision", "valueString": "permit" if permit else "deny"}]
        out.append(ent)
    if f["transfer_id"]:
        out.append({"what": _ref("transfer", TRANSFER_SYSTEM, f["transfer_id"]),
                    "type": _coding(ENTITY_TYPE, "2", "System Object"),
                    "role": _coding(OBJECT_ROLE, "20", "Job"),
                    **({"detail": det} if (det := _detail(d, ("state", "items", "bytes", "source")))
                       else {})})
    bundle = d.get("bundle_sha256") or d.get("sha256")
    if bundle or d.get("bundle_id"):
        ent = {"what": _ref("bundle", "urn:ietf:rfc:3986",
                            f"urn:sha256:{bundle}" if bundle else d.get("bundle_id")),
               "type": _coding(RESOURCE_TYPES, "Bundle"),
               "role": _coding(OBJECT_ROLE, "4", "Domain Resource")}
        det = _detail(d, ("bundle_id", "entries", "size", "data_classes", "receipt_sha256"))
        if det:
            ent["detail"] = det
        out.append(ent)
    if d.get("resource"):
        out.append({"what": _ref(str(d["resource"])), "type": _coding(ENTITY_TYPE, "2", "System Object"),
                    "role": _coding(OBJECT_ROLE, "4", "Domain Resource")})
    return out
