"""A PACS that gives up or goes silent in the middle of a C-GET (a fault-injecting proxy
in front of a real Orthanc, tests/faults/dicom_proxy.py): the instances received before
the fault are kept, and only the missing ones are asked for again. 20 instances in one
series: the retrieve splits it by instance over two associations (UID lists)."""
from __future__ import annotations

from collections import Counter

import pytest

from connectors import connector_class
from connectors.base import PatientIdentifier, RawRecord, RecordQuery
from tests.dicom.conftest import GATEWAY_AET
from tests.dicom.dicom_peers import Modality, Orthanc
from tests.dicom.dicom_studies import make_study
from tests.faults.dicom_proxy import DicomFaultProxy


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    root = tmp_path_factory.mktemp("source-faults")
    study = make_study(root / "study", 20, 1, patient_id="PAT-FAULTS", rows=32, cols=32)
    with Orthanc(root / "orthanc", [Modality(GATEWAY_AET, 1)], dicomweb=False) as orthanc:
        orthanc.upload(study.files)
        yield orthanc, study


@pytest.mark.parametrize("fault", ["abort_after", "stall_after"])
def test_a_pacs_that_stops_mid_retrieve_is_asked_only_for_the_rest(pacs, tmp_path, fault):
    orthanc, study = pacs
    proxy = DicomFaultProxy(orthanc.dicom_port, **{fault: 4}).start()
    options = {"host": "127.0.0.1", "port": proxy.port, "ae_title": orthanc.aet,
               "calling_aet": GATEWAY_AET, "retrieve": "get", "stall_timeout": 1,
               "start_timeout": 5}
    query = RecordQuery("a", "t", identifiers=(PatientIdentifier("mrn", "PAT-FAULTS"),))
    try:
        with connector_class("dicom")("pacs", options, tmp_path) as conn:
            records = list(conn.fetch(query))
    finally:
        proxy.stop()
    got = [r.metadata["sop_instance_uid"] for r in records
           if isinstance(r, RawRecord) and r.kind == "dicom"]
    assert sorted(got) == sorted(study.sop_uids)
    assert (proxy.aborted, proxy.stalled) == ((1, 0) if fault == "abort_after" else (0, 1))
    # every instance handed over once: those sent before the fault were not asked again
    assert proxy.counts == Counter({uid: 1 for uid in study.sop_uids})
