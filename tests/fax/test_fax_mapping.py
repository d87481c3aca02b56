"""A matched fax becomes a valid R4 DocumentReference + Binary with what we know of it."""
from __future__ import annotations

import base64
import hashlib
import shutil
from datetime import datetime, timezone

import pytest

from connectors.base import RawRecord, hash_file
from mappings import MappingContext, MappingFailed, map_record


@pytest.fixture
def record(tmp_path, samples):
    path = tmp_path / "fax.pdf"
    shutil.copy(samples["text_layer"].path, path)
    sha, size = hash_file(path)
    return RawRecord(source="fax", kind="fax", media_type="application/pdf", path=path, sha256=sha, size=size,
                     origin="fax:20261122T120000Z-0123456789ab",
                     metadata={"transfer_id": "tr-1", "match": "qr", "fax_id": "20261122T120000Z-0123456789ab",
                               "pages": 3, "cover_pages_removed": [0], "fax_number": "+1 555 123 4567",
                               "received_at": datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc).isoformat(),
                               "original_media_type": "image/tiff"})


def test_document_reference(record):
    """One DocumentReference whose bytes the bundle turns into the Binary (as for PDFs)."""
    from fhir.resources.R4B.documentreference import DocumentReference

    mapped = map_record(record, MappingContext("urn:uuid:5d3f0c1e-0000-4000-8000-000000000001"))
    assert len(mapped) == 1 and mapped[0].carries_record_bytes
    doc = mapped[0].resource
    assert doc.__resource_type__ == "DocumentReference"
    att = doc.content[0].attachment
    assert att.contentType == "application/pdf" and att.size == record.size
    data = record.path.read_bytes()
    assert att.hash == hashlib.sha1(data).digest()  # the model holds base64Binary decoded
    assert base64.b64encode(hashlib.sha1(data).digest()).decode() in doc.model_dump_json()
    ni = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")
    assert [i.value for i in doc.identifier] == [record.sha256, f"ni:///sha-256;{ni}"]
    assert att.extension[0].valueInteger == 3
    assert doc.date.isoformat().startswith("2026-11-22T12:00:00")
    assert doc.contained[0].telecom[0].value == "+1 555 123 4567" and doc.author[0].reference == "#fax-sender"
    assert doc.subject.reference == "urn:uuid:5d3f0c1e-0000-4000-8000-000000000001"
    assert mapped[0].clinical_date.isoformat() == "2026-11-22"
    # R4 JSON round trip through the validating model
    again = DocumentReference.model_validate_json(doc.model_dump_json())
    assert again.id == doc.id
    # same record, same ids
    assert map_record(record, MappingContext("urn:uuid:x"))[0].resource.id == doc.id


def test_unknown_fax_number_and_bad_metadata(record):
    from dataclasses import replace

    plain = replace(record, metadata={**record.metadata, "fax_number": "call me; rm -rf"})
    doc = map_record(plain, MappingContext("urn:uuid:p"))[0].resource
    assert not doc.contained and not doc.author
    with pytest.raises(MappingFailed):
        map_record(replace(record, metadata={"pages": 1}), MappingContext("urn:uuid:p"))
    with pytest.raises(MappingFailed):
        map_record(replace(record, media_type="image/tiff"), MappingContext("urn:uuid:p"))
