"""dcmtk's dcmqrscp as a second, different PACS: it announces no instance counts, so the
connector lists instances to know what to expect."""
from __future__ import annotations

import pytest

from connectors import connector_class
from connectors.base import PatientIdentifier, RawRecord, RecordQuery

from tests.dicom.test_dicom_retrieve import dataset_bytes


@pytest.mark.parametrize("method", ["move", "get"])
def test_retrieve_from_dcmqrscp(dicom, tmp_path, method):
    opts = dicom.options(port=dicom.dcmqrscp.port, ae_title=dicom.dcmqrscp.aet, retrieve=method)
    q = RecordQuery("a", "t", identifiers=(PatientIdentifier("mrn", "PAT-0003"),))
    with connector_class("dicom")("qr", opts, tmp_path) as conn:
        conn.check()
        records = list(conn.fetch(q))
    got = {r.metadata["sop_instance_uid"]: r for r in records
           if isinstance(r, RawRecord) and r.kind == "dicom"}
    assert sorted(got) == sorted(dicom.small.sop_uids)
    (outcome,) = conn.outcomes
    assert outcome.complete and outcome.received == 30
    sources = dict(zip(dicom.small.sop_uids_in_file_order(), dicom.small.files))
    for sop, rec in got.items():
        assert dataset_bytes(rec.path) == dataset_bytes(sources[sop])
    assert [r.kind for r in records].count("dicom-study") == 1
