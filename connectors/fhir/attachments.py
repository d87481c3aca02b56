"""Fetching DocumentReference / DiagnosticReport attachments into files, streamed.

An attachment URL is usually `Binary/<id>` on the same server, sometimes an absolute
URL. Either way it must be under the server's base (checked by `FhirHttp.resolve`).
We ask for the attachment's own content type first; servers that answer with a FHIR
`Binary` resource instead get their base64 `data` decoded into the file in blocks.
"""
from __future__ import annotations

import base64
import binascii
import os
import tempfile
from pathlib import Path

import orjson

from connectors.base import SourceRejected

from .http import FHIR_JSON, FhirHttp

FHIR_TYPES = ("application/fhir+json", "application/json+fhir", "application/json")
DECODE_BLOCK = 4 << 20  # base64 characters per decode step (a multiple of 4)


def accept_for(content_type: str | None) -> str:
    ctype = (content_type or "").split(";")[0].strip()
    if ctype and "/" in ctype and "," not in ctype and ctype not in FHIR_TYPES:
        return f"{ctype}, {FHIR_JSON};q=0.5, */*;q=0.1"
    return f"*/*, {FHIR_JSON};q=0.5"


def fetch_attachment(http: FhirHttp, absolute_url: str, content_type: str | None,
                     workdir: Path, name: str, max_binary_json: int) -> tuple[Path, str]:
    """Download to `workdir/name`; returns (path, media type of the bytes)."""
    got = http.get(absolute_url, accept=accept_for(content_type), to_dir=workdir)
    answered = (got.headers.get("content-type") or "").split(";")[0].strip().lower()
    target = workdir / name
    try:
        if answered in FHIR_TYPES and (content_type or "").split(";")[0].strip() not in FHIR_TYPES:
            media_type = _decode_binary(got.path, target, max_binary_json)
        else:
            os.replace(got.path, target)
            media_type = answered or content_type or "application/octet-stream"
    finally:
        if got.path is not None and got.path.exists():
            got.path.unlink()
    return target, media_type


def _decode_binary(src: Path, target: Path, limit: int) -> str:
    """Decode a FHIR Binary resource's base64 `data` from `src` into `target`."""
    if src.stat().st_size > limit:
        raise SourceRejected(f"a Binary resource of {src.stat().st_size} bytes is over the "
                             f"{limit} byte limit for Binary-as-JSON answers")
    try:
        doc = orjson.loads(src.read_bytes())
    except orjson.JSONDecodeError:
        raise SourceRejected("attachment answered as FHIR JSON that does not parse") from None
    if not isinstance(doc, dict) or doc.get("resourceType") != "Binary":
        kind = doc.get("resourceType") if isinstance(doc, dict) else "JSON"
        raise SourceRejected(f"attachment answered with {kind}, not Binary")
    data = doc.pop("data", "") or ""
    if not isinstance(data, str):
        raise SourceRejected("Binary.data is not a string")
    media_type = doc.get("contentType") or "application/octet-stream"
    del doc
    if any(c in data[:4096] for c in " \r\n\t"):
        data = "".join(data.split())
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".bin-")
    try:
        with os.fdopen(fd, "wb") as out:
            for start in range(0, len(data), DECODE_BLOCK):
                out.write(base64.b64decode(data[start:start + DECODE_BLOCK], validate=True))
        os.replace(tmp, target)
    except (ValueError, binascii.Error):
        Path(tmp).unlink(missing_ok=True)
        raise SourceRejected("Binary.data is not valid base64") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return media_type
