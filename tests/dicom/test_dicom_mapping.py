"""Golden-file test of the ImagingStudy mapping: a study manifest in tests/dicom/data and
the FHIR R4 JSON expected from it beside it (invalid UIDs in the manifest are dropped)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.base import RawRecord
from mappings import MappingContext, MappingFailed, map_record

DATA = Path(__file__).parent / "data"


def record(path: Path) -> RawRecord:
    return RawRecord("st-marys-pacs", "dicom-study", "application/json", path, "x", 1,
                     "1.2.826.0.1.3680043.8.498.1001")


def test_study_manifest_golden():
    mapped = map_record(record(DATA / "study-manifest.json"), MappingContext("urn:uuid:patient-1"))
    got = [json.loads(m.resource.model_dump_json()) | {
        "_data_class": m.data_class, "_clinical_date": str(m.clinical_date)} for m in mapped]
    expected = json.loads((DATA / "study-manifest.expected.json").read_text())
    assert got == expected


@pytest.mark.parametrize("body", [b"", b"{}", b'{"study": {"uid": "../x"}, "series": []}',
                                  b"\xff\xfe not json"])
def test_broken_manifest_is_a_mapping_error(tmp_path, body):
    path = tmp_path / "m.json"
    path.write_bytes(body)
    with pytest.raises(MappingFailed):
        map_record(record(path), MappingContext("urn:uuid:p"))
