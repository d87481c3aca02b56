"""Completeness: what C-FIND announced vs what arrived vs the C-MOVE final counts; only
the missing instances are retried; what stays missing is named, instance by instance."""
from __future__ import annotations

import collections

import pytest
import requests

from connectors import connector_class
from connectors.base import PatientIdentifier, RawRecord, RecordQuery
from connectors.dicom.intake import FolderSink
from connectors.dicom.study import StudyIncomplete
from tests.dicom.conftest import GATEWAY_AET
from tests.dicom.dicom_peers import Modality, Orthanc
from tests.dicom.dicom_studies import make_study


def q(pid):
    return RecordQuery("a", "t", identifiers=(PatientIdentifier("mrn", pid),))


class FlakySink(FolderSink):
    """Fails to store the given instances the first `times` times (a full disk, say)."""

    def __init__(self, root, flaky, times=1):
        super().__init__(root)
        self.flaky, self.times = set(flaky), times
        self.calls = collections.Counter()

    def __call__(self, key, tmp_path, sha256, size, meta):
        sop = meta["sop_instance_uid"]
        self.calls[sop] += 1
        if sop in self.flaky and self.calls[sop] <= self.times:
            raise OSError(28, "No space left on device")
        return super().__call__(key, tmp_path, sha256, size, meta)


@pytest.mark.parametrize("method", ["move", "get"])
def test_only_missing_instances_are_retried(dicom, tmp_path, method):
    flaky = dicom.study.sop_uids[5:300:60]  # 5 instances across the 3 series
    sink = FlakySink(tmp_path / "out", flaky)
    with connector_class("dicom")("pacs", dicom.options(retrieve=method, sink=sink),
                                  tmp_path) as conn:
        records = list(conn.fetch(q("PAT-0001")))
    got = [r for r in records if isinstance(r, RawRecord) and r.kind == "dicom"
           and r.metadata["study_uid"] == dicom.study.study_uid]
    assert len(got) == 300
    assert {sop: n for sop, n in sink.calls.items() if n > 1} == {sop: 2 for sop in flaky}
    assert conn.outcomes[0].complete


def test_what_stays_missing_is_named(dicom, tmp_path):
    sink = FlakySink(tmp_path / "out", dicom.old_study.sop_uids[:2], times=99)
    with pytest.raises(StudyIncomplete) as info:
        with connector_class("dicom")("pacs", dicom.options(sink=sink, retries=1),
                                      tmp_path) as conn:
            records = []
            for r in conn.fetch(q("PAT-0001")):
                records.append(r)
    (outcome,) = info.value.outcomes
    assert outcome.study_uid == dicom.old_study.study_uid
    assert sorted(outcome.missing) == sorted(dicom.old_study.sop_uids[:2])
    assert sink.calls[dicom.old_study.sop_uids[0]] == 2  # tried, retried once, given up
    assert "2 missing" in str(info.value)
    # the complete study still came through whole, the incomplete one has no manifest
    manifests = [r.origin for r in records if getattr(r, "kind", "") == "dicom-study"]
    assert manifests == [dicom.study.study_uid]
    assert len([r for r in records if getattr(r, "kind", "") == "dicom"]) == 300 + 10


def test_instance_the_pacs_cannot_send_is_named(dicom, tmp_path):
    """A PACS whose copy of one instance is gone: its C-MOVE reports the failed
    sub-operation, the retry fails again, and the transfer names that instance."""
    study = make_study(tmp_path / "gen", 8, 1, patient_id="PAT-LOSS", rows=32, cols=32)
    with Orthanc(tmp_path / "orthanc", [Modality(GATEWAY_AET, dicom.gateway_port)],
                 dicomweb=False, extra={"MaximumStorageCacheSize": 0}) as pacs:
        pacs.upload(study.files)
        lost = study.sop_uids[3]
        (found,) = requests.post(f"{pacs.url}/tools/lookup", data=lost, timeout=10).json()
        info = requests.get(f"{pacs.url}/instances/{found['ID']}/attachments/dicom/info",
                            timeout=10).json()
        uuid = info["Uuid"]
        (pacs.workdir / "storage" / uuid[:2] / uuid[2:4] / uuid).unlink()
        opts = dicom.options(port=pacs.dicom_port)
        with pytest.raises(StudyIncomplete) as err:
            with connector_class("dicom")("pacs", opts, tmp_path / "wd") as conn:
                list(conn.fetch(q("PAT-LOSS")))
        (outcome,) = err.value.outcomes
        assert outcome.missing == [lost]
        assert outcome.move_failed >= 1
        assert outcome.received == 7
