"""Assemble a transfer into FHIR transaction Bundles, streamed into the blob store.

Shape of IHE MHD "Provide Document Bundle" (ITI-65): per bundle a SubmissionSet List,
the Patient, the Consent of the authorization, DocumentReferences with their Binaries,
other clinical resources (ImagingStudy for DICOM studies) and a Provenance per source;
the first bundle also carries a patient-summary Composition (sections per data class),
the same summary as a PDF DocumentReference, and the completeness manifest.

- Resources reached from two places (the same bytes, the same business identifier, or
  the same document in other bytes, e.g. a report and its fax copy: see
  same_document.py) go once; the Provenance of every source that had them lists
  them.
- Entries are ordered by clinical date.
- A FHIR source's Binary travels in the same bundle as the record that points at it: the
  receiver checks it against the Consent by that record (gateway/inbound/scope.py).
- A transfer larger than `bundle_max_bytes` is split into several bundles, each its own
  transaction and Idempotency-Key, grouped by one submission-group identifier.
- Binaries are base64-encoded from the encrypted record blobs chunk by chunk. A
  document over `attachment_inline_max_bytes` does not travel inline: it is uploaded
  before its bundle and referenced as `Binary/{id}` (see attachments.py). The
  per-entry sha256 (over the canonical JSON of each resource, see `entry_hash`) is
  computed while writing, and the receiver's receipt must name the same hashes.
- Resources of a FHIR source travel as the source's own JSON (normalized ids and
  references only): stored and read back with `jsontext`, so every value keeps its text
  (a decimal's `1.00`, a date-time's `.715Z`) into the bundle and its entry hashes.
- Every id is derived from the transfer, so assembling twice gives the same bytes.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.list import List as FhirList
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.provenance import Provenance
from sqlalchemy import select

from gateway.exchange import jsontext
from gateway.exchange.attachments import referenced
from gateway.exchange.ids import (
    AUTHORIZATION_SYSTEM,
    GROUP_SYSTEM,
    MHD,
    PART_EXT,
    binary_id,
    bundle_id,
    canonical,
    entry_hash,
    patient_urn,
    urn,
)
from gateway.exchange.structure import SUBMISSION_SET
from gateway.runtime.services import Services
from gateway.storage.blobstore import BlobInfo
from gateway.storage.models import Item, Transfer

from . import manifest as manifest_mod
from . import same_document
from . import summary as summary_mod
from . import uploads as uploads_mod
from .attachments import Upload, point_at
from .bodies import base64_chunks
from .units import StreamedBinary, Unit


@dataclass(frozen=True)
class AssembledPart:
    part: int
    parts: int
    bundle_id: str
    blob: BlobInfo
    entries: int
    entry_hashes: dict[str, str]
    uploads: tuple[Upload, ...] = ()  # documents this bundle references as Binary/{id}


FHIR_NATIVE = frozenset({"fhir-json", "fhir-attachment"})  # record kinds of FHIR sources


def _dump(model) -> dict:
    return json.loads(model.model_dump_json())


def patient_resource(claims: dict) -> dict:
    p = claims["patient"]
    return _dump(Patient.model_validate({
        "resourceType": "Patient",
        "identifier": [{"system": i["system"], "value": i["value"]} for i in p["identifiers"]],
        "name": [{"family": p["name"]["family"], "given": list(p["name"].get("given", []))}],
        "birthDate": p["birthDate"],
    }))


def consent_resource(consent: dict, patient: str) -> dict:
    body = dict(consent)
    body["patient"] = {"reference": patient}
    if body.get("id"):
        body["identifier"] = [{"system": AUTHORIZATION_SYSTEM, "value": body["id"]}]
    body.pop("id", None)
    return _dump(Consent.model_validate(body))


class _Shape:
    """POST entries for a peer gateway (MHD); PUT with stable ids for a plain FHIR
    server, so a delivery repeated there overwrites instead of duplicating."""

    def __init__(self, put: bool):
        self.put = put

    def entry(self, full_url: str, resource: dict) -> dict:
        rtype = resource["resourceType"]
        if self.put:
            rid = full_url.rsplit(":", 1)[-1]
            resource = {**resource, "id": rid}
            return {"fullUrl": full_url, "resource": resource,
                    "request": {"method": "PUT", "url": f"{rtype}/{rid}"}}
        resource.pop("id", None)
        return {"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": rtype}}


def _dedup_key(resource: dict, item: Item, carries_bytes: bool) -> str:
    if carries_bytes:
        return f"bytes:{item.sha256}"
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("value"):
            return f"{resource['resourceType']}:id:{ident.get('system', '')}|{ident['value']}"
    body = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    return f"{resource['resourceType']}:content:{entry_hash(body)}"


def _collect(svc: Services, t: Transfer, shape: _Shape
             ) -> tuple[list[Unit], dict, list[Item], dict[str, Upload]]:
    """Mapped resources as units (deduplicated), every place each came from, and the
    documents too large to go inline (by their `Binary/{id}` reference)."""
    limit = svc.settings.attachment_inline_max_bytes
    uploads: dict[str, Upload] = {}
    relocated: dict[str, Upload] = {}  # fullUrl of a FHIR source's Binary -> its upload
    with svc.db.session() as s:
        items = s.scalars(select(Item).filter_by(transfer_id=t.id)).all()
        earlier = _delivered_versions(s, t)
    source_order = {src.name: i for i, src in enumerate(t.sources)}
    items = sorted(items, key=lambda i: (source_order.get(i.source, 99), i.origin, i.source))
    units: dict[str, Unit] = {}
    places: dict[str, list[tuple[str, str]]] = {}  # fullUrl -> [(source, origin)]
    aliases: dict[str, str] = {}  # reference -> the entry that stands for it
    by_identifier: dict[str, str] = {}  # "Type|system|value" -> fullUrl of a FHIR resource
    copies = _document_copies(items)  # item id -> id of the item holding the original
    document_url: dict[int, str] = {}  # item id -> fullUrl of the entry carrying its bytes
    for item in items:
        if item.state != "mapped" or item.resources_blob is None or item.id in copies:
            continue  # DICOM instances have no resources (they go beside the bundle)
        for mapped in jsontext.loads(svc.blobs.read_bytes(item.resources_blob)):
            resource = mapped["resource"]
            if item.kind in FHIR_NATIVE and resource["resourceType"] == "Patient":
                # the transfer's own Patient entry (identity as the authorization states
                # it) stands for the server's copy; references to that copy follow it
                aliases[f"urn:uuid:{resource['id']}"] = patient_urn(t.id)
                continue
            if item.kind in FHIR_NATIVE and resource.get("id"):
                # resources from a FHIR source already reference each other as
                # urn:uuid:<id> (mappings/fhir_r4.py): keep those ids as fullUrls
                key = f"fhir:{resource['id']}"
                full_url = f"urn:uuid:{resource['id']}"
                # the same lab from two servers has two ids but one business identifier:
                # the first stands for both, and references to the other follow it
                first = _first_with_identifier(by_identifier, resource, full_url)
                if first != full_url:
                    aliases[full_url] = first
                    full_url = first
            else:
                key = _dedup_key(resource, item, mapped["carries_record_bytes"])
                full_url = urn(t.id, "resource", key)
                if resource["resourceType"] == "DocumentReference":
                    _mark_replacement(svc, resource, earlier.get((item.source, item.origin)), item)
            if mapped["carries_record_bytes"]:
                document_url.setdefault(item.id, full_url)
            places.setdefault(full_url, [])
            if (item.source, item.origin) not in places[full_url]:
                places[full_url].append((item.source, item.origin))
            if full_url in units:
                continue
            unit = Unit(date=mapped["clinical_date"] or "", full_url=full_url,
                         data_class=mapped.get("data_class") or "")
            big = mapped["carries_record_bytes"] and item.blob_key and item.size > limit
            if big:
                up = Upload(binary_id(t.id, item.sha256), item.blob_key, item.media_type,
                            item.sha256, item.size)
                uploads[up.ref] = up
            if big and resource["resourceType"] == "Binary":
                # a FHIR source's attachment: whatever references it is pointed at the upload
                relocated[full_url] = up
                unit.inline = StreamedBinary(full_url, item.blob_key, item.media_type, item.size)
            elif big:
                for content in resource.get("content", []):
                    point_at(content["attachment"], up)
                unit.entries.append(shape.entry(full_url, resource))
                unit.estimate = 512
            elif mapped["carries_record_bytes"] and resource["resourceType"] == "Binary":
                # an attachment fetched from a FHIR source: the record's bytes are its data
                unit.entries.append(StreamedBinary(full_url, item.blob_key, item.media_type, item.size))
                unit.estimate = 4 * (item.size // 3 + 1) + 512
            elif mapped["carries_record_bytes"]:
                binary_url = urn(t.id, "binary", key)
                for content in resource.get("content", []):
                    content["attachment"]["url"] = binary_url
                unit.entries.append(shape.entry(full_url, resource))
                unit.entries.append(StreamedBinary(binary_url, item.blob_key, item.media_type, item.size))
                unit.estimate = 4 * (item.size // 3 + 1) + 512
            else:
                unit.entries.append(shape.entry(full_url, resource))
            if unit.entries and isinstance(unit.entries[0], dict):
                unit.estimate += len(jsontext.dumps(unit.entries[0]))
            units[full_url] = unit
    by_id = {i.id: i for i in items}
    for copy_id, original_id in copies.items():  # a copy is named where its original went
        if original_id in document_url:
            copy = by_id[copy_id]
            places[document_url[original_id]].append((copy.source, copy.origin))
    if aliases:
        for unit in units.values():
            for entry in unit.entries:
                if isinstance(entry, dict):
                    _rewrite_references(entry["resource"], aliases)
    uploads_mod.point_units_at_uploads(units, relocated, uploads)
    ordered = sorted(units.values(), key=lambda u: (u.date, u.full_url))
    return ordered, places, items, uploads


def _delivered_versions(s, t: Transfer) -> dict[tuple[str, str], Item]:
    """The newest version of each record an earlier transfer under the same authorization
    delivered to the same recipient, by (source, origin)."""
    rows = s.scalars(
        select(Item).join(Transfer, Item.transfer_id == Transfer.id)
        .where(Transfer.authorization_id == t.authorization_id, Transfer.id != t.id,
               Transfer.recipient == t.recipient, Transfer.state == "completed",
               Item.state == "mapped", Item.resources_blob.is_not(None))
        .order_by(Transfer.completed_at)).all()
    return {(i.source, i.origin): i for i in rows}


def _mark_replacement(svc: Services, document: dict, before: Item | None, item: Item) -> None:
    """A corrected document (the same record at the source, other bytes) says which
    delivered document it replaces, by that one's masterIdentifier."""
    if before is None or before.sha256 == item.sha256:
        return
    for mapped in jsontext.loads(svc.blobs.read_bytes(before.resources_blob)):
        old = mapped["resource"]
        if old["resourceType"] == "DocumentReference" and old.get("masterIdentifier"):
            document["relatesTo"] = [{"code": "replaces",
                                      "target": {"identifier": old["masterIdentifier"]}}]
            return


# which copy of a document is delivered: the electronic original before a scan of it
_ORIGINALS_FIRST = {"fhir-attachment": 0, "pdf": 1, "fax": 2}


def _document_copies(items: list[Item]) -> dict[int, int]:
    """Documents that came twice in different bytes (see same_document.py)."""
    candidates = [(i.id, (i.record_meta or {}).get("fingerprint")) for i in sorted(
        (i for i in items if i.state == "mapped"),
        key=lambda i: _ORIGINALS_FIRST.get(i.kind, 3))]  # stable: source order kept
    return same_document.duplicates(candidates)


def _first_with_identifier(seen: dict[str, str], resource: dict, full_url: str) -> str:
    """The fullUrl of the first resource of this type sharing a business identifier."""
    keys = [f"{resource['resourceType']}|{i['system']}|{i['value']}"
            for i in resource.get("identifier") or []
            if isinstance(i, dict) and i.get("system") and i.get("value")]
    first = next((seen[k] for k in keys if k in seen), full_url)
    for k in keys:
        seen.setdefault(k, first)
    return first


def _rewrite_references(node, aliases: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref in aliases:
            node["reference"] = aliases[ref]
        for value in node.values():
            if isinstance(value, (dict, list)):
                _rewrite_references(value, aliases)
    elif isinstance(node, list):
        for value in node:
            _rewrite_references(value, aliases)


def _with_attachments(units: list[Unit]) -> list[list[Unit]]:
    """Units in order, each followed by the FHIR source's Binaries it points at (a Binary
    goes with its first owner): a Binary says nothing of itself, so the receiver judges it
    by the record beside it, which must be in the same bundle."""
    binaries = {u.full_url: u for u in units
                if len(u.entries) == 1 and isinstance(u.entries[0], StreamedBinary)}
    owned: dict[str, list[Unit]] = {}  # owner's fullUrl -> its Binaries
    taken: set[str] = set()
    for unit in units if binaries else ():  # (no such Binary: nothing to walk for)
        if unit.full_url not in binaries and unit.entries and isinstance(unit.entries[0], dict):
            for att in referenced(unit.entries[0]["resource"], binaries):
                if att["url"] not in taken:
                    taken.add(att["url"])
                    owned.setdefault(unit.full_url, []).append(binaries[att["url"]])
    return [[unit, *owned.get(unit.full_url, ())] for unit in units if unit.full_url not in taken]


def _pack(units: list[Unit], limit: int) -> list[list[Unit]]:
    parts: list[list[Unit]] = [[]]
    size = 0
    for group in _with_attachments(units):
        estimate = sum(u.estimate for u in group)
        if parts[-1] and size + estimate > limit:
            parts.append([])
            size = 0
        parts[-1].extend(group)
        size += estimate
    return parts


def assemble(svc: Services, t: Transfer) -> list[AssembledPart]:
    """Write the transfer's bundle(s) to the blob store; deterministic for a transfer."""
    peer = svc.settings.peers[t.recipient]
    shape = _Shape(put=peer.kind == "fhir")
    claims = t.authorization.claims
    patient = patient_urn(t.id)
    consent_url = urn(t.id, "consent")
    group = urn(t.id, "submission-group")
    units, places, items, uploads = _collect(svc, t, shape)
    packed = _pack(units, svc.settings.bundle_max_bytes)
    total = len(packed)
    part_of = {u.full_url: n + 1 for n, part in enumerate(packed) for u in part}
    when = t.created_at.isoformat()

    summary_units = summary_mod.build(svc, t, shape, units, part_of, patient, claims, urn)
    manifest_units = manifest_mod.build(svc, t, shape, items, places, part_of, patient, urn)
    out = []
    for n, part_units in enumerate(packed, start=1):
        head = [shape.entry(patient, patient_resource(claims)),
                shape.entry(consent_url, consent_resource(t.authorization.consent, patient))]
        body_units = (summary_units + manifest_units if n == 1 else []) + part_units
        docs = [e for u in body_units for e in u.entries
                if isinstance(e, dict) and e["resource"]["resourceType"] == "DocumentReference"]
        submission_url = urn(t.id, "submissionset", str(n))
        submission = _dump(FhirList.model_validate({
            "resourceType": "List",
            "identifier": [{"system": "urn:ietf:rfc:3986", "value": submission_url},
                           {"system": GROUP_SYSTEM, "value": group}],
            "status": "current", "mode": "working",
            "title": "Records for a second opinion" + (f" (part {n} of {total})" if total > 1 else ""),
            "code": {"coding": [SUBMISSION_SET]},
            "subject": {"reference": patient},
            "date": when,
            "source": {"display": svc.settings.organization},
            "entry": [{"item": {"reference": d["fullUrl"]}} for d in docs],
        }))
        submission["extension"] = [
            {"url": f"{MHD}/StructureDefinition/ihe-intendedRecipient",
             "valueReference": {"identifier": {"system": "urn:records-gateway:organization",
                                               "value": claims["recipient"]["id"]},
                                "display": claims["recipient"]["name"]}},
            {"url": f"{MHD}/StructureDefinition/ihe-sourceId", "valueIdentifier": {
                "system": "urn:records-gateway:organization", "value": svc.settings.organization}},
            {"url": PART_EXT, "valueString": f"{n}/{total}"}]
        head.append(shape.entry(submission_url, submission))
        provenances = _provenances(t, shape, body_units, places, consent_url, svc, n)
        out.append(_write(svc, t, n, total, head, body_units, provenances, uploads))
    return out


def _provenances(t, shape, body_units, places, consent_url, svc, n) -> list[dict]:
    by_source: dict[str, list[str]] = {}
    origins: dict[str, list[str]] = {}
    for unit in body_units:
        for source, origin in places.get(unit.full_url, []):
            by_source.setdefault(source, []).append(unit.full_url)
            origins.setdefault(source, []).append(origin)
    result = []
    for name in sorted(by_source):
        cfg = svc.settings.sources.get(name)
        result.append(shape.entry(urn(t.id, "provenance", name, str(n)), _provenance(
            name, cfg.organization if cfg else name, by_source[name], origins[name],
            t.created_at.isoformat(), consent_url)))
    return result


def _provenance(source: str, organization: str, targets: list[str], origins: list[str],
                recorded: str, policy: str) -> dict:
    """One source's Provenance, as the R4B model writes it. The model checks it with its
    first target and each distinct entity (a record's origin repeats for each of its
    resources); the other targets are written as the model writes that one: they are the
    bundle's own fullUrls. (The model over thousands of targets and entities took a third
    of the standard case's assembly.)"""
    system = f"urn:records-gateway:origin:{source}"
    distinct = list(dict.fromkeys(o[:1000] for o in origins))
    body = _dump(Provenance.model_validate({
        "resourceType": "Provenance",
        "target": [{"reference": targets[0]}],
        "recorded": recorded,
        "policy": [policy],
        "agent": [{"who": {"display": organization}}],
        "entity": [{"role": "source", "what": {"identifier": {"system": system, "value": o}}}
                   for o in distinct],
    }))
    entity = dict(zip(distinct, body["entity"]))
    body["target"] = [{"reference": u} for u in targets]
    body["entity"] = [entity[o[:1000]] for o in origins]
    return body


def _write(svc: Services, t: Transfer, n: int, total: int, head: list[dict],
           body_units: list[Unit], provenances: list[dict],
           uploads: dict[str, Upload]) -> AssembledPart:
    bid = bundle_id(t.id, n, total)
    top = {"resourceType": "Bundle", "id": bid,
           "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{bid}"},
           "type": "transaction", "timestamp": t.created_at.isoformat()}
    hashes: dict[str, str] = {}
    needs: dict[str, Upload] = {}
    count = 0
    with svc.blobs.writer() as w:
        w.write(jsontext.dumps(top)[:-1] + b',"entry":[')
        plain = head + [e for u in body_units for e in u.entries if isinstance(e, dict)] + provenances
        for entry in plain:
            text = jsontext.dumps(entry, keep=False)
            w.write((b"," if count else b"") + text)
            hashes[entry["fullUrl"]] = entry_hash(entry["resource"])
            if uploads and _UPLOAD_URL in text:  # the walk only where an upload may be named
                for att in referenced(entry["resource"]):
                    if att["url"] in uploads:
                        needs[att["url"]] = uploads[att["url"]]
            count += 1
        for unit in body_units:
            for entry in unit.entries:
                if isinstance(entry, StreamedBinary):
                    w.write(b",")
                    hashes[entry.full_url] = _write_binary(svc, w, entry, put=_is_put(head))
                    count += 1
        w.write(b"]}")
    return AssembledPart(n, total, bid, w.info, count, hashes,
                         tuple(needs[ref] for ref in sorted(needs)))


# an attachment's url naming an upload (`referenced`), as compact JSON writes it
_UPLOAD_URL = b'"url":"Binary/'


def _is_put(head: list[dict]) -> bool:
    return head[0]["request"]["method"] == "PUT"


def _write_binary(svc: Services, w, b: StreamedBinary, put: bool) -> str:
    """Stream one Binary entry; return the sha256 of its resource's canonical JSON."""
    rid = b.full_url.rsplit(":", 1)[-1]
    resource = {"resourceType": "Binary", "contentType": b.media_type}
    if put:
        resource["id"] = rid
    resource["data"] = ""
    request = ({"method": "PUT", "url": f"Binary/{rid}"} if put else {"method": "POST", "url": "Binary"})
    text = jsontext.dumps({"fullUrl": b.full_url, "resource": resource, "request": request})
    cut = text.index(b'"data":""') + len(b'"data":"')
    canon = canonical(resource)
    ccut = canon.index(b'"data":""') + len(b'"data":"')
    digest = hashlib.sha256(canon[:ccut])
    w.write(text[:cut])
    for encoded in base64_chunks(svc.blobs.chunks(b.blob_key) if b.blob_key else iter(())):
        w.write(encoded)
        digest.update(encoded)
    w.write(text[cut:])
    digest.update(canon[ccut:])
    return digest.hexdigest()
