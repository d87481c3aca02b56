"""References a pull leaves dangling: found in the records' raw JSON, judged, and read.

`$everything` or the per-type searches may leave out resources that others reference (a
server that omits Devices, Practitioners, Medications...). The connector reads each such
resource of the same server (`GET [base]/Type/id`) within the authorization's scope, and
reports each one it cannot get as a `Gap(kind="unresolved")`. Only relative references
and absolute ones under the server base are read; ids are checked before they go in a URL.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import orjson

from connectors.base import SourceRejected

from .http import FHIR_JSON, HttpRejected, TooLarge
from .plan import NEVER_FOLLOWED

_REF = re.compile(rb'"reference"\s*:\s*"([^"\\]{1,1000})"')
_LOCAL = re.compile(r"^([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")
MAX_SHOWN = 300  # characters of a reference kept for the report


@functools.lru_cache(maxsize=1 << 14)  # a page names the patient, its encounters... thousands of times
def normalize(value: str, bases: tuple[str, ...]) -> str | None:
    """"Type/id" for a reference to a resource of the server, the value itself (shortened)
    for one that cannot be read, None for those that need no reading: contained (`#id`),
    `urn:` and conditional (`Type?query`) references."""
    if value.startswith(("#", "urn:")) or "?" in value:
        return None
    if "://" in value:
        for base in bases:
            if value.startswith(base + "/"):
                value = value[len(base) + 1:]
                break
        else:
            return value[:MAX_SHOWN] if value.startswith(("http://", "https://")) else None
    m = _LOCAL.match(value)
    if m and m.group(2).strip("."):
        return f"{m.group(1)}/{m.group(2)}"
    return value[:MAX_SHOWN]


def scan(data: bytes, bases: tuple[str, ...]) -> set[str]:
    """The normalized references in raw FHIR JSON (one resource or NDJSON lines)."""
    out = set()
    for raw in set(_REF.findall(data)):  # each distinct reference once
        ref = normalize(raw.decode("utf-8", "replace"), bases)
        if ref is not None:
            out.add(ref)
    return out


def scan_file(path: Path, bases: tuple[str, ...]) -> set[str]:
    return scan(path.read_bytes(), bases)


def is_local(ref: str) -> bool:
    return _LOCAL.match(ref) is not None


def judge(ref: str, patient_id: str, scope: frozenset[str] | None) -> str | None:
    """"read" for a reference to read, None for one to leave alone (the patient, a type
    outside the authorization's scope), else why it stays unresolved."""
    if not is_local(ref):
        if ref.startswith(("http://", "https://")):
            return "outside the server base: not read"
        return "not a reference to a resource of the server: not read"
    rtype, _, rid = ref.partition("/")
    if rtype == "Patient":
        return None if rid == patient_id else "another patient: not read (the authorization covers one patient)"
    if rtype in NEVER_FOLLOWED or (scope is not None and rtype not in scope):
        return None
    return "read"


def read(http, base_url: str, ref: str, patient_id: str) -> tuple[bytes, dict] | str:
    """(NDJSON entry line, resource) for `ref` read from the server, or why it cannot be had."""
    rtype, _, rid = ref.partition("/")
    try:
        got = http.get(ref, accept=FHIR_JSON)
    except HttpRejected as exc:
        word = {404: "not found", 410: "deleted", 401: "refused", 403: "refused"}.get(exc.status, "refused")
        return f"the server answered HTTP {exc.status} to its read ({word})"
    except TooLarge:
        return "larger than the download limit (max_download)"
    except SourceRejected as exc:
        if "redirect" in str(exc):
            return "the server answered its read with a redirect (not followed)"
        raise
    raw = got.content.strip()
    try:
        resource = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "the server's answer to its read is not JSON"
    if not isinstance(resource, dict) or resource.get("resourceType") != rtype or resource.get("id") != rid:
        return "the server answered its read with another resource"
    others = {r for r in scan(raw, (base_url,)) if r.startswith("Patient/") and r != f"Patient/{patient_id}"}
    if others:
        return "refers to another patient: not taken"
    # raw newlines are JSON whitespace here (never inside strings): the text stays as served
    line = (b'{"fullUrl":' + orjson.dumps(f"{base_url}/{ref}") + b',"resource":'
            + raw.replace(b"\r", b" ").replace(b"\n", b" ") + b"}")
    return line, resource
