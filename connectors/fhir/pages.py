"""Turning one downloaded Bundle page into record files: de-duplicated entries as NDJSON
chunks, plus what the page tells us to fetch next (attachments, referenced resources).
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from connectors.base import SourceRejected

from . import references
from .bundles import BundleFormatError, BundleReader, next_link


@functools.lru_cache(maxsize=16)
def _supporting_refs(supporting: tuple[str, ...], base_prefix: str) -> re.Pattern:
    """A regex for references to supporting types ("Type/id", relative or under the base),
    so the scan of each entry's raw JSON finds only those (most references are not)."""
    types = b"|".join(re.escape(t.encode()) for t in supporting)
    return re.compile(rb'"reference"\s*:\s*"(?=[^"\\]{1,300}")(?:' + re.escape(base_prefix.encode())
                      + rb")?((?:" + types + rb')/[^"\\/]+)"')


@dataclass
class Attachment:
    url: str  # as written in the resource
    owner: dict  # a small summary of the resource holding it (type, id, category, dates)
    content_type: str | None


@dataclass
class Chunk:
    path: Path
    count: int = 0
    size: int = 0
    digest: "hashlib._Hash" = field(default_factory=hashlib.sha256)  # of the bytes written

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()


@dataclass
class PageResult:
    chunks: list[Chunk] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)  # "Type/id" -> version marker
    refs: set[str] = field(default_factory=set)
    attachments: list[Attachment] = field(default_factory=list)
    next_url: str | None = None
    total: int | None = None
    resources: int = 0
    duplicates: int = 0
    outcomes: int = 0
    skipped: int = 0  # entries without a usable resource
    # ("Type/id", reason): entries about another patient, never taken (one patient per pull)
    refused: list[tuple[str, str]] = field(default_factory=list)


OWNER_KEYS = ("resourceType", "id", "category", "type", "code", "date", "effectiveDateTime",
              "effectivePeriod", "issued", "context")


# the elements that say whom a resource is about (as the receiving gateway checks them)
SUBJECT_ELEMENTS = ("subject", "patient", "beneficiary")


def _other_patient(rtype: str, rid: str, resource: dict, base_url: str, patient_id: str) -> bool:
    """Whether the entry is another patient, or is about one. A record of this patient
    that merely mentions another (a focus, a family member) stays: whom it is about
    decides, as on the receiving side."""
    if rtype == "Patient":
        return rid != patient_id
    for name in SUBJECT_ELEMENTS:
        values = resource.get(name)
        if values is None:
            continue
        for value in values if isinstance(values, list) else (values,):
            ref = value.get("reference") if isinstance(value, dict) else None
            if isinstance(ref, str) and _names_other_patient(ref, base_url, patient_id):
                return True
    return False


@functools.lru_cache(maxsize=4096)  # a page's resources are about one patient: one reference
def _names_other_patient(ref: str, base_url: str, patient_id: str) -> bool:
    target = references.normalize(ref, (base_url.rstrip("/"),))
    return bool(target and target.startswith("Patient/") and target != f"Patient/{patient_id}")


def version_marker(resource: dict) -> str:
    meta = resource.get("meta")
    if isinstance(meta, dict):
        return f"{meta.get('versionId') or ''}|{meta.get('lastUpdated') or ''}"
    return "|"


def newer(marker: str, than: str) -> bool:
    """Whether a version marker ("versionId|lastUpdated") is newer than another."""
    if marker == than:
        return False
    v1, _, t1 = marker.partition("|")
    v2, _, t2 = than.partition("|")
    if v1.isdigit() and v2.isdigit() and v1 != v2:
        return int(v1) > int(v2)
    return bool(t1 and t2 and t1 > t2)


def split_page(page_file: Path, out_prefix: Path, *, seen: dict[str, str],
               supporting: tuple[str, ...], base_url: str, chunk_resources: int,
               chunk_bytes: int, want_attachments: bool,
               patient_id: str | None = None) -> PageResult:
    """Read a downloaded searchset page and write its new resources as NDJSON chunks.

    `seen` maps "Type/id" to the version already pulled from other pages; an entry seen
    there in the same or an older version is dropped (paging across changes returns
    some resources twice). Each chunk line is one Bundle entry (fullUrl + resource).
    With `patient_id`, an entry that is another patient or about one is refused: a
    server's page may hold other patients' records.
    """
    result = PageResult()
    reader = BundleReader(page_file)
    out = None
    chunk: Chunk | None = None
    refs_re = _supporting_refs(tuple(supporting), base_url.rstrip("/") + "/") if supporting else None
    try:
        for raw, entry in reader.entries():
            resource = entry.get("resource")
            if not isinstance(resource, dict) or not resource.get("resourceType"):
                result.skipped += 1
                continue
            rtype = resource["resourceType"]
            mode = (entry.get("search") or {}).get("mode") if isinstance(entry.get("search"), dict) else None
            if mode == "outcome" or rtype == "OperationOutcome":
                result.outcomes += 1
                continue
            rid = resource.get("id")
            if not isinstance(rid, str) or not rid:
                result.skipped += 1
                continue
            rkey = f"{rtype}/{rid}"
            marker = version_marker(resource)
            previous = seen.get(rkey) or result.keys.get(rkey)
            if previous is not None and not newer(marker, previous):
                result.duplicates += 1
                continue
            result.keys[rkey] = marker
            if patient_id is not None and _other_patient(rtype, rid, resource, base_url, patient_id):
                result.refused.append((rkey, "refers to another patient: not taken"))
                continue
            result.resources += 1
            if refs_re is not None:
                for m in refs_re.finditer(raw):
                    result.refs.add(m.group(1).decode("utf-8", "replace"))
            if want_attachments and rtype in ("DocumentReference", "DiagnosticReport"):
                result.attachments.extend(_attachments(resource))
            line = one_line(raw)
            if chunk is None or chunk.count >= chunk_resources or chunk.size >= chunk_bytes:
                if out is not None:
                    out.close()
                chunk = Chunk(out_prefix.with_name(f"{out_prefix.name}-c{len(result.chunks):03d}.ndjson"))
                result.chunks.append(chunk)
                out = open(chunk.path, "wb", buffering=1 << 20)  # a few writes a chunk, not hundreds
            line += b"\n"
            out.write(line)
            chunk.digest.update(line)
            chunk.count += 1
            chunk.size += len(line)
    except BundleFormatError as exc:
        raise PageBroken(str(exc)) from None
    finally:
        if out is not None:
            out.close()
    skeleton = reader.skeleton or {}
    if skeleton.get("resourceType") != "Bundle":
        what = skeleton.get("resourceType") or "something else"
        for c in result.chunks:
            c.path.unlink(missing_ok=True)
        raise SourceRejected(f"expected a Bundle page, got {what}")
    result.next_url = next_link(skeleton)
    total = skeleton.get("total")
    result.total = total if isinstance(total, int) else None
    return result


def one_line(raw: bytes) -> bytes:
    """An entry's JSON on one line, every byte of every value as served: only the line
    breaks between tokens go (JSON strings cannot hold a raw line break, so every one is
    outside a value). Never re-encoded: a parser would turn `1.00` into `1.0`."""
    if b"\n" not in raw and b"\r" not in raw:
        return raw
    return raw.replace(b"\r", b"").replace(b"\n", b"")


class PageBroken(Exception):
    """The page does not parse (often a truncated body): fetch it again."""


def _attachments(resource: dict) -> list[Attachment]:
    found = []
    holders = []
    if resource["resourceType"] == "DocumentReference":
        holders = [c.get("attachment") for c in resource.get("content") or () if isinstance(c, dict)]
    else:
        holders = list(resource.get("presentedForm") or ())
    owner = None
    for att in holders:
        if isinstance(att, dict) and isinstance(att.get("url"), str) and att["url"] and "data" not in att:
            if owner is None:
                owner = {k: resource[k] for k in OWNER_KEYS if k in resource}
            found.append(Attachment(att["url"], owner, att.get("contentType")))
    return found
