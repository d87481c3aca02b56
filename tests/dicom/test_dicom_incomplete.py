"""Studies not taken, and studies the PACS cannot send in full: said, never silent.

- A study of the same PatientID whose birth date or family name differs from the
  authorization's is skipped with a SkippedRecord naming the study and which one differed.
- A study the PACS cannot send in full (an Orthanc whose copy of one instance is gone) is
  retried while pulls fetch something new; after `incomplete_attempts` pulls in a row that
  fetch nothing, the source fails (terminal) naming the missing instance, or, with
  `allow_incomplete`, the rest is delivered with a SkippedRecord per missing instance and a
  manifest marked incomplete. Each pull is a new connector (a worker restart): the count
  lives in the workdir.
"""
from __future__ import annotations

import json
import uuid
from datetime import date

import pytest
import requests

from connectors import connector_class
from connectors.base import PatientIdentifier, RawRecord, RecordQuery, SkippedRecord
from connectors.dicom.attempts import FILE_NAME
from connectors.dicom.intake import FolderSink
from connectors.dicom.study import StudyIncomplete, StudyNotSent
from tests.dicom.conftest import GATEWAY_AET
from tests.dicom.dicom_peers import Modality, Orthanc
from tests.dicom.dicom_studies import make_study
from tests.helpers import ISSUER, RECEIVER_ORG, SENDER_ORG

LOSS = "PAT-LOSS-11"
MRN = "urn:oid:2.16.840.1.113883.19.5"
TERMINAL = {"completed", "failed", "cancelled", "dead_letter"}


def q(pid, **kw):
    return RecordQuery("a", "t", identifiers=(PatientIdentifier("mrn", pid),), **kw)


# -- demographics ----------------------------------------------------------------------------
@pytest.mark.parametrize("differs, query", [
    ("birth date", dict(birth_date=date(1971, 2, 2), family_name="Doe")),
    ("family name", dict(birth_date=date(1970, 1, 1), family_name="Smith")),
])
def test_study_of_other_demographics_is_skipped_and_said(dicom, tmp_path, differs, query):
    with connector_class("dicom")("pacs", dicom.options(sink=FolderSink(tmp_path / "out")),
                                  tmp_path / "wd") as conn:
        records = list(conn.fetch(q("PAT-0001", **query)))
    assert not [r for r in records if isinstance(r, RawRecord)]
    skipped = sorted((r.origin, r.reason) for r in records if isinstance(r, SkippedRecord))
    reason = (f"another patient's demographics: the study's {differs} differs from the "
              "authorization's (PatientID matches)")
    assert skipped == sorted([(dicom.study.study_uid, reason), (dicom.old_study.study_uid, reason)])
    # never the values themselves
    assert not any(v in r for _, r in skipped for v in ("1970", "1971", "Doe", "DOE", "Smith"))


def test_same_family_name_written_differently_is_taken(dicom, tmp_path):
    with connector_class("dicom")("pacs", dicom.options(sink=FolderSink(tmp_path / "out")),
                                  tmp_path / "wd") as conn:
        plans = conn.find_studies(q("PAT-0001", birth_date=date(1970, 1, 1), family_name="DOE "))
    assert {p.uid for p in plans} == {dicom.study.study_uid, dicom.old_study.study_uid}
    assert conn.skipped == {}


# -- a study the PACS cannot send in full -----------------------------------------------------
@pytest.fixture(scope="module")
def broken(dicom, tmp_path_factory):
    """An Orthanc holding an 8-instance study whose one instance's file is gone."""
    root = tmp_path_factory.mktemp("broken")
    study = make_study(root / "gen", 8, 2, patient_id=LOSS, rows=32, cols=32)
    with Orthanc(root / "orthanc", [Modality(GATEWAY_AET, dicom.gateway_port)],
                 dicomweb=False, aet="BROKEN", extra={"MaximumStorageCacheSize": 0}) as pacs:
        pacs.upload(study.files)
        lost = study.sop_uids[3]
        (found,) = requests.post(f"{pacs.url}/tools/lookup", data=lost, timeout=10).json()
        info = requests.get(f"{pacs.url}/instances/{found['ID']}/attachments/dicom/info",
                            timeout=10).json()
        uuid = info["Uuid"]
        (pacs.workdir / "storage" / uuid[:2] / uuid[2:4] / uuid).unlink()
        yield pacs, study, lost


def pull(dicom, pacs, tmp_path, done: set, **extra):
    """One pull by a fresh connector (as after a worker restart), resumed like the gateway
    resumes one: with the origins of what earlier pulls produced. Returns (records, error)."""
    opts = dicom.options(port=pacs.dicom_port, ae_title=pacs.aet, retries=1,
                         incomplete_attempts=2, sink=FolderSink(tmp_path / "out"), **extra)
    records, error = [], None
    try:
        with connector_class("dicom")("pacs", opts, tmp_path / "wd") as conn:
            for r in conn.fetch(q(LOSS, already_fetched=frozenset(done))):
                records.append(r)
                done.add(r.origin)
    except Exception as exc:  # noqa: BLE001 - the test looks at it
        error = exc
    return records, error


def pulls(dicom, pacs, tmp_path, **extra):
    """Pull until the source settles (no error or a terminal one); (records, error) each."""
    done: set = set()
    out = []
    for _ in range(8):
        records, error = pull(dicom, pacs, tmp_path, done, **extra)
        out.append((records, error))
        if error is None or not getattr(error, "transient", False):
            return out
        assert isinstance(error, StudyIncomplete), error
    raise AssertionError("retried without end")


def instances(results) -> set[str]:
    return {r.metadata["sop_instance_uid"] for records, _ in results for r in records
            if getattr(r, "kind", "") == "dicom"}


def test_incomplete_study_fails_after_pulls_that_fetch_nothing_new(dicom, broken, tmp_path):
    pacs, study, lost = broken
    results = pulls(dicom, pacs, tmp_path)
    assert instances(results) == set(study.sop_uids) - {lost}
    # the pulls that fetched something, then two that fetched nothing: the second fails
    assert [records for records, _ in results[-2:]] == [[], []]
    assert all(records for records, _ in results[:-2])
    error = results[-1][1]
    assert isinstance(error, StudyNotSent) and not error.transient
    message = str(error)
    assert f"study {study.study_uid}: 1 instance(s) not sent by the PACS" in message
    assert f"SOP Instance UIDs {lost}" in message
    assert "allow_incomplete = true" in message and "2 pull(s) in a row" in message


def test_incomplete_study_delivered_with_what_is_missing_named(dicom, broken, tmp_path):
    pacs, study, lost = broken
    results = pulls(dicom, pacs, tmp_path, allow_incomplete=True)
    # the pulls that fetched something, one that fetched nothing, then the second settles
    assert results[-1][1] is None and results[-2][0] == []
    assert not [r for r in results[-1][0] if isinstance(r, RawRecord) and r.kind == "dicom"]
    assert instances(results) == set(study.sop_uids) - {lost}
    records = results[-1][0]
    series = next(s for s, sops in study.series.items() if lost in sops)
    assert [(r.origin, r.reason) for r in records if isinstance(r, SkippedRecord)] == [
        (f"{study.study_uid}/{series}/{lost}",
         "not sent by the PACS (2 pull(s) in a row fetched nothing new)")]
    (manifest,) = [r for r in records if getattr(r, "kind", "") == "dicom-study"]
    assert manifest.origin == study.study_uid and manifest.metadata["complete"] is False
    doc = json.loads(manifest.path.read_bytes())
    assert doc["complete"] is False and doc["missing"] == [lost]
    listed = {uid for s in doc["series"] for uid in s["instances"]}
    assert listed == set(study.sop_uids) - {lost}
    assert not (tmp_path / "wd" / FILE_NAME).exists()
    # a later pull has nothing more to do
    done = {r.origin for records, _ in results for r in records}
    records, error = pull(dicom, pacs, tmp_path, done, allow_incomplete=True)
    assert records == [] and error is None


# -- through the gateway ---------------------------------------------------------------------
@pytest.fixture
def sender_config(sender_config, dicom, broken):
    """The test sender with the broken PACS as two sources: strict, and allow_incomplete."""
    pacs = broken[0]
    for name, extra in (("strict", {}), ("lenient", {"allow_incomplete": True})):
        sender_config["sources"][name] = {
            "kind": "dicom", "organization": SENDER_ORG, "data_class": "imaging",
            "endpoint": f"dicom://{pacs.aet}@127.0.0.1:{pacs.dicom_port}",
            "options": dicom.options(port=pacs.dicom_port, ae_title=pacs.aet, retries=1,
                                     incomplete_attempts=2, **extra)}
    return sender_config


@pytest.fixture
def stack(app, client, operator, processes, sender_config, receiver_config, tmp_path):
    from tests.delivery.delivery_fixtures import _stack_class

    return _stack_class()(app, client, operator, processes, sender_config, receiver_config,
                          tmp_path)


def test_gateway_fails_the_source_or_delivers_the_rest_named(stack, sign, broken, receiver_url):
    from gateway.trust.authorizations import example_claims

    pacs, study, lost = broken
    stack.start_receiver()
    ids = {}
    for source in ("strict", "lenient"):
        claims = example_claims(
            ISSUER, f"auth-{uuid.uuid4().hex[:12]}",
            patient={"name": {"family": "Doe", "given": ["Jane"]}, "birthDate": "1970-01-01",
                     "identifiers": [{"system": MRN, "value": LOSS}]},
            disclosers=[{"id": SENDER_ORG, "name": "Test Hospital", "endpoints": [
                {"type": "dicom", "address": f"dicom://{pacs.aet}@127.0.0.1:{pacs.dicom_port}"}]}],
            recipient={"id": RECEIVER_ORG, "name": "Recipient",
                       "endpoint": {"type": "gateway", "address": receiver_url}})
        auth_id = stack.authorize(claims, sign)
        r = stack.client.post("/transfers", json={"authorization": auth_id, "sources": [source],
                                                  "recipient": "center"}, headers=stack.operator)
        assert r.status_code == 202, r.get_json()
        ids[source] = r.get_json()["id"]
    strict = stack.wait_state(ids["strict"], TERMINAL, timeout=240)
    assert strict["state"] == "failed"
    assert f"1 instance(s) not sent by the PACS (SOP Instance UIDs {lost})" in strict["reason"]
    assert "allow_incomplete = true on source 'strict'" in strict["reason"]
    lenient = stack.wait_state(ids["lenient"], TERMINAL, timeout=240)
    assert lenient["state"] == "completed", lenient["reason"]
    assert lenient["receipt"]["dicomInstances"] == {study.study_uid: 7}
    report = lenient["completeness"]["lenient"]
    assert report["refused"] == [{
        "reason": "not sent by the PACS (2 pull(s) in a row fetched nothing new)", "count": 1}]
    assert (report["found"], report["delivered"], report["complete"]) == (9, 8, False)


@pytest.mark.parametrize("value", [0, "three", None])
def test_incomplete_attempts_must_be_a_number_of_pulls(dicom, tmp_path, value):
    from connectors.base import SourceRejected

    with pytest.raises(SourceRejected, match="incomplete_attempts must be a whole number"):
        connector_class("dicom")("pacs", dicom.options(incomplete_attempts=value), tmp_path)
