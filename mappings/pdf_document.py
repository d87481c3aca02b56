"""A PDF record -> DocumentReference (its bytes become the Binary in the bundle)."""
from __future__ import annotations

import base64
import hashlib
import logging
import uuid
from datetime import date, datetime, timezone

from fhir.resources.R4B.documentreference import DocumentReference
from pypdf import PdfReader
from pypdf.errors import PdfReadError

from connectors.base import RawRecord
from connectors.data_classes import DATA_CLASS_SYSTEM, DOCUMENT_TYPES

from . import Mapped, MappingContext, MappingFailed

logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings can quote content

LOINC = "http://loinc.org"
DOC_TYPES = DOCUMENT_TYPES  # data class -> LOINC document type, from the one table
DEFAULT_TYPE = ("55188-7", "Patient data Document")


def _pdf_facts(record: RawRecord) -> tuple[int, date | None]:
    try:
        reader = PdfReader(record.path)
        if reader.is_encrypted:
            raise MappingFailed("PDF is encrypted; ask the provider for an unprotected copy",
                                record.origin)
        pages = len(reader.pages)
        created = reader.metadata.creation_date if reader.metadata else None
    except MappingFailed:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise MappingFailed(f"PDF cannot be read ({exc.__class__.__name__})", record.origin) from None
    if pages == 0:
        raise MappingFailed("PDF has no pages", record.origin)
    return pages, created.date() if created else None


def map_pdf(record: RawRecord, context: MappingContext) -> list[Mapped]:
    pages, created = _pdf_facts(record)
    sha1 = hashlib.sha1()
    with open(record.path, "rb") as fh:
        while block := fh.read(1 << 20):
            sha1.update(block)
    data_class = record.metadata.get("data_class", context.default_data_class)
    code, display = DOC_TYPES.get(data_class, DEFAULT_TYPE)
    received = datetime.fromtimestamp(record.metadata.get("mtime", record.fetched_at.timestamp()),
                                      timezone.utc)
    doc_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sha256:{record.sha256}"))
    clinical = created or received.date()
    doc = DocumentReference.model_validate({
        "resourceType": "DocumentReference",
        "id": doc_id,
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{doc_id}"},
        "identifier": [{"system": "urn:records-gateway:sha256", "value": record.sha256}],
        "status": "current",
        "type": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        # a scan cannot say its class: the source's, so a receiver classes it as we did
        "category": [{"coding": [{"system": DATA_CLASS_SYSTEM, "code": data_class}]}],
        "subject": {"reference": context.patient_reference},
        "date": received.isoformat(),
        "context": {"period": {"start": clinical.isoformat()}},  # the date it is released by
        "description": f"{pages}-page PDF from {record.source}",
        "content": [{"attachment": {
            "contentType": "application/pdf",
            "size": record.size,
            "hash": base64.b64encode(sha1.digest()).decode(),
            "title": record.origin[:200],
            "creation": clinical.isoformat(),
        }}],
    })
    return [Mapped(resource=doc, data_class=data_class, clinical_date=clinical,
                   carries_record_bytes=True)]
