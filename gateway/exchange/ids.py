"""Ids both sides derive from the transfer, and the hash of each bundle entry.

Every id is a uuid5 of the transfer id (and the content's sha256 for uploads), so a
bundle assembled twice has the same bytes, a repeated upload overwrites the same
Binary, and the receiver's receipt can name entries the sender can check.
"""
from __future__ import annotations

import hashlib
import uuid

from .jsontext import dumps

NS = uuid.UUID("6f1c1f4e-8f0b-4d55-9a53-2b8e5c1d7a10")
BINARY_NS = uuid.UUID("9b2d7c55-1f3e-4a61-8c0e-5d4b3a291f07")
MHD = "https://profiles.ihe.net/ITI/MHD"
GROUP_SYSTEM = "urn:records-gateway:submission-group"
PART_EXT = "urn:records-gateway:bundle-part"
# the Consent in a bundle names its authorization (the JWS jti): a center finds its request by it
AUTHORIZATION_SYSTEM = "urn:records-gateway:authorization"


def urn(transfer_id: str, *parts: str) -> str:
    return "urn:uuid:" + str(uuid.uuid5(NS, ":".join((transfer_id, *parts))))


def patient_urn(transfer_id: str) -> str:
    return urn(transfer_id, "patient")


def bundle_id(transfer_id: str, part: int = 1, parts: int = 1) -> str:
    if parts == 1:
        return urn(transfer_id, "bundle")[len("urn:uuid:"):]
    return urn(transfer_id, "bundle", str(part), str(parts))[len("urn:uuid:"):]


def canonical(resource: dict) -> bytes:
    """Compact UTF-8 JSON, keys sorted, each number as its text (see jsontext.py)."""
    return dumps(resource, sort_keys=True)


def entry_hash(resource: dict) -> str:
    """sha256 of a resource's canonical JSON: both sides compute it, from what each parsed
    with `jsontext.loads` (so a decimal's text is part of what the receipt names)."""
    return hashlib.sha256(canonical(resource)).hexdigest()


def binary_id(transfer_id: str, sha256: str) -> str:
    """The id of a document uploaded before its bundle: one id names one content."""
    return str(uuid.uuid5(BINARY_NS, f"{transfer_id}:{sha256}"))


def etag(sha256: str) -> str:
    """The ETag a receiving gateway answers for an upload: the sha256 of what it stored."""
    return f'"sha256-{sha256}"'
