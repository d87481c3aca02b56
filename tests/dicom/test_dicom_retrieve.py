"""Find and retrieve a patient's studies from a real PACS (Orthanc), by C-MOVE into our
Storage SCP, by C-GET and by WADO-RS: complete, byte-identical data sets, hashes, the
study manifest, resume, and the authorization's narrowing."""
from __future__ import annotations

import hashlib
import struct
from datetime import date
from pathlib import Path

import pytest

from connectors import connector_class
from connectors.base import PatientIdentifier, RawRecord, RecordQuery, RejectedRecord

MRN = "urn:oid:1.2.3.4.5.mrn"


def query(pid="PAT-0001", **kw) -> RecordQuery:
    return RecordQuery("auth-1", "transfer-1", identifiers=(PatientIdentifier(MRN, pid),), **kw)


def dataset_bytes(path: Path) -> bytes:
    """The data set after the file meta group (what a PACS should send unchanged)."""
    data = Path(path).read_bytes()
    assert data[128:132] == b"DICM"
    (meta_len,) = struct.unpack_from("<I", data, 132 + 8)
    return data[132 + 12 + meta_len:]


def run(dicom, tmp_path, q=None, kind="dicom", **opts):
    with connector_class(kind)("pacs", dicom.options(**opts), tmp_path) as conn:
        records = list(conn.fetch(q or query()))
    return conn, records


def instances(records):
    return [r for r in records if isinstance(r, RawRecord) and r.kind == "dicom"]


def check_complete(dicom, records, study, sources=None):
    got = instances(records)
    assert sorted(r.metadata["sop_instance_uid"] for r in got) == sorted(study.sop_uids)
    by_sop = {r.metadata["sop_instance_uid"]: r for r in got}
    sources = sources or dict(zip(study.sop_uids_in_file_order(), study.files))
    for sop, src in list(sources.items())[:40]:
        rec = by_sop[sop]
        body = rec.path.read_bytes()
        assert hashlib.sha256(body).hexdigest() == rec.sha256 and len(body) == rec.size
        assert body[:128] == bytes(128)
        assert dataset_bytes(rec.path) == dataset_bytes(src)
    manifests = [r for r in records if isinstance(r, RawRecord) and r.kind == "dicom-study"]
    assert [m.origin for m in manifests] == [study.study_uid]
    assert manifests[0].metadata["complete"] is True


@pytest.mark.parametrize("method", ["move", "get", "wado"])
def test_retrieve_study_complete_and_identical(dicom, tmp_path, method):
    opts = {"retrieve": method}
    if method == "wado":
        opts["dicomweb_url"] = dicom.orthanc.dicomweb_url
    progress = []
    with connector_class("dicom")("pacs", dicom.options(**opts), tmp_path,
                                  progress.append) as conn:
        conn.check()
        records = list(conn.fetch(query(date_from=date(2024, 1, 1))))
    check_complete(dicom, records, dicom.study)
    assert not [r for r in records if isinstance(r, RejectedRecord)]
    outcome = conn.outcomes[0]
    assert outcome.complete and outcome.received == 300 and outcome.expected == 300
    assert progress and progress[-1].done == 300 and progress[-1].total == 300
    assert {r.metadata["via"] for r in instances(records)} == {
        {"move": "c-move", "get": "c-get", "wado": "wado-rs"}[method]}
    # spool left empty: every received file was either stored or removed
    assert not list((tmp_path / "spool").iterdir())


def test_find_narrows_by_patient_and_dates(dicom, tmp_path):
    conn = connector_class("dicom")("pacs", dicom.options(), tmp_path)
    with conn:
        all_studies = {p.uid for p in conn.find_studies(query())}
        recent = {p.uid for p in conn.find_studies(query(date_from=date(2020, 1, 1)))}
        old = {p.uid for p in conn.find_studies(query(date_to=date(2020, 1, 1)))}
        nobody = conn.find_studies(query("PAT-NOBODY"))
    assert all_studies == {dicom.study.study_uid, dicom.old_study.study_uid}
    assert recent == {dicom.study.study_uid}
    assert old == {dicom.old_study.study_uid}
    assert nobody == []


def test_modalities_and_data_classes_narrow(dicom, tmp_path):
    _, records = run(dicom, tmp_path, modalities=["MR"])
    assert {r.metadata["study_uid"] for r in instances(records)} == {dicom.old_study.study_uid}
    _, records = run(dicom, tmp_path / "labs", q=query(data_classes=frozenset({"labs"})))
    assert records == []


def test_wildcard_patient_ids_are_never_sent(dicom, tmp_path):
    from connectors.base import SourceRejected

    with pytest.raises(SourceRejected, match="PatientID"):
        run(dicom, tmp_path, q=query("PAT-*"))


def test_resume_fetches_only_what_is_missing(dicom, tmp_path):
    """A pull that stopped half-way: the next one moves only the other half."""
    q = query(date_from=date(2024, 1, 1))
    _, first = run(dicom, tmp_path / "first", q=q)
    done = [r.origin for r in instances(first)]
    half = frozenset(done[::2])
    resumed = RecordQuery(q.authorization_id, q.transfer_id, q.identifiers,
                          date_from=q.date_from, already_fetched=half)
    conn, second = run(dicom, tmp_path / "second", q=resumed)
    got = {r.origin for r in instances(second)}
    assert got == set(done) - half
    manifest = [r for r in second if r.kind == "dicom-study"]
    assert manifest and conn.outcomes[0].complete
    import json

    doc = json.loads(manifest[0].path.read_text())
    assert sum(len(s["instances"]) for s in doc["series"]) == 300


def test_multiframe_instance_streams(dicom, tmp_path):
    for method, extra in (("get", {}), ("wado", {"dicomweb_url": dicom.orthanc.dicomweb_url})):
        _, records = run(dicom, tmp_path / method, q=query("PAT-0002"), retrieve=method, **extra)
        (rec,) = instances(records)
        src = dicom.multiframe.files[0]
        assert rec.size >= src.stat().st_size - 1024
        assert dataset_bytes(rec.path) == dataset_bytes(src)


def test_mapping_of_retrieved_study(dicom, tmp_path):
    from mappings import MappingContext, map_record

    _, records = run(dicom, tmp_path, q=query(date_to=date(2020, 1, 1)))
    (manifest,) = [r for r in records if r.kind == "dicom-study"]
    mapped = map_record(manifest, MappingContext("urn:uuid:patient-1"))
    study, doc = (m.resource for m in mapped)
    assert study.identifier[0].value == f"urn:oid:{dicom.old_study.study_uid}"
    assert study.numberOfInstances == 12 and study.numberOfSeries == 1
    assert study.modality[0].code == "MR" and str(study.started) == "2019-06-01"
    assert study.series[0].bodySite.code == "51185008"
    assert doc.context.related[0].identifier.value == study.identifier[0].value
    assert all(map_record(r, MappingContext("urn:uuid:p")) == [] for r in instances(records))


def _data_set(body: bytes) -> bytes:
    (meta_len,) = struct.unpack_from("<I", body, 132 + 8)
    return body[132 + 12 + meta_len:]


@pytest.mark.parametrize("method", ["move", "get", "wado"])
def test_retrieve_streams_into_the_encrypted_blob_store(dicom, tmp_path, method):
    """The gateway's blob store as a streaming sink: no plaintext spool file; each blob
    decrypts to the instance, whose sha256 is the record's."""
    import base64

    from gateway.storage.blobstore import BlobStore, new_master_key
    from gateway.engine.dicom_sink import BlobStoreSink

    store = BlobStore(tmp_path / "blobs", base64.b64decode(new_master_key()))
    opts = {"retrieve": method, "sink": BlobStoreSink(store)}
    if method == "wado":
        opts["dicomweb_url"] = dicom.orthanc.dicomweb_url
    _, records = run(dicom, tmp_path / "wd", q=query(date_to=date(2020, 1, 1)), **opts)
    got = instances(records)
    sources = dict(zip(dicom.old_study.sop_uids_in_file_order(), dicom.old_study.files))
    assert sorted(r.metadata["sop_instance_uid"] for r in got) == sorted(sources)
    for rec in got:
        plain = store.read_bytes(rec.metadata["location"])
        assert hashlib.sha256(plain).hexdigest() == rec.sha256 and len(plain) == rec.size
        assert plain[:128] == bytes(128)
        assert _data_set(plain) == dataset_bytes(sources[rec.metadata["sop_instance_uid"]])
    spool = tmp_path / "wd" / "spool"
    assert not spool.exists() or not list(spool.iterdir())


def test_an_incremental_pull_asks_only_for_studies_from_the_last_pull_on(dicom, tmp_path):
    """A scheduled pull of an open case (`since` = when the last complete pull started):
    C-FIND for studies dated from then on; every record carries the cursor for the next."""
    from datetime import datetime, timezone

    _, first = run(dicom, tmp_path / "first", modalities=["MR"])
    assert instances(first)
    cursors = {r.metadata["pull_started"] for r in first if isinstance(r, RawRecord)}
    assert len(cursors) == 1 and datetime.fromisoformat(cursors.pop()).tzinfo is not None
    _, later = run(dicom, tmp_path / "later", q=query(since=datetime(2020, 1, 1, tzinfo=timezone.utc)),
                   modalities=["MR"])
    assert later == []  # the MR study is older than the last pull
    _, earlier = run(dicom, tmp_path / "earlier", q=query(since=datetime(1990, 1, 1, tzinfo=timezone.utc)),
                     modalities=["MR"])
    assert {r.origin for r in instances(earlier)} == {r.origin for r in instances(first)}
