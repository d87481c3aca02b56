"""FHIR R4 JSON pulled by connectors/fhir/connector.py -> validated, normalized R4B models.

Record kinds:
- "fhir-json": NDJSON of Bundle entries from one page chunk. Each resource is
  validated with its `fhir.resources.R4B` model. An invalid one is never dropped:
  `map_fhir_json` raises `ResourcesInvalid` (a MappingFailed naming each invalid
  resource and its errors: element paths and messages, no values) carrying the valid
  `Mapped` items and the `InvalidResource`s (with their raw JSON);
  `map_fhir_json_items` returns both kinds in one list. Normalization, before
  validation:
  * ids: each resource gets `uuid5(URL, "<base>/<Type>/<id>")` as id (stable across
    pulls, unique across servers) and `meta.source` = its URL on the server, so the
    bundle can use `urn:uuid:<id>` fullUrls;
  * references: relative (`Type/id`), absolute under the server base, versioned
    (`.../_history/n`: the version is dropped) and `urn:uuid` ones resolved through the
    entries' fullUrls all become `urn:uuid:<id>`; references to the matched patient
    become `MappingContext.patient_reference`; external and conditional references stay;
  * attachments the connector fetched (metadata "attachments") point at their Binary
    (`urn:uuid:<binary id>`);
  * contained resources: duplicates inside one resource are merged, and a contained
    resource identical to a resource of the record is dropped in favour of a reference
    to it;
  * each resource gets its data class and clinical date (mappings/fhir/classify.py).
  One Provenance per record names the server, the request and the fetch time and
  targets every resource of the record.
- "fhir-attachment": the attachment's bytes become a Binary (content streamed by the
  bundle: `carries_record_bytes=True`) with the owner's data class and date.

STU3 / R5 / other versions (record metadata "fhir_version") stop with MappingFailed:
R4 models would mis-read them.
"""
from __future__ import annotations

import hashlib
import re
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date
from typing import Iterable

import orjson
from pydantic import ValidationError

from connectors.base import RawRecord
from mappings import Mapped, MappingContext, MappingFailed, PartlyInvalid
from mappings.fhir.classify import clinical_date, data_class
from mappings.fhir.validate import MemoValidator, model_class

R4_VERSIONS = ("4.0", "4.3")
_MISSING = object()
_REF = re.compile(r"^([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-\.]{1,64})(?:/_history/[A-Za-z0-9\-\.]{1,64})?$")


@dataclass(frozen=True)
class InvalidResource:
    """A resource that failed R4B validation: kept and reported, never silently dropped."""

    origin: str  # "<record origin>#<Type>/<id>" (or "#line=N" without type/id)
    resource_type: str
    source_id: str
    error: str  # validation errors: element paths and messages, never values
    raw: bytes  # the entry's resource JSON as served
    data_class: str
    clinical_date: date | None


class ResourcesInvalid(PartlyInvalid):
    """Some resources of a record fail validation: the message lists them, without
    values, and the exception carries both halves (`valid`, `invalid`), so the caller
    delivers the valid ones and reports each invalid one."""

    def __init__(self, origin: str, valid: list[Mapped], invalid: list[InvalidResource]):
        shown = "; ".join(f"{i.resource_type or '?'}/{i.source_id or '?'}: {i.error}" for i in invalid[:5])
        more = f"; and {len(invalid) - 5} more" if len(invalid) > 5 else ""
        super().__init__(f"{len(invalid)} of {len(invalid) + len(valid)} resources fail FHIR R4 "
                         f"validation: {shown}{more}", origin, valid, invalid)


def map_fhir_json(record: RawRecord, context: MappingContext) -> list[Mapped]:
    """Mapped resources of a "fhir-json" record; ResourcesInvalid when any fails validation."""
    items = map_fhir_json_items(record, context)
    invalid = [i for i in items if isinstance(i, InvalidResource)]
    if invalid:
        raise ResourcesInvalid(record.origin, [i for i in items if isinstance(i, Mapped)], invalid)
    return items


_NS_URL = uuid.NAMESPACE_URL.bytes


def resource_uuid(base_url: str, rtype: str, rid: str) -> str:
    """uuid5(NAMESPACE_URL, "<base>/<Type>/<id>"), as connectors.fhir.connector computes it."""
    return uuid5_str(f"{base_url.rstrip('/')}/{rtype}/{rid}")


def uuid5_str(name: str) -> str:
    """str(uuid.uuid5(uuid.NAMESPACE_URL, name)) without building UUID objects."""
    h = bytearray(hashlib.sha1(_NS_URL + name.encode()).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def check_version(record: RawRecord) -> None:
    version = str(record.metadata.get("fhir_version") or "")
    if not version.startswith(R4_VERSIONS):
        raise MappingFailed(f"record is FHIR {version or '(unknown version)'}, not R4: "
                            f"refusing to read it with R4 models", record.origin)


class _Normalizer:
    """Reference rewriting for one record (the validation memo applies it to every
    Reference element before looking the element up)."""

    def __init__(self, record: RawRecord, context: MappingContext, full_urls: dict[str, str]):
        meta = record.metadata
        self.base = str(meta.get("base_url") or "").rstrip("/")
        self.base_prefix = self.base + "/"
        self.patient = f"Patient/{meta['patient_id']}" if meta.get("patient_id") else None
        self.patient_ref = context.patient_reference
        self.full_urls = full_urls  # fullUrl -> "Type/id" for fullUrls not under the base
        self._targets: dict[tuple[str, str], str] = {}
        self._refs: dict[str, str | None] = {}

    def target(self, rtype: str, rid: str) -> str:
        key = (rtype, rid)
        found = self._targets.get(key)
        if found is None:
            if self.patient is not None and f"{rtype}/{rid}" == self.patient:
                found = self.patient_ref
            else:
                found = f"urn:uuid:{resource_uuid(self.base, rtype, rid)}"
            self._targets[key] = found
        return found

    def reference(self, value: dict) -> dict:
        ref = value.get("reference")
        if not isinstance(ref, str):
            return value
        new = self._refs.get(ref, _MISSING)
        if new is _MISSING:
            new = self._refs[ref] = self._resolve(ref)
        if new is not None and new != ref:
            value = dict(value)
            value["reference"] = new
        return value

    def _resolve(self, ref: str) -> str | None:
        if ref[:1] == "#":
            return None
        if ref.startswith(self.base_prefix):
            m = _REF.match(ref[len(self.base_prefix):])
            return self.target(m.group(1), m.group(2)) if m else None
        if ref.startswith("urn:"):
            local = self.full_urls.get(ref)
            if local:
                rtype, _, rid = local.partition("/")
                return self.target(rtype, rid)
            return None
        m = _REF.match(ref)
        return self.target(m.group(1), m.group(2)) if m else None


def _errors(exc: ValidationError, limit: int = 8) -> str:
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:limit]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', '')}" if loc else str(err.get("msg", "")))
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _content_key(resource: dict) -> bytes:
    return orjson.dumps({k: v for k, v in resource.items() if k not in ("id", "meta")},
                        option=orjson.OPT_SORT_KEYS)


def _dedupe_contained(resource: dict, standalone: dict[bytes, str]) -> None:
    """Merge identical contained resources; drop those identical to a record resource
    (pointing their local references at it instead)."""
    contained = resource.get("contained")
    if not isinstance(contained, list) or not contained:
        return
    kept: dict[bytes, str] = {}
    renamed: dict[str, str] = {}
    out = []
    for item in contained:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            out.append(item)
            continue
        key = _content_key(item)
        if key in standalone:
            renamed[f"#{item['id']}"] = standalone[key]
        elif key in kept:
            renamed[f"#{item['id']}"] = f"#{kept[key]}"
        else:
            kept[key] = item["id"]
            out.append(item)
    if not renamed:
        return
    if out:
        resource["contained"] = out
    else:
        del resource["contained"]
    _rename_local(resource, renamed)


def _rename_local(node, renamed: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref in renamed:
            node["reference"] = renamed[ref]
        for value in node.values():
            if isinstance(value, (dict, list)):
                _rename_local(value, renamed)
    elif isinstance(node, list):
        for value in node:
            if isinstance(value, (dict, list)):
                _rename_local(value, renamed)


def _rewrite_attachments(resource: dict, attachments: dict[str, str]) -> None:
    """Attachment URLs the connector fetched -> their Binary (before validation, so the
    validation memo sees the rewritten element)."""
    if resource.get("resourceType") == "DocumentReference":
        holders = [c.get("attachment") for c in resource.get("content") or () if isinstance(c, dict)]
    elif resource.get("resourceType") == "DiagnosticReport":
        holders = resource.get("presentedForm") or ()
    else:
        return
    for att in holders:
        if isinstance(att, dict) and isinstance(att.get("url"), str) and att["url"] in attachments:
            att["url"] = attachments[att["url"]]


# validators (and their memo of validated elements) shared by the records of one pull:
# reference rewriting depends only on this key, so identical elements validate once
_VALIDATORS: "OrderedDict[tuple, MemoValidator]" = OrderedDict()
MEMO_ENTRIES = 2048  # validated elements kept (oldest dropped first): bounds memory


def _validator(norm: _Normalizer) -> MemoValidator:
    key = (norm.base, norm.patient, norm.patient_ref,
           hashlib.sha256(orjson.dumps(norm.full_urls, option=orjson.OPT_SORT_KEYS)).digest())
    validator = _VALIDATORS.get(key)
    if validator is None:
        validator = MemoValidator({"Reference": norm.reference}, max_entries=MEMO_ENTRIES)
        _VALIDATORS[key] = validator
        while len(_VALIDATORS) > 2:
            _VALIDATORS.popitem(last=False)
    else:
        _VALIDATORS.move_to_end(key)
        validator.hooks["Reference"] = norm.reference
    return validator


def map_fhir_json_items(record: RawRecord, context: MappingContext) -> list[Mapped | InvalidResource]:
    """Every resource of the record, valid (Mapped) or not (InvalidResource), in order."""
    check_version(record)
    base = str(record.metadata.get("base_url") or "").rstrip("/")
    base_full = b'{"fullUrl":"' + base.encode() + b"/"
    # first pass, cheap: fullUrls outside the base (urn:uuid) and contained resources
    full_urls: dict[str, str] = {}
    contained_types: set[str] = set()
    with open(record.path, "rb") as fh:
        for line in fh:
            if line.startswith(base_full) and b'"contained"' not in line:
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            res = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(res, dict):
                continue
            full = entry.get("fullUrl")
            if isinstance(full, str) and not full.startswith(base + "/"):
                full_urls[full] = f"{res.get('resourceType')}/{res.get('id')}"
            contained_types.update(c.get("resourceType") for c in res.get("contained") or ()
                                   if isinstance(c, dict))
    norm = _Normalizer(record, context, full_urls)
    standalone: dict[bytes, str] = {}
    if contained_types:
        with open(record.path, "rb") as fh:
            for line in fh:
                res = _resource(line)
                if res and res.get("resourceType") in contained_types and res.get("id"):
                    standalone[_content_key(res)] = norm.target(res["resourceType"], str(res["id"]))
    attachments = {u: f"urn:uuid:{b}" for u, b in (record.metadata.get("attachments") or {}).items()}
    validator = _validator(norm)
    out: list[Mapped | InvalidResource] = []
    targets = []
    with open(record.path, "rb") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            res = _resource(line)
            if res is None:
                out.append(InvalidResource(f"{record.origin}#line={line_no}", "", "",
                                           "entry has no resource object (or is not JSON)", line.rstrip(),
                                           "documents", None))
                continue
            rtype = str(res.get("resourceType") or "")
            rid = str(res.get("id") or "")
            klass, when = data_class(res), clinical_date(res)
            try:
                if not rtype or not rid:
                    raise ValueError("resource without resourceType or id")
                model_class(rtype)
            except (KeyError, ValueError) as exc:
                why = str(exc) if isinstance(exc, ValueError) else f"unknown resource type {rtype!r}"
                out.append(InvalidResource(f"{record.origin}#line={line_no}", rtype, rid, why,
                                           orjson.dumps(res), klass, when))
                continue
            new_id = resource_uuid(norm.base, rtype, rid)
            meta = res.get("meta")
            res["meta"] = {**meta, "source": f"{norm.base}/{rtype}/{rid}"} if isinstance(meta, dict) \
                else {"source": f"{norm.base}/{rtype}/{rid}"}
            res["id"] = new_id
            if "contained" in res:
                _dedupe_contained(res, standalone)
            if attachments:
                _rewrite_attachments(res, attachments)
            try:
                model = validator.validate(res)
            except ValidationError:
                original = _resource(line)
                out.append(InvalidResource(f"{record.origin}#{rtype}/{rid}", rtype, rid,
                                           _plain_errors(original), orjson.dumps(original), klass, when))
                continue
            out.append(Mapped(model, klass, when))
            targets.append(f"urn:uuid:{new_id}")
    if targets:
        out.append(Mapped(_provenance(record, targets), "supporting", None))
    return out


def _resource(line: bytes) -> dict | None:
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    res = entry.get("resource") if isinstance(entry, dict) else None
    return res if isinstance(res, dict) else None


def _plain_errors(resource: dict) -> str:
    """Errors as a plain validation of the resource as served reports them."""
    try:
        model_class(resource["resourceType"]).model_validate(resource)
    except ValidationError as exc:
        return _errors(exc)
    return "invalid after normalization (references or contained resources)"


def _provenance(record: RawRecord, targets: Iterable[str]):
    meta = record.metadata
    base = str(meta.get("base_url") or "")
    recorded = record.fetched_at.isoformat().replace("+00:00", "Z")
    doc = {
        "resourceType": "Provenance",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"provenance:{record.origin}")),
        "target": [{"reference": t} for t in targets],
        "recorded": recorded,
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                 "code": "PULL", "display": "pull"}]},
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                 "code": "custodian", "display": "Custodian"}]},
            "who": {"identifier": {"system": "urn:ietf:rfc:3986", "value": base},
                    "display": f"FHIR server {base} (source {record.source})"},
        }],
        "entity": [{"role": "source",
                    "what": {"identifier": {"system": "urn:ietf:rfc:3986", "value": record.origin},
                             "display": f"FHIR {meta.get('fhir_version', '')} {meta.get('stream', '')} "
                                        f"page {meta.get('page', '')} (sha256 {record.sha256})"}}],
    }
    return model_class("Provenance").model_validate(doc)


def map_fhir_attachment(record: RawRecord, context: MappingContext) -> list[Mapped]:
    meta = record.metadata
    owner = meta.get("owner") or {}
    binary_id = meta.get("binary_id")
    if not binary_id:
        raise MappingFailed("attachment record without binary_id", record.origin)
    media_type = record.media_type or meta.get("content_type") or "application/octet-stream"
    try:
        binary = model_class("Binary").model_validate({
            "resourceType": "Binary", "id": binary_id, "contentType": media_type.split(";")[0].strip(),
            "meta": {"source": meta.get("absolute_url") or record.origin},
        })
    except ValidationError as exc:
        raise MappingFailed(f"attachment cannot become a Binary: {_errors(exc)}", record.origin) from None
    klass = data_class(owner) if owner.get("resourceType") else context.default_data_class
    return [Mapped(binary, klass, clinical_date(owner) if owner else None, carries_record_bytes=True)]
