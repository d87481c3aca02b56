"""Who may send to the Storage SCP, and what it takes (connectors/dicom/scp.py).

- Only a configured source associates, and only from its own address: anyone else gets
  an A-ASSOCIATE-RJ "calling AE title not recognized" (PS3.8 9.3.4).
- During a real C-MOVE from dcmqrscp, C-STOREs injected from outside it are refused with
  one answer whatever the prober got right (peer, Move Originator Message ID, UID), and
  the transfer holds exactly the PACS's instances.
- A second copy of an instance: the same bytes are answered as stored and kept once;
  other bytes are refused (0x0111) and reported, the first copy kept.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

import connectors.dicom.forward  # noqa: F401  (turns on STORE_SEND_CHUNKED_DATASET)
from connectors import connector_class
from connectors.base import RawRecord, RejectedRecord
from connectors.dicom.intake import FolderSink, Retrieval
from connectors.dicom.scp import StorageSCP, source_peer
from connectors.dicom.study import rejected_record
from gateway.engine.dicom_sink import BlobStoreSink
from gateway.storage.blobstore import BlobStore, new_master_key
from tests.dicom.dicom_peers import free_port
from tests.dicom.test_dicom_retrieve import dataset_bytes, query

CT = get_testdata_file("CT_small.dcm")
PACS = source_peer("PACS", ["127.0.0.1"])
NOT_AUTHORIZED, DUPLICATE = 0x0124, 0x0111
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service user, calling AE


def forged(path: Path, *, sop=None, study=None, patient="PAT-1", noise=0) -> tuple[Path, str]:
    """A CT instance; `noise` changes its pixels (same UIDs, other bytes)."""
    ds = dcmread(CT)
    ds.SOPInstanceUID = sop = sop or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.StudyInstanceUID = study or ds.StudyInstanceUID
    ds.PatientID = patient
    if noise:
        pixels = ds.pixel_array.copy()
        pixels.flat[:64] = np.arange(64) + noise
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path, sop


def associate(port: int, calling: str, source_address: str = "127.0.0.1"):
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title="GATEWAY",
                        bind_address=(source_address, 0))


def store(port: int, calling: str, files, originator=None, source_address="127.0.0.1"):
    """C-STORE `files`; the responses (None where none came) or "rejected"."""
    assoc = associate(port, calling, source_address)
    if not assoc.is_established:
        return "rejected"
    try:
        return [assoc.send_c_store(f, originator_aet=originator and originator[0],
                                   originator_id=originator and originator[1]) or None
                for f in files]
    finally:
        assoc.release()


def dataset_of(body: bytes) -> bytes:
    """The data set after the file meta group of a file's bytes."""
    (meta_len,) = struct.unpack_from("<I", body, 132 + 8)
    return body[132 + 12 + meta_len:]


def rejection(assoc) -> tuple:
    rsp = assoc.acceptor.primitive
    return (rsp.result, rsp.result_source, rsp.diagnostic)


@pytest.fixture
def scp():
    server = StorageSCP("GATEWAY", free_port(), "127.0.0.1").start()
    server.admit(PACS)
    yield server
    server.stop()


@pytest.fixture
def retrieval(tmp_path):
    (tmp_path / "spool").mkdir()
    study = dcmread(CT, stop_before_pixels=True).StudyInstanceUID
    return Retrieval("t1", FolderSink(tmp_path / "out"), studies=frozenset({study}),
                     patient_ids=frozenset({"PAT-1"}), spool=tmp_path / "spool")


# -- association ----------------------------------------------------------------------------
def test_unknown_calling_ae_is_rejected_at_association(scp, caplog):
    caplog.set_level(logging.WARNING, logger="connectors.dicom.scp")
    stranger = associate(scp.port, "STRANGER")
    assert stranger.is_rejected and not stranger.is_established
    assert rejection(stranger) == REJECT_CALLING_AE
    assert "'STRANGER' from 127.0.0.1 is not a configured DICOM source" in caplog.text
    known = associate(scp.port, "PACS")
    assert known.is_established
    known.release()


def test_known_ae_from_another_address_is_rejected(scp, caplog):
    caplog.set_level(logging.WARNING, logger="connectors.dicom.scp")
    elsewhere = associate(scp.port, "PACS", source_address="127.0.0.2")  # another host
    assert elsewhere.is_rejected and rejection(elsewhere) == REJECT_CALLING_AE
    assert "'PACS' from 127.0.0.2 is not a configured DICOM source" in caplog.text
    scp.withdraw(PACS)  # a source no longer configured is a stranger too
    assert associate(scp.port, "PACS").is_rejected


# -- injection during a real C-MOVE ---------------------------------------------------------
def test_injected_instances_are_refused_during_a_real_c_move(dicom, tmp_path):
    """While dcmqrscp sends the study, an attacker tries: its AE title from another
    address; the PACS's peer with a guessed Message ID; the right ID with a UID the move
    does not bring; the right ID from another configured source; a different copy of an
    instance already received. The study's intake is held (one worker, busy here) so the
    C-MOVE is surely in flight."""
    small = dicom.small
    pacs = dicom.dcmqrscp
    answers: dict = {}
    done = threading.Event()

    def attack(progress):
        if done.is_set():
            return
        done.set()
        scp = conn.backend.scp
        (move,) = scp._open.values()  # the attacker is granted the real ID and UIDs
        real_id = move.move_id
        guess = real_id % 65535 + 1
        study_sop = sorted(move.instances - set(move.retrieval.received))[0]
        have = next(iter(move.retrieval.received))
        make = lambda name, **kw: forged(tmp_path / name, study=small.study_uid,  # noqa: E731
                                         patient=small.patient_id, **kw)[0]
        new_uid = make("new.dcm")
        in_study = make("in-study.dcm", sop=study_sop)
        copy = make("copy.dcm", sop=have, noise=7)
        originator = ("GATEWAY", real_id)
        answers["other address"] = store(scp.port, pacs.aet, [in_study], originator,
                                         source_address="127.0.0.2")
        answers["guessed id"] = store(scp.port, pacs.aet, [in_study], ("GATEWAY", guess))
        answers["not in the move"] = store(scp.port, pacs.aet, [new_uid], originator)
        answers["other source"] = store(scp.port, "ORTHANC", [in_study], originator)
        answers["different copy"] = store(scp.port, pacs.aet, [copy], originator)
        answers["copy uid"] = have

    other_source = connector_class("dicom")("orthanc", dicom.options(), tmp_path / "o")
    opts = dicom.options(port=pacs.port, ae_title=pacs.aet, parallel=1, intake_workers=1,
                         sink=FolderSink(tmp_path / "out"))
    try:
        with connector_class("dicom")("pacs", opts, tmp_path / "wd", attack) as conn:
            records = list(conn.fetch(query(small.patient_id)))
    finally:
        other_source.close()
    assert answers["other address"] == "rejected"
    refused = [answers[k] for k in ("guessed id", "not in the move", "other source")]
    assert [[r.Status for r in rsps] for rsps in refused] == [[NOT_AUTHORIZED]] * 3
    # one answer, whatever the prober got right: the same elements, the same values
    shapes = [{e.keyword: e.value for e in rsps[0]
               if e.keyword not in ("MessageIDBeingRespondedTo", "AffectedSOPInstanceUID")}
              for rsps in refused]
    assert shapes[0] == shapes[1] == shapes[2]
    assert answers["different copy"][0].Status == DUPLICATE

    got = [r for r in records if isinstance(r, RawRecord) and r.kind == "dicom"]
    assert sorted(r.metadata["sop_instance_uid"] for r in got) == sorted(small.sop_uids)
    sources = dict(zip(small.sop_uids_in_file_order(), small.files))
    for rec in got:  # every instance is the PACS's, byte for byte
        body = rec.path.read_bytes()
        assert hashlib.sha256(body).hexdigest() == rec.sha256
        assert dataset_bytes(rec.path) == dataset_bytes(sources[rec.metadata["sop_instance_uid"]])
    rejected = [r for r in records if isinstance(r, RejectedRecord)]
    assert [r.origin.split("/")[-1] for r in rejected] == [answers["copy uid"]]
    assert "other content" in rejected[0].reason and "first received" in rejected[0].reason


# -- a second copy of an instance -----------------------------------------------------------
@pytest.mark.parametrize("sink, max_pdu", [("folder", 0), ("blob store", 0), ("folder", 128)])
def test_second_copy_same_bytes_once_other_bytes_refused(tmp_path, sink, max_pdu):
    """Into the spool and into the streaming blob store; with 128-byte PDUs the command
    set comes in pieces and pynetdicom's own C-STORE path (store_handler) takes it."""
    scp = StorageSCP("GATEWAY", free_port(), "127.0.0.1", max_pdu=max_pdu).start()
    scp.admit(PACS)
    try:
        _second_copy(scp, tmp_path, sink)
    finally:
        scp.stop()


def _second_copy(scp, tmp_path, sink):
    study = dcmread(CT, stop_before_pixels=True).StudyInstanceUID
    if sink == "folder":
        target = FolderSink(tmp_path / "out")
        read = lambda loc: Path(loc).read_bytes()  # noqa: E731
        kept = lambda: [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # noqa: E731
    else:
        blobs = BlobStore(tmp_path / "blobs", base64.b64decode(new_master_key()))
        target = BlobStoreSink(blobs)
        read = blobs.read_bytes
        kept = lambda: [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]  # noqa: E731
    retrieval = Retrieval("t1", target, studies=frozenset({study}),
                          patient_ids=frozenset({"PAT-1"}), spool=tmp_path)
    first, sop = forged(tmp_path / "first.dcm")
    other, _ = forged(tmp_path / "other.dcm", sop=sop, noise=3)
    with scp.expect(retrieval, PACS, [sop], "GATEWAY") as move_id:
        statuses = [r.Status for r in store(scp.port, "PACS", [first, first, other, first],
                                            ("GATEWAY", move_id))]
        assert retrieval.wait_settled(10)
    assert statuses == [0, 0, DUPLICATE, 0]
    rec = retrieval.received[sop]
    body = read(rec.location)
    assert hashlib.sha256(body).hexdigest() == rec.sha256
    assert dataset_of(body) == dataset_bytes(first)  # the first is kept
    assert len(kept()) == 1  # stored once
    (conflict,) = retrieval.conflicts
    assert conflict.sop_instance_uid == sop and rec.sha256 in conflict.reason
    assert rejected_record("pacs", conflict).origin.endswith(f"/{sop}")


# -- refusals are audited -------------------------------------------------------------------
def test_refused_associations_are_audited_once_a_minute_per_address(app, dicom, tmp_path):
    """The gateway's options for a dicom source audit each refused association; a prober
    retrying from one address is one event with a count, not one event per try."""
    from sqlalchemy import select

    from gateway.config import SourceConfig
    from gateway.engine.sources import connector_options
    from gateway.storage.models import AuditEvent

    svc = app.extensions["gateway"]
    source = SourceConfig(kind="dicom", organization="org-pacs", endpoint="dicom://ORTHANC",
                          options=dicom.options())
    with connector_class("dicom")("pacs", connector_options(svc, source), tmp_path) as conn:
        port = conn.backend.scp.port
        assert [associate(port, "STRANGER").is_rejected for _ in range(3)] == [True] * 3
        assert associate(port, "ORTHANC", source_address="127.0.0.2").is_rejected
        itself = associate(port, "ORTHANC")  # the source itself: no event
        assert itself.is_established
        itself.release()
    with svc.db.session() as s:
        events = s.scalars(select(AuditEvent).where(
            AuditEvent.type == "dicom.association.refused").order_by(AuditEvent.seq)).all()
        got = [(e.outcome, e.detail) for e in events]
    assert got == [("deny", {"calling_ae": "'STRANGER'", "address": "127.0.0.1", "refused": 1}),
                   ("deny", {"calling_ae": "'ORTHANC'", "address": "127.0.0.2", "refused": 1})]


# -- only listed instances are taken: a short listing is not a complete study ---------------
def test_listing_shorter_than_announced_leaves_the_study_incomplete(tmp_path):
    """A C-MOVE takes only the instances the instance-level query listed; if the listing
    is shorter than the series' announced count, the rest is counted missing (unnamed),
    never taken for complete."""
    from connectors.dicom.intake import Received
    from connectors.dicom.study import InstanceInfo, SeriesPlan, StudyPlan, judge

    study, series = generate_uid(), generate_uid()
    listed = [generate_uid() for _ in range(2)]
    plan = StudyPlan(study, expected=3, series={series: SeriesPlan(
        series, expected=3, instances={u: InstanceInfo(u) for u in listed})})
    retrieval = Retrieval("t1", FolderSink(tmp_path), studies=frozenset({study}))
    for uid in listed:
        retrieval.received[uid] = Received(uid, CTImageStorage, study, series,
                                           hashlib.sha256(uid.encode()).hexdigest(), 1,
                                           tmp_path / uid, "1.2.840.10008.1.2.1", {}, "c-move")
    outcome = judge(plan, retrieval, {})
    assert not outcome.complete
    assert outcome.missing == [] and outcome.missing_unnamed == {series: 1}
