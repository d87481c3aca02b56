"""A received fax (record kind "fax", a PDF) -> DocumentReference (FHIR R4, R4B model).

As for PDF records (mappings/pdf_document.py), the record's own bytes become the
Binary: `carries_record_bytes=True`, and bundle assembly streams them from the blob
store and points the attachment at that Binary. The DocumentReference says what the
fax is: content type, size, hashes, page count, when it was received, how it was
matched to its transfer, and the sending fax number when the fax server told us. Its
id is uuid5 of the record's sha256 (as for PDFs), so mapping a fax twice gives the same
resource.

Attachment.hash is SHA-1 as R4 defines it; the sha256 travels as an identifier
(``urn:records-gateway:sha256``, as for PDFs) and as an RFC 6920 ``ni`` URI; the page
count as an attachment extension.
"""
from __future__ import annotations

import base64
import hashlib
import re
import uuid
from datetime import datetime

from connectors.base import RawRecord
from connectors.data_classes import DATA_CLASS_SYSTEM

from . import Mapped, MappingContext, MappingFailed

PAGE_COUNT_URL = "urn:records-gateway:fhir:StructureDefinition:attachment-page-count"
MATCH_METHOD_URL = "urn:records-gateway:fhir:StructureDefinition:fax-match-method"
NI_SYSTEM = "urn:ietf:rfc:6920"
SHA256_SYSTEM = "urn:records-gateway:sha256"
_PHONE_RE = re.compile(r"^\+?[0-9][0-9 ()./-]{2,30}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _sha1_b64(record: RawRecord) -> str:
    digest = hashlib.sha1()
    with open(record.path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return base64.b64encode(digest.digest()).decode()


def map_fax(record: RawRecord, context: MappingContext) -> list[Mapped]:
    from fhir.resources.R4B.documentreference import DocumentReference

    meta = record.metadata or {}
    if record.media_type != "application/pdf":
        raise MappingFailed(f"fax record must be application/pdf, not {record.media_type!r}", record.origin)
    if not _SHA256_RE.match(record.sha256 or ""):
        raise MappingFailed("fax record has no valid sha256", record.origin)
    try:
        received = datetime.fromisoformat(meta["received_at"])
        pages = int(meta["pages"])
    except (KeyError, TypeError, ValueError):
        raise MappingFailed("fax record lacks received_at or pages metadata", record.origin) from None
    if received.tzinfo is None:
        raise MappingFailed("fax received_at must carry a time zone", record.origin)

    doc_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sha256:{record.sha256}"))
    data_class = meta.get("data_class") or context.default_data_class
    ni = "ni:///sha-256;" + base64.urlsafe_b64encode(bytes.fromhex(record.sha256)).decode().rstrip("=")
    fax_number = meta.get("fax_number")
    if fax_number and not _PHONE_RE.match(str(fax_number)):
        fax_number = None
    description = f"Received fax, {pages} page{'s' if pages != 1 else ''}"
    if fax_number:
        description += f", from {fax_number}"

    doc = {
        "resourceType": "DocumentReference",
        "id": doc_id,
        "status": "current",
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{doc_id}"},
        "identifier": [{"system": SHA256_SYSTEM, "value": record.sha256}, {"system": NI_SYSTEM, "value": ni}],
        "type": {"coding": [{"system": "http://loinc.org", "code": "55188-7", "display": "Patient data Document"}],
                 "text": "Records received by fax"},
        # a fax cannot say its class: its source's, so a receiver classes it as we did
        "category": [{"coding": [{"system": DATA_CLASS_SYSTEM, "code": str(data_class)}]}],
        "subject": {"reference": context.patient_reference},
        "date": received.isoformat(),
        "description": description,
        "content": [{
            "attachment": {
                "contentType": "application/pdf",
                "size": record.size,
                "hash": _sha1_b64(record),
                "title": f"fax {meta.get('fax_id', '')}".strip(),
                "creation": received.date().isoformat(),
                "extension": [{"url": PAGE_COUNT_URL, "valueInteger": pages}],
            },
            "format": {"system": "urn:oid:1.3.6.1.4.1.19376.1.2.3",
                       "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient",
                       "display": "mimeType Sufficient"},
        }],
    }
    if meta.get("match"):
        doc["extension"] = [{"url": MATCH_METHOD_URL, "valueCode": str(meta["match"])}]
    if fax_number:
        doc["contained"] = [{"resourceType": "Organization", "id": "fax-sender",
                             "name": f"Fax sender {fax_number}",
                             "telecom": [{"system": "fax", "value": str(fax_number)}]}]
        doc["author"] = [{"reference": "#fax-sender", "display": f"Fax {fax_number}"}]
    try:
        document = DocumentReference.model_validate(doc)
    except ValueError as exc:
        raise MappingFailed(f"fax DocumentReference does not validate: {exc}", record.origin) from None
    return [Mapped(document, data_class, received.date(), carries_record_bytes=True)]
