"""Hostile and broken input at the Storage SCP and the intake: unroutable instances,
invalid UIDs, mismatched or malformed data sets, another patient's data, polyglot
preambles, cut connections. Each is a clear per-instance error; nothing crashes, nothing
is stored under a name taken from the input, and the SCP keeps serving."""
from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

import connectors.dicom.forward  # noqa: F401  (turns on STORE_SEND_CHUNKED_DATASET)
from connectors.dicom.intake import FolderSink, Retrieval
from connectors.dicom.scp import StorageSCP, source_peer
from tests.dicom.dicom_peers import free_port

CT = get_testdata_file("CT_small.dcm")
PEER = source_peer("ROGUE", ["127.0.0.1"])  # the configured source the tests send as


def craft(path: Path, *, meta_sop=None, ds_sop=None, patient="PAT-1", study=None,
          garbage=False, preamble=b"") -> tuple[Path, str]:
    """A CT file; the meta and data set SOP Instance UIDs can be made to disagree."""
    ds = dcmread(CT)
    sop = ds_sop or generate_uid()
    ds.SOPInstanceUID = sop
    ds.PatientID = patient
    ds.StudyInstanceUID = study or ds.StudyInstanceUID
    ds.file_meta.MediaStorageSOPInstanceUID = meta_sop or sop
    ds.preamble = (preamble + bytes(128))[:128]
    ds.save_as(path, enforce_file_format=False)  # keep the meta as set, even when wrong
    if garbage:
        data = bytearray(path.read_bytes())
        (meta_len,) = struct.unpack_from("<I", data, 140)
        start = 144 + meta_len
        data[start:start + 64] = b"\xff\x7f" * 32  # tags and lengths that make no sense
        path.write_bytes(bytes(data))
    return path, meta_sop or sop


@pytest.fixture
def scp(tmp_path):
    server = StorageSCP("GATEWAY", free_port(), "127.0.0.1").start()
    server.admit(PEER)
    yield server
    server.stop()


def expecting(scp, retrieval, *sops):
    """An open C-MOVE from PEER that may bring `sops`."""
    return scp.expect(retrieval, PEER, sops, "GATEWAY")


@pytest.fixture
def retrieval(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    study = dcmread(CT, stop_before_pixels=True).StudyInstanceUID
    return Retrieval("t1", FolderSink(tmp_path / "out"), studies=frozenset({study}),
                     patient_ids=frozenset({"PAT-1"}), spool=spool)


def send(port: int, files, calling="ROGUE", originator_id=None):
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEWAY")
    assert assoc.is_established
    statuses = []
    try:
        for f in files:
            rsp = assoc.send_c_store(f, originator_aet="GATEWAY" if originator_id else None,
                                     originator_id=originator_id)
            statuses.append(rsp.Status if rsp else None)
    finally:
        assoc.release()
    return statuses


def stored(tmp_path) -> list[Path]:
    return sorted((tmp_path / "out").rglob("*")) if (tmp_path / "out").exists() else []


def test_instance_nobody_asked_for_is_refused(scp, tmp_path):
    path, _ = craft(tmp_path / "a.dcm")
    assert send(scp.port, [path]) == [0x0124]
    assert stored(tmp_path) == []


def test_routed_by_move_originator_message_id(scp, retrieval, tmp_path):
    path, sop = craft(tmp_path / "a.dcm")
    with expecting(scp, retrieval, sop) as move_id:
        assert send(scp.port, [path], originator_id=move_id) == [0]
        assert retrieval.wait_settled(10)
    assert list(retrieval.received) == [sop]
    rec = retrieval.received[sop]
    assert Path(rec.location).name == f"{rec.sha256}.dcm"
    assert dcmread(rec.location).SOPInstanceUID == sop


def test_each_bad_instance_is_its_own_error(scp, retrieval, tmp_path):
    good, good_sop = craft(tmp_path / "good.dcm")
    leading_zero, _ = craft(tmp_path / "lz.dcm", meta_sop="1.2.3.04")
    mismatch, mismatch_sop = craft(tmp_path / "mm.dcm", meta_sop=generate_uid())
    malformed, malformed_sop = craft(tmp_path / "bad.dcm", garbage=True)
    foreign, foreign_sop = craft(tmp_path / "other.dcm", patient="PAT-2")
    other_study, other_study_sop = craft(tmp_path / "os.dcm", study=generate_uid())
    with expecting(scp, retrieval, mismatch_sop, malformed_sop, foreign_sop,
                   other_study_sop, good_sop):
        statuses = send(scp.port, [leading_zero, mismatch, malformed, foreign, other_study,
                                   good])
        assert retrieval.wait_settled(10)
    # an invalid UID cannot be one the retrieve expects: refused like any stranger
    assert statuses[0] == 0x0124 and statuses[-1] == 0
    assert list(retrieval.received) == [good_sop]
    reasons = {uid: e.reason for uid, e in retrieval.errors.items()}
    assert len(reasons) == 4
    assert "differs from the announced" in reasons[mismatch_sop]
    assert "malformed dataset" in reasons[malformed_sop]
    assert "another patient" in reasons[foreign_sop]
    assert "did not ask for" in reasons[other_study_sop]
    assert all(e.permanent for e in retrieval.errors.values())
    assert len(stored(tmp_path)) == 2  # the folder and the one good file
    assert not list((tmp_path / "spool").iterdir())


def test_uid_that_is_a_path_is_never_used_as_one(retrieval, tmp_path):
    """The intake names files by content hash; a UID like ../../x is just invalid."""
    path, _ = craft(tmp_path / "x.dcm")
    data = path.read_bytes()
    good = dcmread(path, stop_before_pixels=True).SOPInstanceUID.encode()
    evil = b"../../../../tmp/evil".ljust(len(good), b"\0")
    (tmp_path / "y.dcm").write_bytes(data.replace(good, evil))
    retrieval.begin()
    err = retrieval.take(tmp_path / "y.dcm", via="test")
    assert "is not a valid UID" in err.reason
    assert not Path("/tmp/evil").exists() and stored(tmp_path) == []


def test_polyglot_preamble_is_zeroed(retrieval, tmp_path):
    path, sop = craft(tmp_path / "p.dcm", preamble=b"MZ\x90\x00 this could be an executable")
    assert path.read_bytes()[:2] == b"MZ"
    retrieval.begin()
    rec = retrieval.take(path, via="test")
    body = Path(rec.location).read_bytes()
    assert body[:128] == bytes(128) and body[128:132] == b"DICM"
    import hashlib

    assert hashlib.sha256(body).hexdigest() == rec.sha256


def test_cut_connection_loses_one_instance_and_the_scp_carries_on(retrieval, tmp_path):
    scp = StorageSCP("GATEWAY", free_port(), "127.0.0.1", max_pdu=16384).start()
    scp.admit(PEER)
    try:
        _cut_connection(scp, retrieval, tmp_path)
    finally:
        scp.stop()


def _cut_connection(scp, retrieval, tmp_path):
    big = dcmread(CT)
    big.PatientID = "PAT-1"
    big.PixelData = os.urandom(8 * 1024 * 1024)
    big.Rows, big.Columns = 2048, 2048
    big.SOPInstanceUID = sop = generate_uid()
    big.file_meta.MediaStorageSOPInstanceUID = sop
    path = tmp_path / "big.dcm"
    big.save_as(path, enforce_file_format=True)
    tmpdir = Path(tempfile.gettempdir())
    before = set(tmpdir.glob("tmp*.dcm"))

    ae = AE(ae_title="ROGUE")
    ae.add_requested_context(CTImageStorage)
    sent = [0]

    def cut(event):  # the network goes away after 1 MB of the data set
        sent[0] += 1
        if sent[0] == 64:
            event.assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)

    good, good_sop = craft(tmp_path / "good.dcm")
    with expecting(scp, retrieval, sop, good_sop):
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="GATEWAY", max_pdu=16384,
                             evt_handlers=[(evt.EVT_PDU_SENT, cut)])
        assert assoc.is_established
        threading.Thread(target=assoc.send_c_store, args=(path,), daemon=True).start()
        deadline = time.monotonic() + 10
        while sop not in retrieval.errors and time.monotonic() < deadline:
            time.sleep(0.02)
        assoc.abort()
        assert "ended while this instance was being received" in retrieval.errors[sop].reason
        assert not retrieval.errors[sop].permanent  # a retry may get it
        assert send(scp.port, [good]) == [0]
        assert retrieval.wait_settled(10)
    assert list(retrieval.received) == [good_sop]
    assert set(tmpdir.glob("tmp*.dcm")) <= before  # the partial temp file was removed


def test_unsupported_sop_class_is_refused_at_negotiation(scp, retrieval, tmp_path):
    ae = AE(ae_title="ROGUE")
    ae.add_requested_context("1.2.826.0.1.3680043.9.9999.1")  # a private, non-storage class
    good, good_sop = craft(tmp_path / "good.dcm")
    with expecting(scp, retrieval, good_sop):
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="GATEWAY")
        assert not assoc.is_established  # no context accepted: nothing can be sent
        assert send(scp.port, [good]) == [0]
        assert retrieval.wait_settled(10)
    assert list(retrieval.received) == [good_sop]


def test_stores_take_the_fast_path(scp, retrieval, tmp_path):
    """The SCP receives C-STOREs itself (connectors.dicom.dimse_store), not through
    pynetdicom's per-message pydicom work: its EVT_C_STORE fallback is never called."""
    calls = []
    scp._server.bind(evt.EVT_C_STORE, lambda event: calls.append(1) or 0xA700)
    crafted = [craft(tmp_path / f"{n}.dcm") for n in range(3)]
    files = [f for f, _ in crafted]
    with expecting(scp, retrieval, *(sop for _, sop in crafted)):
        assert send(scp.port, files) == [0, 0, 0]
        assert retrieval.wait_settled(10)
    assert calls == [] and len(retrieval.received) == 3
    for rec in retrieval.received.values():
        ds = dcmread(rec.location)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.TransferSyntaxUID == dcmread(files[0]).file_meta.TransferSyntaxUID


def test_streamed_bad_instances_leave_no_blob(scp, tmp_path):
    """With a streaming sink the bytes go to the blob writer as they arrive; an instance
    that fails its checks at the end is aborted: no blob, no plaintext."""
    import base64

    from gateway.storage.blobstore import BlobStore, new_master_key
    from gateway.engine.dicom_sink import BlobStoreSink

    store = BlobStore(tmp_path / "blobs", base64.b64decode(new_master_key()))
    study = dcmread(CT, stop_before_pixels=True).StudyInstanceUID
    retrieval = Retrieval("t1", BlobStoreSink(store), studies=frozenset({study}),
                          patient_ids=frozenset({"PAT-1"}), spool=tmp_path)
    good, good_sop = craft(tmp_path / "good.dcm", preamble=b"MZ polyglot")
    malformed, malformed_sop = craft(tmp_path / "bad.dcm", garbage=True)
    foreign, foreign_sop = craft(tmp_path / "other.dcm", patient="PAT-2")
    with expecting(scp, retrieval, good_sop, malformed_sop, foreign_sop):
        assert send(scp.port, [malformed, foreign, good]) == [0, 0, 0]
        assert retrieval.wait_settled(10)
    assert list(retrieval.received) == [good_sop] and len(retrieval.errors) == 2
    blobs = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 1  # the good one; the others' partial blobs were removed
    plain = store.read_bytes(retrieval.received[good_sop].location)
    assert plain[:128] == bytes(128) and plain[128:132] == b"DICM"
