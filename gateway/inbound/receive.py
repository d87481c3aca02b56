"""Receive mode: accept a transaction Bundle from a trusted peer gateway, all or
nothing, store it encrypted, answer with the transaction-response and a signed receipt.

Before anything is stored: the sender must be a configured trusted sender, the
detached JWS over the exact bytes must verify with that sender's keys, and the
Bundle's Consent must be active now, name that sender as a discloser and one of our
centers as the recipient, and cover every record the bundle carries: its data class and
its clinical date (scope.py, by the rule the sender filters by).

Idempotent by (sender, Idempotency-Key): the request first claims the key (a row in
state "processing" held for `receive_claim_s`), then reads and processes the body.
A replay of the same bytes gets the original answer; the same key with other bytes
gets 422; a second request while the first is still processing gets 409; a claim
left by a receiver killed mid-request is taken over once it expires. The same bundle
under a new key is refused (a replay), so nothing is stored twice.

Documents too large to travel inline arrive before their bundle as `Binary/{id}`
uploads (uploads.py); the bundle is refused if one it references is missing
or differs, and the receipt names the sha256 and size of each.
"""
from __future__ import annotations

import base64
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from connectors.data_classes import covers
from gateway import audit
from gateway.errors import Conflict, Forbidden, InvalidInput
from gateway.exchange import jsontext
from gateway.exchange.clock import CLOCK_SKEW, started
from gateway.exchange.ids import AUTHORIZATION_SYSTEM, GROUP_SYSTEM, PART_EXT, canonical
from gateway.exchange.manifest import MANIFEST_TYPE, dicom_instances
from gateway.runtime.services import Services
from gateway.storage.models import ReceivedBundle, utcnow
from gateway.trust import receipts
from mappings.consent import (
    DATA_CLASS_SYSTEM,
    DISCLOSER_ROLE,
    ORG_SYSTEM,
    RECIPIENT_ROLE,
    ROLE_SYSTEM,
)
from mappings.fhir.schema_check import schema_check
from mappings.fhir.validate import MemoValidator, ResourceInvalid
from mappings.fhir.validate import check as fhir_check

from . import scope, stow, uploads

KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
RECEIPT_TYP = receipts.RECEIPT_TYP
REJECTION_HEADER = "X-Delivery-Receipt"  # a signed receipt with status "rejected"
MAX_PARTS = 2**31 - 1  # a bundle's part and parts are Integer columns
# levels of JSON in one resource: FHIR needs a few dozen at most; the validators recurse
# (several frames a level) and the entry hash's writer stops at 255
MAX_RESOURCE_DEPTH = 128


class UnprocessableBundle(InvalidInput):
    http_status = 422


class ConsentNotCovering(Forbidden):
    """The Consent in the bundle does not cover this delivery."""


def check_key(key: str) -> None:
    if not key or len(key) > 128 or not set(key) <= KEY_CHARS:
        raise InvalidInput("Idempotency-Key header is missing or malformed")


@dataclass
class Validated:
    """A bundle that passed `_validate`: its JSON (numbers as their text), its
    identifier's value, the sha256 of each entry's canonical JSON (by fullUrl), the
    entries that may reference an upload (by index), and how many entries each check
    decided."""
    data: dict
    identifier: str
    hashes: dict[str, str]
    may_reference_uploads: set[int] = field(default_factory=set)
    by_schema: int = 0  # accepted by the schema check (the models not asked)
    by_models: int = 0  # decided by the models (R4B, or R4's own definitions)


def _validate(body: bytes) -> Validated:
    """The Bundle parsed with every number's text kept (jsontext: the entry hashes are
    taken over it), its envelope checked with the R4B Bundle model and each entry's
    resource with the definitions its type has in R4 (mappings/fhir/validate.py: the
    R4B models, or R4's own for the types R4B lacks), as the pulling side does: first
    the schema check (mappings/fhir/schema_check.py), which only accepts what the models
    accept too; what it does not accept, the models decide and word the error. Each
    entry's canonical JSON is written once: the schema check reads it, its hash is taken."""
    try:
        data = jsontext.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        raise UnprocessableBundle("body is not a FHIR Bundle")
    if data.get("type") != "transaction":
        raise UnprocessableBundle("Bundle.type must be 'transaction'")
    entries = data.get("entry")
    if entries is not None and not isinstance(entries, list):
        raise UnprocessableBundle("Bundle.entry must be a list")
    entries = entries or []
    envelope = {**data, "entry": [{k: v for k, v in e.items() if k != "resource"}
                                  if isinstance(e, dict) else e for e in entries]}
    schema = schema_check()
    try:
        envelope_text = canonical(envelope)
    except jsontext.JSONError:
        envelope_text = None  # nested beyond the writer: the model decides
    if envelope_text is None or not _schema_accepts(schema, envelope_text):
        try:
            Bundle.model_validate(envelope)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise UnprocessableBundle(f"invalid Bundle at {where}: {first['msg']} "
                                      f"({exc.error_count()} problem(s))") from None
    # valid for the Bundle model: what it would read as identifier.value
    identifier = (data.get("identifier") or {}).get("value")
    out = Validated(data, identifier, {})
    digests: list[str | None] = []
    validator = MemoValidator()  # a bundle repeats its codes and references: check each once
    for n, entry in enumerate(entries):
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            digests.append(None)
            continue
        text = _canonical_within_depth(n, resource)
        digests.append(hashlib.sha256(text).hexdigest())
        if _UPLOAD_URL in text:
            out.may_reference_uploads.add(n)
        if _schema_accepts(schema, text):
            out.by_schema += 1
            continue
        out.by_models += 1
        try:
            fhir_check(resource, validator)
        except KeyError:
            raise UnprocessableBundle(f"invalid Bundle at entry.{n}.resource: "
                                      f"not a FHIR R4 resource type") from None
        except ResourceInvalid as exc:
            raise UnprocessableBundle(f"invalid Bundle at entry.{n}.resource: {exc}") from None
    if not identifier:
        raise UnprocessableBundle("Bundle.identifier is required")
    if not _storable(identifier):
        raise UnprocessableBundle("Bundle.identifier.value must be 1-255 characters, no NUL")
    for n, entry in enumerate(entries):
        if not isinstance(entry.get("resource"), dict) or not entry.get("fullUrl"):
            raise UnprocessableBundle(f"entry {n} needs a fullUrl and a resource")
    out.hashes = {e["fullUrl"]: d for e, d in zip(entries, digests)}
    return out


# an attachment's url naming an upload (exchange/attachments.py `referenced`), as compact
# JSON writes it: a resource whose JSON lacks it references no upload
_UPLOAD_URL = b'"url":"Binary/'


def _canonical_within_depth(n: int, resource: dict) -> bytes:
    """The resource's canonical JSON (what its entry hash is taken over); UnprocessableBundle
    if it nests deeper than MAX_RESOURCE_DEPTH. Its brackets bound its depth, so the walk
    that measures depth runs only for a resource with more brackets than the bound (or
    one too deep for the JSON writer, which stops at 255 levels)."""
    try:
        text = canonical(resource)
    except jsontext.JSONError:
        text = None
    if text is None or text.count(b"{") + text.count(b"[") > MAX_RESOURCE_DEPTH:
        levels = jsontext.depth(resource)
        if levels > MAX_RESOURCE_DEPTH:
            raise UnprocessableBundle(f"invalid Bundle at entry.{n}.resource: nested {levels} levels "
                                      f"deep; at most {MAX_RESOURCE_DEPTH} are accepted")
        if text is None:
            text = canonical(resource)  # raises again: not writable for another reason
    return text


def _schema_accepts(schema, text: bytes) -> bool:
    """Whether the schema check accepts the resource; False leaves it to the models
    (also for JSON the check cannot read as it reads it, e.g. a number beyond a double)."""
    try:
        return schema.accepts(text)
    except ValueError:
        return False


def _resources(data: dict, rtype: str) -> list[dict]:
    return [e["resource"] for e in data.get("entry") or [] if e["resource"].get("resourceType") == rtype]


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def check_consent(data: dict, sender_org: str, centers: set[str], now: datetime) -> str:
    """Return the recipient organization the Consent names, or raise ConsentNotCovering."""
    consents = _resources(data, "Consent")
    if len(consents) != 1:
        raise ConsentNotCovering(f"the bundle must carry exactly one Consent (found {len(consents)})")
    consent = consents[0]
    if consent.get("status") != "active":
        raise ConsentNotCovering("the Consent is not active")
    prov = consent.get("provision") or {}
    if prov.get("type") != "permit":
        raise ConsentNotCovering("the Consent does not permit disclosure")
    start, end = _when((prov.get("period") or {}).get("start")), _when((prov.get("period") or {}).get("end"))
    if start is None or end is None:
        raise ConsentNotCovering("the Consent's period has no start or no end")
    if not started(start, now):  # the sender's or the issuer's clock may be a little ahead
        raise ConsentNotCovering(
            f"the Consent's period starts at {start.isoformat()}, after this gateway's clock "
            f"({now.replace(microsecond=0).isoformat()}) plus its tolerance of "
            f"{CLOCK_SKEW.total_seconds():.0f} s: check both gateways' clocks")
    if now > end:
        raise ConsentNotCovering(f"the Consent's period ended at {end.isoformat()}")
    actors: dict[str, set[str]] = {DISCLOSER_ROLE: set(), RECIPIENT_ROLE: set()}
    for actor in prov.get("actor") or []:
        codes = {c.get("code") for c in (actor.get("role") or {}).get("coding") or []
                 if c.get("system") == ROLE_SYSTEM}
        ident = (actor.get("reference") or {}).get("identifier") or {}
        if ident.get("system") == ORG_SYSTEM:
            for code in codes & actors.keys():
                actors[code].add(ident.get("value"))
    if sender_org not in actors[DISCLOSER_ROLE]:
        raise ConsentNotCovering("the Consent does not name the sender as a discloser")
    recipients = actors[RECIPIENT_ROLE] & centers
    if len(actors[RECIPIENT_ROLE]) != 1 or not recipients:
        raise ConsentNotCovering("the Consent does not name this recipient")
    recipient = recipients.pop()
    for lst in _resources(data, "List"):
        for ext in lst.get("extension") or []:
            if ext.get("url", "").endswith("ihe-intendedRecipient"):
                value = ((ext.get("valueReference") or {}).get("identifier") or {}).get("value")
                if value is not None and value != recipient:
                    raise ConsentNotCovering("the SubmissionSet is meant for another recipient")
    allowed = {c.get("code") for c in prov.get("class") or [] if c.get("system") == DATA_CLASS_SYSTEM}
    for comp in _resources(data, "Composition"):
        for section in comp.get("section") or []:
            for coding in (section.get("code") or {}).get("coding") or []:
                if coding.get("system") == DATA_CLASS_SYSTEM \
                        and not covers(allowed, None, None, coding.get("code"), None):
                    raise ConsentNotCovering(f"the Consent does not cover data class {coding.get('code')!r}")
    patients = {e["fullUrl"] for e in data.get("entry") or [] if e["resource"].get("resourceType") == "Patient"}
    if (consent.get("patient") or {}).get("reference") not in patients:
        raise ConsentNotCovering("the Consent is about another patient than the bundle's")
    check_subjects(data, consent["patient"]["reference"])
    scope.check(data, consent)  # every record, not only what the Composition lists
    return recipient


SUBJECT_ELEMENTS = ("subject", "patient", "beneficiary")  # whom a resource is about


def check_subjects(data: dict, patient_url: str) -> None:
    """One patient a bundle: its only Patient entry is the Consent's, and every resource
    that names whom it is about (subject, patient, beneficiary) names that one."""
    patients = [e["fullUrl"] for e in data.get("entry") or []
                if e["resource"].get("resourceType") == "Patient"]
    if patients != [patient_url]:
        raise ConsentNotCovering(f"the bundle must be about one patient, the Consent's "
                                 f"(it holds {len(patients)} Patient entries)")
    for n, entry in enumerate(data.get("entry") or []):
        for element in SUBJECT_ELEMENTS:
            ref = entry["resource"].get(element)
            target = ref.get("reference") if isinstance(ref, dict) else None
            if not isinstance(target, str) or target == patient_url:
                continue
            if target.startswith("Patient/") or "/Patient/" in target:
                raise ConsentNotCovering(f"entry {n} ({entry['resource'].get('resourceType')}) is "
                                         f"about another patient than the Consent's ({element})")


def _in_reply_to(data: dict) -> str | None:
    from .replies import IN_REPLY_TO

    for lst in _resources(data, "List"):
        for ext in lst.get("extension") or []:
            if ext.get("url") == IN_REPLY_TO:
                return (ext.get("valueIdentifier") or {}).get("value") or ""
    return None


REPLY_TYPES = {"Patient": 1, "Provenance": 1, "List": 1}  # and one opinion
OPINION_TYPES = ("DiagnosticReport", "DocumentReference")


def check_reply_content(data: dict) -> None:
    """A reply carries the second opinion (one DiagnosticReport or DocumentReference), its
    Provenance and its List, about the one patient of the bundle it answers: nothing else."""
    counts: dict[str, int] = {}
    for entry in data.get("entry") or []:
        rtype = entry["resource"].get("resourceType")
        counts[rtype] = counts.get(rtype, 0) + 1
    opinions = sum(counts.pop(t, 0) for t in OPINION_TYPES)
    if opinions != 1 or counts != REPLY_TYPES:
        extra = sorted(set(counts) - set(REPLY_TYPES))
        raise ConsentNotCovering("a reply carries one opinion, its Provenance and its List only"
                                 + (f" (it also holds {', '.join(extra)})" if extra else ""))
    patient = next(e["fullUrl"] for e in data["entry"] if e["resource"]["resourceType"] == "Patient")
    check_subjects(data, patient)


def check_reply(svc: Services, in_reply_to: str, sender_org: str) -> str:
    """A reply needs no Consent of its own only if it answers a bundle we sent to that
    same organization; it is then for us."""
    from gateway.storage.models import Transfer, TransferBundle

    with svc.db.session() as s:
        part = s.scalars(select(TransferBundle).filter_by(
            bundle_id=in_reply_to.removeprefix("urn:uuid:"))).first()
        transfer = s.get(Transfer, part.transfer_id) if part is not None else None
        peer = svc.settings.peers.get(transfer.recipient) if transfer is not None else None
    if peer is None or peer.organization != sender_org or part.state != "receipted":
        raise ConsentNotCovering("the reply does not answer a bundle this gateway delivered "
                                 "to its sender")
    return svc.settings.organization


def _consent_id(data: dict) -> str | None:
    ids = [i.get("value") for c in _resources(data, "Consent") for i in c.get("identifier") or []
           if isinstance(i, dict) and i.get("system") == AUTHORIZATION_SYSTEM]
    return ids[0] if len(ids) == 1 and _storable(ids[0]) and len(ids[0]) <= 64 else None


def _storable(text) -> bool:
    """Fits a String(255) column on every database (PostgreSQL takes no NUL)."""
    return isinstance(text, str) and 0 < len(text) <= 255 and "\x00" not in text


def _group(data: dict) -> tuple[str | None, int, int]:
    for lst in _resources(data, "List"):
        group = next((i.get("value") for i in lst.get("identifier") or [] if i.get("system") == GROUP_SYSTEM), None)
        part = next((e.get("valueString") for e in lst.get("extension") or [] if e.get("url") == PART_EXT), "1/1")
        try:
            n, total = (int(x) for x in part.split("/"))
        except ValueError:
            n, total = 1, 1
        if group is not None and not _storable(group):
            raise UnprocessableBundle("the submission group must be 1-255 characters, no NUL")
        if not 1 <= n <= total <= MAX_PARTS:
            raise UnprocessableBundle(f"the part must be n/total with 1 <= n <= total <= {MAX_PARTS}")
        return group, n, total
    return None, 1, 1


def _manifest_instances(data: dict) -> dict[str, dict[str, str]]:
    """Study -> {SOP UID: sha256} of the DICOM instances the bundle's manifest lists."""
    docs = [d for d in _resources(data, "DocumentReference")
            if any(c.get("code") == MANIFEST_TYPE["code"] for c in (d.get("type") or {}).get("coding") or [])]
    if not docs:
        return {}
    url = docs[0]["content"][0]["attachment"].get("url")
    for entry in data.get("entry") or []:
        if entry["fullUrl"] == url and entry["resource"].get("resourceType") == "Binary":
            try:
                return dicom_instances(json.loads(base64.b64decode(entry["resource"]["data"])))
            except (ValueError, KeyError, TypeError):
                return {}
    return {}


def response_bundle(row: ReceivedBundle) -> dict:
    """The transaction-response, with the receipt as the Bundle's signature."""
    return row.response


_URL_NAMESPACE = hashlib.sha1(uuid.NAMESPACE_URL.bytes)


def _uuid5_url(name: str) -> str:
    """str(uuid.uuid5(uuid.NAMESPACE_URL, name)) without building a UUID object (one an
    entry: ~10 us each of the uuid module's work, the namespace hashed once here)."""
    digest = _URL_NAMESPACE.copy()
    digest.update(name.encode("utf-8"))
    raw = bytearray(digest.digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = raw.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _build_response(row: ReceivedBundle, data: dict, org: str) -> dict:
    entries = []
    for entry in data.get("entry") or []:
        rtype = entry["resource"]["resourceType"]
        rid = _uuid5_url(f"{row.id}:{entry['fullUrl']}")
        entries.append({"response": {"status": "201 Created", "location": f"{rtype}/{rid}/_history/1"}})
    return {
        "resourceType": "Bundle", "type": "transaction-response", "id": row.id, "entry": entries,
        "signature": {
            "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.5",
                      "display": "Verification Signature"}],
            "when": row.received_at.isoformat(),
            "who": {"identifier": {"system": ORG_SYSTEM, "value": org}},
            "sigFormat": "application/jose",
            "data": base64.b64encode(row.receipt_jws.encode()).decode(),
        },
    }


def claim(svc: Services, sender: str, key: str) -> ReceivedBundle | None:
    """Claim (sender, key) for this request; return the accepted row if it is a replay.
    Raises Conflict while another request holds a live claim."""
    now = utcnow()
    until = now + timedelta(seconds=svc.settings.receive_claim_s)
    with svc.db.session() as s:
        row = s.scalars(select(ReceivedBundle).filter_by(sender=sender, idempotency_key=key)).first()
        if row is not None and row.state == "accepted":
            return row
        if row is None:
            try:
                with s.begin_nested():
                    s.add(ReceivedBundle(id=uuid.uuid4().hex, sender=sender, idempotency_key=key,
                                         bundle_identifier="", sha256="", size=0, entries=0,
                                         blob_key="", receipt_jws="", received_at=now,
                                         state="processing", claimed_until=until))
                return None
            except IntegrityError:
                pass
        taken = s.execute(update(ReceivedBundle).where(
            ReceivedBundle.sender == sender, ReceivedBundle.idempotency_key == key,
            ReceivedBundle.state == "processing",
            or_(ReceivedBundle.claimed_until.is_(None), ReceivedBundle.claimed_until < now))
            .values(claimed_until=until).execution_options(synchronize_session=False))
        if taken.rowcount == 1:
            return None
    raise Conflict("this delivery is still being processed; retry shortly")


def release(svc: Services, sender: str, key: str) -> None:
    """Drop our claim after a refusal: nothing was stored."""
    with svc.db.session() as s:
        row = s.scalars(select(ReceivedBundle).filter_by(sender=sender, idempotency_key=key,
                                                         state="processing")).first()
        if row is not None:
            s.delete(row)


def replay(row: ReceivedBundle, body: bytes) -> ReceivedBundle:
    if row.sha256 != hashlib.sha256(body).hexdigest():
        raise UnprocessableBundle("Idempotency-Key was already used for a different bundle")
    return row


def accept(svc: Services, *, sender: str, key: str, body: bytes, signature: str) -> ReceivedBundle:
    """Verify and store a claimed delivery, all or nothing; return the accepted row."""
    trusted = svc.settings.senders.get(sender)
    if trusted is None:
        raise Forbidden(f"sender {sender!r} is not a trusted sender of this gateway")
    digest = hashlib.sha256(body).hexdigest()
    # the signature first: nothing a sender did not sign is parsed or validated
    jwks = receipts.fetch_jwks(trusted.jwks_file, trusted.jwks_url or (
        f"{trusted.base_url}/.well-known/jwks.json" if trusted.base_url else None), f"sender {sender}",
        tls=trusted.tls())
    receipts.verify_bundle(signature, body, jwks)
    checked = _validate(body)
    data, identifier, hashes = checked.data, checked.identifier, checked.hashes
    now = utcnow()
    in_reply_to = _in_reply_to(data)
    if in_reply_to is not None:
        check_reply_content(data)
        recipient = check_reply(svc, in_reply_to, trusted.organization)
    else:
        recipient = check_consent(data, trusted.organization, {svc.settings.organization}, now)
    group, part, parts = _group(data)
    # documents sent before the bundle
    attachments = uploads.check(svc, sender, data, only=checked.may_reference_uploads)
    with svc.db.session() as s:
        dup = s.scalars(select(ReceivedBundle).filter_by(
            sender=sender, bundle_identifier=identifier, state="accepted")).first()
        if dup is not None:
            raise UnprocessableBundle("this bundle was already received under another "
                                      "Idempotency-Key (a replay); nothing stored")
    # what we hold of the studies it describes: counted from what arrived by STOW-RS
    listed = _manifest_instances(data)
    holding = stow.held(svc, sender, listed)
    blob = svc.blobs.put_bytes(body)
    try:
        with svc.db.session() as s:
            row = s.scalars(select(ReceivedBundle).filter_by(sender=sender, idempotency_key=key)
                            .with_for_update()).one()
            if row.state != "processing":
                raise Conflict("this delivery was completed by another request; retry for its answer")
            uploads.bind(s, sender, attachments, row.id)
            stow.bind(s, sender, listed, row.id)
            row.bundle_identifier, row.sha256, row.size = identifier, digest, len(body)
            row.entries, row.blob_key, row.received_at = len(hashes), blob.key, now
            row.recipient_org, row.sender_org = recipient, trusted.organization
            row.submission_group, row.part, row.parts = group, part, parts
            row.in_reply_to = in_reply_to.removeprefix("urn:uuid:") if in_reply_to else None
            row.consent_id = _consent_id(data)  # the authorization's id: a center's request finds it
            row.receipt_jws = svc.keys.sign({
                "iss": svc.settings.organization, "receipt_id": row.id,
                "bundle": row.bundle_identifier, "sha256": digest, "size": row.size,
                "entries": row.entries, "entryHashes": hashes,
                # per study: instances we hold (as listed, same sha256), their digest
                "dicomInstances": {u: h["instances"] for u, h in holding.items()},
                "dicomSha256": {u: h["sha256"] for u, h in holding.items()},
                "dicomListed": {u: len(v) for u, v in listed.items()},
                "attachments": attachments,
                "sender": trusted.organization, "recipient": recipient,
                "received_at": now.isoformat(), "status": "accepted",
                "outcome": {"resourceType": "OperationOutcome", "issue": [{
                    "severity": "information", "code": "informational",
                    "diagnostics": f"all {row.entries} entries stored"}]}}, RECEIPT_TYP)
            row.response = _build_response(row, data, svc.settings.organization)
            row.state, row.claimed_until = "accepted", None
            audit.record(s, "receive.bundle.accepted", actor=sender, role="peer",
                         bundle=row.bundle_identifier, sha256=digest, size=row.size,
                         entries=row.entries, receipt_id=row.id, part=part, parts=parts)
    except BaseException:
        svc.blobs.delete(blob.key)
        raise
    return row


def rejection_receipt(svc: Services, *, sender: str, key: str, status: int, message: str) -> str:
    """A signed receipt saying the delivery under `key` was rejected, and why."""
    trusted = svc.settings.senders.get(sender)
    return svc.keys.sign({
        "iss": svc.settings.organization, "sender": trusted.organization if trusted else sender,
        "idempotencyKey": key, "status": "rejected", "received_at": utcnow().isoformat(),
        "outcome": {"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "processing", "diagnostics": message[:500],
            "details": {"text": f"HTTP {status}"}}]}}, RECEIPT_TYP)


def record_refusal(svc: Services, sender: str, key: str, reason: str) -> None:
    with svc.db.session() as s:
        audit.record(s, "receive.bundle.refused", actor=sender, role="peer", outcome="deny",
                     idempotency_key=key, reason=reason[:300])
