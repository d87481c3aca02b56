"""How a bundle's DocumentReference points at a document uploaded before it: the
attachment's url is `Binary/{id}`, its size the upload's, and an extension names the
sha256, so the signed bundle commits to the exact bytes the receiver holds."""
from __future__ import annotations

from typing import Iterator

SHA256_EXT = "urn:records-gateway:fhir:StructureDefinition:attachment-sha256"


def referenced(node, urls=None) -> Iterator[dict]:
    """Every attachment in a resource whose url is a `Binary/{id}` reference (or, given
    `urls`, one of those)."""
    if isinstance(node, dict):
        url = node.get("url")
        if isinstance(url, str) and (url in urls if urls is not None else url.startswith("Binary/")):
            yield node
        for value in node.values():
            if isinstance(value, (dict, list)):
                yield from referenced(value, urls)
    elif isinstance(node, list):
        for value in node:
            yield from referenced(value, urls)


def declared_sha256(attachment: dict) -> str | None:
    """The sha256 an attachment names for its uploaded bytes, if any."""
    for ext in attachment.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == SHA256_EXT and isinstance(ext.get("valueString"), str):
            return ext["valueString"]
    return None
