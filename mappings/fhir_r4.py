"""FHIR R4 JSON pulled by connectors/fhir/connector.py -> the source's own JSON, normalized
and checked.

Record kinds:
- "fhir-json": NDJSON of Bundle entries from one page chunk. What travels is each
  resource's JSON as the server served it (`Mapped.json`): every value keeps its text,
  decimals (`1.00`, `0.001530`, `1.5e3`, `-0`) and date-times (`.715Z`, `+00:00`) alike
  (mappings/fhir/jsontext.py). Validation is a check on that JSON, never its source
  (mappings/fhir/validate.py: the R4B models, or R4's own definitions for the types R4B
  lacks or structures differently; first, mappings/fhir/schema_check.py: R4's JSON schema
  made as strict as the R4B models, ~10x faster, whose "accepted" stands for the models'
  and whose "not accepted" leaves the verdict and the error to the models);
  `Mapped.resource` is the validated model (a PulledResource that reads like it, for the
  schema check's: built on first use). An invalid
  resource is never dropped: `map_fhir_json` raises `ResourcesInvalid` (a MappingFailed
  naming each invalid resource, the check it failed and its errors: element paths and
  messages, no values) carrying the valid `Mapped` items and the `InvalidResource`s (with
  their JSON as served); `map_fhir_json_items` returns both kinds in one list.
  The only changes to the source's JSON (the normalizations), before the check:
  * ids: each resource gets `uuid5(URL, "<base>/<Type>/<id>")` as id (stable across
    pulls, unique across servers) and `meta.source` = its URL on the server, so the
    bundle can use `urn:uuid:<id>` fullUrls;
  * references (every `reference` string, contained resources' included): relative
    (`Type/id`), absolute under the server base, versioned (`.../_history/n`: the version
    is dropped) and `urn:uuid` ones resolved through the entries' fullUrls all become
    `urn:uuid:<id>`; references to the matched patient become
    `MappingContext.patient_reference`; external, conditional and local (`#id`)
    references stay;
  * attachments the connector fetched (metadata "attachments") point at their Binary
    (`urn:uuid:<binary id>`);
  * contained resources travel inside their resource as served: never merged, never
    replaced by another resource, so a reference always points where the source said.
  Each resource gets its data class and clinical date (mappings/fhir/classify.py).
  One Provenance per record and check names the server, the request, the fetch time and
  the definitions its targets were checked against.
- "fhir-attachment": the attachment's bytes become a Binary (content streamed by the
  bundle: `carries_record_bytes=True`) with the owner's data class and date.

STU3 / R5 / other versions (record metadata "fhir_version") stop with MappingFailed:
R4 models would mis-read them.
"""
from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import date

import orjson
from pydantic import ValidationError

from connectors.base import RawRecord
from mappings import Mapped, MappingContext, MappingFailed, PartlyInvalid
from mappings.fhir import jsontext
from mappings.fhir.classify import clinical_date, data_class
from mappings.fhir.schema_check import Parsed, PulledResource, pulled, schema_check
from mappings.fhir.validate import (
    R4_CHECK,
    R4B_CHECK,
    MemoValidator,
    ResourceInvalid,
    check,
    check_name,
    errors_text,
    model_class,
)

R4_VERSIONS = ("4.0", "4.3")
_REF = re.compile(r"^([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-\.]{1,64})(?:/_history/[A-Za-z0-9\-\.]{1,64})?$")
# a "reference" member with a string value, in a record's raw NDJSON: a quote inside a
# JSON string is always escaped, so `"reference"` never occurs inside a string value. What
# follows each `"reference"` is matched by _REFERENCE_VALUE: the colon and the value, a
# JSON string (never past the end of its line: JSON strings hold no raw line break)
_REFERENCE_KEY = b'"reference"'
_REFERENCE_VALUE = re.compile(rb'[ \t\r]*:[ \t\r]*("[^"\\\n]*(?:\\.[^"\\\n]*)*")')
CHECKED_EXT = "urn:records-gateway:fhir:checked-against"


@dataclass(frozen=True)
class InvalidResource:
    """A resource that failed its check: kept and reported, never silently dropped."""

    origin: str  # "<record origin>#<Type>/<id>" (or "#line=N" without type/id)
    resource_type: str
    source_id: str
    error: str  # the check that failed, element paths and messages, never values
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
    """str(uuid.uuid5(uuid.NAMESPACE_URL, name)) without building UUID objects: the SHA-1's
    first 32 hex digits, version 5 and the RFC 4122 variant written into two of them."""
    x = _sha1(_NS_URL + name.encode()).hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


_sha1 = hashlib.sha1
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}  # top two bits 10


def check_version(record: RawRecord) -> None:
    version = str(record.metadata.get("fhir_version") or "")
    if not version.startswith(R4_VERSIONS):
        raise MappingFailed(f"record is FHIR {version or '(unknown version)'}, not R4: "
                            f"refusing to read it with R4 models", record.origin)


class _Normalizer:
    """Reference rewriting for one record, on each entry's raw JSON (so nothing else of
    it is touched)."""

    def __init__(self, record: RawRecord, context: MappingContext, full_urls: dict[str, str]):
        meta = record.metadata
        self.base = str(meta.get("base_url") or "").rstrip("/")
        self.base_prefix = self.base + "/"
        self._plain = not self.base_prefix[:1].isupper()  # no `Type/id` can start with the base
        self.patient_id = str(meta["patient_id"]) if meta.get("patient_id") else None
        self.patient = f"Patient/{self.patient_id}" if self.patient_id else None
        self.patient_ref = context.patient_reference
        self.full_urls = full_urls  # fullUrl -> "Type/id" for fullUrls not under the base
        # a reference's JSON string -> its new one: `urn:` ones for this record (its
        # entries' fullUrls resolve them), the others for every record of this pull (its
        # records reference the same encounters and practitioners); likewise the uuids,
        # computed for each resource and again for every reference to it
        self._refs: dict[bytes, bytes] = {}
        self._shared, self._uuids = _pull_memo(self.base, self.patient, self.patient_ref,
                                               meta.get("pull_started"))

    def uuid(self, rtype: str, rid: str) -> str:
        """resource_uuid(base, rtype, rid), memoized for the pull."""
        name = f"{self.base}/{rtype}/{rid}"
        found = self._uuids.get(name)
        if found is None:
            found = self._uuids[name] = uuid5_str(name)
        return found

    def target(self, rtype: str, rid: str) -> str:
        if rtype == "Patient" and rid == self.patient_id:
            return self.patient_ref
        return f"urn:uuid:{self.uuid(rtype, rid)}"

    def rewrite(self, data: bytes) -> bytes:
        """The record's NDJSON (or one entry's JSON) with its references normalized, byte
        for byte the same elsewhere. The whole record at once: one scan for the key (a
        plain byte search), then one match where it occurs; a regex searched line by line
        cost a tenth of mapping a page."""
        parts = data.split(_REFERENCE_KEY)
        if len(parts) == 1:
            return data
        shared, refs, match = self._shared, self._refs, _REFERENCE_VALUE.match
        for i in range(1, len(parts)):
            part = parts[i]
            m = match(part)
            if m is not None:
                quoted = m.group(1)
                new = shared.get(quoted) or refs.get(quoted) or self._replacement(quoted)
                if new != quoted:
                    parts[i] = part[:m.start(1)] + new + part[m.end(1):]
        return _REFERENCE_KEY.join(parts)

    def _replacement(self, quoted: bytes) -> bytes:
        """A reference's new JSON string (the same one when it stays), memoized."""
        m = _PLAIN_REF.fullmatch(quoted) if self._plain else None
        if m is not None:  # "Type/id", most references: what _resolve makes of it, at once
            new = self._shared[quoted] = orjson.dumps(self.target(m.group(1).decode(), m.group(2).decode()))
            return new
        try:
            ref = orjson.loads(quoted) if b"\\" in quoted else quoted[1:-1].decode()
            resolved = self._resolve(ref)
        except (orjson.JSONDecodeError, UnicodeDecodeError):
            ref = resolved = None  # the parse after this reports the entry as not JSON
        new = orjson.dumps(resolved) if resolved is not None and resolved != ref else quoted
        if isinstance(ref, str) and ref.startswith("urn:"):
            self._refs[quoted] = new
        else:
            self._shared[quoted] = new
        return new

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


# a relative reference (`Type/id`, maybe versioned) as a JSON string: ASCII, no escapes,
# so neither `#`, `urn:` nor a server base (a URL) can start it
_PLAIN_REF = re.compile(rb'"([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-\.]{1,64})(?:/_history/[A-Za-z0-9\-\.]{1,64})?"')


def _rewrite_attachments(resource: dict, attachments: dict[str, str]) -> None:
    """Attachment URLs the connector fetched -> their Binary."""
    if resource.get("resourceType") == "DocumentReference":
        holders = [c.get("attachment") for c in resource.get("content") or () if isinstance(c, dict)]
    elif resource.get("resourceType") == "DiagnosticReport":
        holders = resource.get("presentedForm") or ()
    else:
        return
    for att in holders:
        if isinstance(att, dict) and isinstance(att.get("url"), str) and att["url"] in attachments:
            att["url"] = attachments[att["url"]]


_PULL_MEMOS: dict[tuple, tuple[dict[bytes, bytes], dict[str, str]]] = {}
_PULL_MEMO_KEPT = 1 << 16  # references (and uuids) a memo holds before it starts again


def _pull_memo(base: str, patient: str | None, patient_ref: str, pull_started) -> tuple[dict, dict]:
    """(references, uuids) memos shared by the records of one pull (server, patient,
    transfer and the pull's start); a record without `pull_started` gets its own. Only
    the last few pulls' are kept: memory stays bounded, and a pull of the same patient
    again starts afresh."""
    if not pull_started:
        return {}, {}
    key = (base, patient, patient_ref, str(pull_started))
    memo = _PULL_MEMOS.get(key)
    if memo is None or len(memo[0]) >= _PULL_MEMO_KEPT or len(memo[1]) >= _PULL_MEMO_KEPT:
        if len(_PULL_MEMOS) >= 4:
            _PULL_MEMOS.pop(next(iter(_PULL_MEMOS), None), None)  # the oldest
        memo = _PULL_MEMOS[key] = ({}, {})
    return memo

# one validator (and its memo of validated elements) for every record a process maps:
# an element's validity depends on nothing but its own JSON
MEMO_ENTRIES = 2048  # validated elements kept (oldest dropped first): bounds memory
_VALIDATOR = MemoValidator(max_entries=MEMO_ENTRIES)


def _outside_full_urls(lines: list[bytes], base: str) -> dict[str, str]:
    """fullUrl -> "Type/id" of the entries whose fullUrl is not under the base (urn:uuid)."""
    base_full = b'{"fullUrl":"' + base.encode() + b"/"
    found: dict[str, str] = {}
    for line in lines:
        if line.startswith(base_full) or b'"fullUrl"' not in line:
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        res = entry.get("resource") if isinstance(entry, dict) else None
        full = entry.get("fullUrl") if isinstance(entry, dict) else None
        if isinstance(res, dict) and isinstance(full, str) and not full.startswith(base + "/"):
            found[full] = f"{res.get('resourceType')}/{res.get('id')}"
    return found


def map_fhir_json_items(record: RawRecord, context: MappingContext) -> list[Mapped | InvalidResource]:
    """Every resource of the record, valid (Mapped) or not (InvalidResource), in order."""
    check_version(record)
    base = str(record.metadata.get("base_url") or "").rstrip("/")
    with open(record.path, "rb") as fh:
        served = fh.read()  # a chunk: a few MB at most (connectors/fhir/pages.py)
    lines = served.split(b"\n")
    norm = _Normalizer(record, context, _outside_full_urls(lines, base))
    attachments = {u: f"urn:uuid:{b}" for u, b in (record.metadata.get("attachments") or {}).items()}
    out: list[Mapped | InvalidResource] = []
    targets: dict[str, list[str]] = {}  # check -> urn:uuid of each resource it passed
    checks: dict[str, str] = {}  # resourceType -> its check
    for line_no, (line, rewritten) in enumerate(zip(lines, norm.rewrite(served).split(b"\n")), 1):
        if not line.strip():
            continue
        res, parsed = _resource(rewritten)
        if res is None:
            out.append(InvalidResource(f"{record.origin}#line={line_no}", "", "",
                                       "entry has no resource object (or is not JSON)", line.rstrip(),
                                       "documents", None))
            continue
        rtype = res.get("resourceType")
        rid = res.get("id")
        rtype, rid = (rtype if isinstance(rtype, str) else ""), (rid if isinstance(rid, str) else "")
        klass, when = data_class(res), clinical_date(res)
        try:
            if not rtype or not rid:
                raise ValueError("resource without resourceType or id")
            checked = checks.get(rtype) or checks.setdefault(rtype, check_name(rtype))
        except (KeyError, ValueError) as exc:
            why = str(exc) if isinstance(exc, ValueError) else f"{rtype!r} is not a FHIR R4 resource type"
            out.append(InvalidResource(f"{record.origin}#line={line_no}", rtype, rid, why,
                                       _as_served(line), klass, when))
            continue
        new_id = norm.uuid(rtype, rid)
        res = _identify(res, new_id, f"{norm.base}/{rtype}/{rid}")
        if attachments:
            _rewrite_attachments(res, attachments)
        try:  # the schema check first (fast); what it does not accept, the models decide
            text = _json_or_none(res)
            model = (pulled(Parsed(res) if parsed else res, text)
                     if text is not None and checked == R4B_CHECK else None) \
                or check(jsontext.loads(text) if parsed else res, _VALIDATOR)
            if text is None:
                text = jsontext.dumps(res)  # raises again, after the check had its say
        except (ResourceInvalid, *jsontext.JSONError) as exc:
            why = str(exc) if isinstance(exc, ResourceInvalid) else f"not writable as JSON: {exc}"
            out.append(InvalidResource(f"{record.origin}#{rtype}/{rid}", rtype, rid, why,
                                       _as_served(line), klass, when))
            continue
        out.append(Mapped(model, klass, when, json=text))
        targets.setdefault(checked, []).append(f"urn:uuid:{new_id}")
    for checked in (R4B_CHECK, R4_CHECK):
        if checked in targets:
            out.append(_provenance(record, targets[checked], checked))
    return out


def _json_or_none(res: dict) -> bytes | None:
    try:
        return jsontext.dumps(res)
    except jsontext.JSONError:
        return None


def _identify(res: dict, new_id: str, source: str) -> dict:
    """The resource with its new id and `meta.source` (a new `meta` goes after the id)."""
    if "meta" in res:  # one that is not an object fails the check
        if isinstance(res["meta"], dict):
            res["meta"] = {**res["meta"], "source": source}
        res["id"] = new_id
        return res
    out = {}
    for key, value in res.items():
        out[key] = new_id if key == "id" else value
        if key == "id":
            out["meta"] = {"source": source}
    return out


def _resource(line: bytes) -> tuple[dict | None, bool]:
    """(the entry's resource or None, whether it is orjson's parse). orjson's parse is
    taken when writing it again gives the entry's JSON back byte for byte, so every number
    in it is a float whose text is the source's (JSON as servers write it, compact; most
    decimals); otherwise jsontext's, whose numbers keep any text (`1.00`, `1.5e3`, `-0`)."""
    try:
        entry = orjson.loads(line)
        parsed = orjson.dumps(entry) == line.strip()
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        parsed = False
    if not parsed:
        try:
            entry = jsontext.loads(line)
        except ValueError:
            return None, False
    res = entry.get("resource") if isinstance(entry, dict) else None
    return (res, parsed) if isinstance(res, dict) else (None, False)


def _as_served(line: bytes) -> bytes:
    """The entry's resource JSON with every value as served."""
    res = _resource(line)[0]
    try:
        return jsontext.dumps(res) if res is not None else line.rstrip()
    except jsontext.JSONError:
        return line.rstrip()


def _provenance(record: RawRecord, targets: list[str], checked: str = R4B_CHECK) -> Mapped:
    """The record's Provenance naming `targets` (the urn:uuids of its resources), as the R4B
    model writes it. The schema check (as strict as the model) checks it, and it is written
    in the model's own order: the model's check and writing cost 3 ms a record. What the
    check leaves to the model, the model checks with its first target, and the others are
    written as it writes that one (urn:uuids made here, like it): validating and writing a
    Reference model per resource was a fifth of mapping a FHIR page."""
    meta = record.metadata
    base = str(meta.get("base_url") or "")
    recorded = record.fetched_at.isoformat().replace("+00:00", "Z")
    why = ("" if checked == R4B_CHECK else
           ": their types are absent from FHIR R4B or structured differently there")
    doc = {
        "resourceType": "Provenance",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"provenance:{record.origin}"
                                                 + ("" if checked == R4B_CHECK else ":r4"))),
        "extension": [{"url": CHECKED_EXT, "valueString": f"checked against {checked}{why}"}],
        "target": [{"reference": targets[0]}],
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
    whole = orjson.dumps({**doc, "target": [{"reference": t} for t in targets]})
    if schema_check().accepts(whole):
        return Mapped(PulledResource({"resourceType": "Provenance", "id": doc["id"]}, whole),
                      "supporting", None, json=whole)
    one = model_class("Provenance").model_validate(doc).model_dump_json().encode()
    first = b'"target":[' + orjson.dumps({"reference": targets[0]}) + b"]"
    if one.count(first) != 1:  # not as the model writes it: let the model write them all
        doc["target"] = [{"reference": t} for t in targets]
        text = model_class("Provenance").model_validate(doc).model_dump_json().encode()
    else:
        text = one.replace(first, b'"target":[' + b",".join(
            orjson.dumps({"reference": t}) for t in targets) + b"]")
    return Mapped(PulledResource({"resourceType": "Provenance", "id": doc["id"]}, text), "supporting", None,
                  json=text)


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
        raise MappingFailed(f"attachment cannot become a Binary: {errors_text(exc)}", record.origin) from None
    klass = data_class(owner) if owner.get("resourceType") else context.default_data_class
    return [Mapped(binary, klass, clinical_date(owner) if owner else None, carries_record_bytes=True)]
