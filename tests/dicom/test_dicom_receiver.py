"""The standing DICOM receiver (`records-gateway dicom-receiver`, gateway/engine/
dicom_receiver.py) as its own process, with real Orthanc, a worker process that has no
DICOM port of its own, and PostgreSQL between them:

- a study pulled by C-MOVE through the receiver: the worker's items are the receiver's
  blobs (stored once, encrypted), byte for byte the PACS's data sets;
- who may send: a stranger's association is refused, and so is a C-STORE that no open
  C-MOVE expects (wrong instance, wrong Message ID, a move closed); a second copy with
  the same bytes is stored once, one with other bytes is refused (0x0111) and reported;
  once the transfer is settled, what nobody adopted is swept;
- the receiver killed in the middle of a C-MOVE and started again: the pull goes on,
  the instances stored before the kill are kept (not fetched again), each instance is
  stored once, none is missing;
- with the S3 blob store (moto's server), the instances go into the bucket and the
  worker's side reads them from there;
- a wrong configuration is one line and exit status 1.
"""
from __future__ import annotations

import hashlib
import io
import os
import signal
import uuid
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from sqlalchemy import func, select

from connectors.dicom.intake import Retrieval
from connectors.dicom.scp import source_peer
from gateway.config import DicomReceiverConfig
from gateway.engine.dicom_moves import MoveBoard
from gateway.engine.dicom_receiver import sweep
from gateway.engine.dicom_sink import BlobStoreSink
from gateway.runtime.health import check_dicom_receiver
from gateway.storage.models import AuditEvent, DicomArrival, DicomMove, Item, Transfer
from gateway.trust.authorizations import example_claims
from tests import s3_server
from tests.delivery.delivery_fixtures import _stack_class
from tests.dicom.dicom_peers import Modality, Orthanc, free_port
from tests.dicom.dicom_studies import make_study
from tests.dicom.store_peer import data_set
from tests.dicom.test_dicom_scp_peers import DUPLICATE, NOT_AUTHORIZED, associate, forged, store
from tests.helpers import ISSUER, RECEIVER_ORG, SENDER_ORG, wait_until

pytestmark = [pytest.mark.postgres]

MRN = "urn:oid:2.16.840.1.113883.19.5"
RECEIVER_AET = "GW-RECEIVER"
TERMINAL = {"completed", "failed", "cancelled", "dead_letter"}


@pytest.fixture(scope="module")
def receiver_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, receiver_port):
    """An Orthanc whose only move destination is the standing receiver."""
    root = tmp_path_factory.mktemp("pacs")
    orthanc = Orthanc(root / "orthanc", [Modality(RECEIVER_AET, receiver_port),
                                         Modality("GATEWAY", free_port())]).start()
    yield orthanc
    orthanc.stop()


@pytest.fixture
def sender_config(sender_config, pacs, receiver_port, pg_url):
    sender_config["database_url"] = pg_url
    sender_config["sources"] = {"pacs": {
        "kind": "dicom", "organization": SENDER_ORG, "data_class": "imaging",
        "endpoint": f"dicom://ORTHANC@127.0.0.1:{pacs.dicom_port}",
        "options": {"host": "127.0.0.1", "port": pacs.dicom_port, "ae_title": "ORTHANC",
                    "calling_aet": "GATEWAY", "retrieve": "receiver",
                    "incomplete_attempts": 50}}}
    sender_config["dicom_receiver"] = {"ae_title": RECEIVER_AET, "host": "127.0.0.1",
                                       "port": receiver_port, "health_port": free_port()}
    return sender_config


class Receiver:
    """`records-gateway dicom-receiver` processes (started again after a kill)."""

    def __init__(self, processes, config: dict, tmp_path: Path):
        self.processes, self.config, self.tmp = processes, config, tmp_path
        self.conf = DicomReceiverConfig(**config["dicom_receiver"])
        self.proc = None

    def start(self) -> "Receiver":
        self.proc = self.processes(self.config, self.tmp, f"dicom-receiver-{uuid.uuid4().hex[:6]}",
                                   "dicom-receiver")
        url = f"http://127.0.0.1:{self.conf.health_port}/health"

        def ready():
            assert self.proc.proc.poll() is None, self.proc.log_path.read_text()[-2000:]
            try:
                return requests.get(url, timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, 60, 0.1, "the DICOM receiver to be ready")
        return self


@pytest.fixture
def receiver(processes, sender_config, tmp_path, app) -> Receiver:
    return Receiver(processes, sender_config, tmp_path).start()


@pytest.fixture
def stack(app, client, operator, processes, sender_config, receiver_config, tmp_path):
    stack = _stack_class()(app, client, operator, processes, sender_config, receiver_config,
                           tmp_path)
    stack.start_receiver()
    return stack


def upload(pacs, tmp_path, n: int, rows: int = 64):
    pid = f"PAT-RX-{uuid.uuid4().hex[:8]}"
    study = make_study(tmp_path / pid, n, 2, patient_id=pid, rows=rows, cols=rows)
    pacs.upload(study.files)
    return study


def start_transfer(client, operator, sign, pacs, patient_id: str, receiver_url) -> str:
    claims = example_claims(
        ISSUER, f"auth-{uuid.uuid4().hex[:12]}",
        patient={"name": {"family": "Doe", "given": ["Jane"]}, "birthDate": "1970-01-01",
                 "identifiers": [{"system": MRN, "value": patient_id}]},
        disclosers=[{"id": SENDER_ORG, "name": "Test Hospital", "endpoints": [
            {"type": "dicom", "address": f"dicom://ORTHANC@127.0.0.1:{pacs.dicom_port}"}]}],
        recipient={"id": RECEIVER_ORG, "name": "Center",
                   "endpoint": {"type": "gateway", "address": receiver_url}})
    r = client.post("/authorizations", json={"jws": sign(claims)}, headers=operator)
    assert r.status_code == 201, r.get_json()
    r = client.post("/transfers", json={"authorization": r.get_json()["id"], "sources": ["pacs"],
                                        "recipient": "center"}, headers=operator)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def arrivals(svc, tid: str) -> list[DicomArrival]:
    with svc.db.session() as s:
        return s.scalars(select(DicomArrival).filter_by(transfer_id=tid)
                         .order_by(DicomArrival.id)).all()


def items(svc, tid: str) -> dict[str, Item]:
    with svc.db.session() as s:
        rows = s.scalars(select(Item).filter_by(transfer_id=tid, kind="dicom")).all()
    found = {i.record_meta["sop_instance_uid"]: i for i in rows}
    assert len(found) == len(rows)  # one item an instance
    return found


def test_a_c_move_goes_through_the_standing_receiver(stack, receiver, sign, pacs, tmp_path,
                                                     receiver_url, sender_config):
    assert "scp_port" not in sender_config["sources"]["pacs"]["options"]  # the worker listens nowhere
    study = upload(pacs, tmp_path, 20)
    tid = start_transfer(stack.client, stack.operator, sign, pacs, study.patient_id,
                         receiver_url)
    view = stack.wait_state(tid, TERMINAL, timeout=240)
    assert view["state"] == "completed", view["reason"]
    assert view["receipt"]["dicomInstances"] == {study.study_uid: 20}
    svc = stack.app.extensions["gateway"]
    got = items(svc, tid)
    assert sorted(got) == sorted(study.sop_uids)
    took = arrivals(svc, tid)
    assert [a.state for a in took] == ["received"] * 20
    # the worker kept the receiver's blobs: stored once, encrypted, the PACS's data sets
    assert {a.detail["sop_instance_uid"]: a.blob_key for a in took} == \
        {sop: i.blob_key for sop, i in got.items()}
    for sop, item in got.items():
        body = svc.blobs.read_bytes(item.blob_key)
        assert hashlib.sha256(body).hexdigest() == item.sha256
        assert dcmread(io.BytesIO(body)).SOPInstanceUID == sop

    def moves_open() -> int:
        with svc.db.session() as s:
            return s.scalar(select(func.count()).select_from(DicomMove))

    # every move is closed (a pull superseded after its lease ran out closes its own)
    wait_until(lambda: moves_open() == 0, 60, 0.2, "every C-MOVE to be closed")
    assert check_dicom_receiver(receiver.conf).ok


def test_strangers_and_instances_no_move_expects_are_refused(app, client, operator, receiver,
                                                             sign, pacs, tmp_path, receiver_url):
    svc = app.extensions["gateway"]
    # a transfer to hold the move (no worker runs: it stays where it is)
    tid = start_transfer(client, operator, sign, pacs, "PAT-1", receiver_url)
    port = receiver.conf.port
    a, sop_a = forged(tmp_path / "a.dcm")
    b, sop_b = forged(tmp_path / "b.dcm", study=dcmread(a).StudyInstanceUID)
    a2, _ = forged(tmp_path / "a2.dcm", sop=sop_a, study=dcmread(a).StudyInstanceUID, noise=7)
    c, sop_c = forged(tmp_path / "c.dcm", study=dcmread(a).StudyInstanceUID, patient="PAT-2")
    study_uid = dcmread(a).StudyInstanceUID

    # who may associate: the source's AE title from its address only
    assert associate(port, "STRANGER").is_rejected
    assert associate(port, "ORTHANC", source_address="127.0.0.2").is_rejected
    assert _status(store(port, "ORTHANC", [a])) == [NOT_AUTHORIZED]  # no move open at all

    board = MoveBoard(svc, "pacs", svc.settings.dicom_receiver)
    retrieval = Retrieval(tid, BlobStoreSink(svc.blobs), studies=frozenset({study_uid}),
                          patient_ids=frozenset({"PAT-1"}))
    with board.expect(retrieval, source_peer("ORTHANC", ["127.0.0.1"]), {sop_a, sop_c},
                      "GATEWAY") as move_id:
        wrong_id = move_id % 65535 + 1
        assert _status(store(port, "ORTHANC", [b], ("GATEWAY", move_id))) == [NOT_AUTHORIZED]
        assert _status(store(port, "ORTHANC", [a], ("GATEWAY", wrong_id))) == [NOT_AUTHORIZED]
        assert _status(store(port, "ORTHANC", [a], ("OTHER", move_id))) == [NOT_AUTHORIZED]
        assert _status(store(port, "ORTHANC", [a, a, a2, c], ("GATEWAY", move_id))) == \
            [0x0000, 0x0000, DUPLICATE, 0x0000]
        board.settle(move_id, _Sent(3))
    assert sorted(retrieval.received) == [sop_a]
    kept = retrieval.received[sop_a]
    assert data_set(svc.blobs.read_bytes(kept.location)) == data_set(Path(a).read_bytes())
    assert [e.sop_instance_uid for e in retrieval.conflicts] == [sop_a]
    assert "another patient" in retrieval.errors[sop_c].reason
    states = sorted((x.state, x.detail["sop_instance_uid"]) for x in arrivals(svc, tid))
    assert states == sorted([("received", sop_a), ("conflict", sop_a), ("error", sop_c)])
    # the move closed: the same instance is refused again
    assert _status(store(port, "ORTHANC", [a], ("GATEWAY", move_id))) == [NOT_AUTHORIZED]
    with svc.db.session() as s:
        refused = s.scalars(select(AuditEvent).filter_by(type="dicom.association.refused")).all()
    assert refused and all(e.actor == "dicom-scp" for e in refused)
    # the transfer settles: the copy nobody adopted, and the records, are swept
    assert sweep(svc, older_than=0) == (0, set())  # still open: nothing goes
    with svc.db.session() as s:
        s.get(Transfer, tid).state = "cancelled"
    assert sweep(svc, older_than=0) == (1, {(tid, "pacs")})
    assert not svc.blobs.exists(kept.location) and arrivals(svc, tid) == []


def test_receiver_killed_mid_move_and_started_again(stack, receiver, sign, pacs, tmp_path,
                                                    receiver_url):
    svc = stack.app.extensions["gateway"]
    n = 160
    study = upload(pacs, tmp_path, n, rows=256)
    tid = start_transfer(stack.client, stack.operator, sign, pacs, study.patient_id,
                         receiver_url)
    wait_until(lambda: len(arrivals(svc, tid)) >= 10, 180, 0.02, "instances at the receiver")
    os.killpg(receiver.proc.proc.pid, signal.SIGSTOP)  # frozen: its records stay as they are
    before = {a.detail["sop_instance_uid"]: a.blob_key for a in arrivals(svc, tid)
              if a.state == "received"}
    assert 0 < len(before) < n, "the move ended before the receiver was stopped"
    receiver.proc.kill(signal.SIGKILL)
    receiver.start()
    view = stack.wait_state(tid, TERMINAL, timeout=300)
    assert view["state"] == "completed", view["reason"]
    got = items(svc, tid)
    assert sorted(got) == sorted(study.sop_uids)  # none missing, none twice
    # what was stored before the kill is what was delivered: not fetched and stored again
    assert {sop: got[sop].blob_key for sop in before} == before
    took = [a for a in arrivals(svc, tid) if a.state == "received"]
    assert len(took) == n and len({a.blob_key for a in took}) == n
    assert {a.detail["sop_instance_uid"]: a.blob_key for a in took} == \
        {sop: i.blob_key for sop, i in got.items()}


def _status(responses) -> list:
    return responses if isinstance(responses, str) else [r.Status if r is not None else None
                                                         for r in responses]


class _Sent:
    """A final C-MOVE status as `MoveBoard.settle` reads it: `completed` sent."""

    def __init__(self, completed: int):
        self.status, self.completed, self.warning = 0x0000, completed, 0


@pytest.fixture
def s3_blobs(sender_config, tmp_path):
    """The sender's blobs (the receiver's and the workers') in an S3 bucket."""
    server = s3_server.start(tmp_path / "moto.log")
    bucket = server.new_bucket()
    sender_config["blob_store"] = server.store_config(bucket, tmp_path / "s3-secrets")
    yield server, bucket
    s3_server.stop(server)


def test_the_receiver_stores_into_the_s3_store(s3_blobs, app, client, operator, receiver, sign,
                                               pacs, tmp_path, receiver_url):
    server, bucket = s3_blobs
    svc = app.extensions["gateway"]
    tid = start_transfer(client, operator, sign, pacs, "PAT-1", receiver_url)
    a, sop_a = forged(tmp_path / "a.dcm")
    retrieval = Retrieval(tid, BlobStoreSink(svc.blobs), studies=frozenset(
        {dcmread(a).StudyInstanceUID}), patient_ids=frozenset({"PAT-1"}))
    board = MoveBoard(svc, "pacs", svc.settings.dicom_receiver)
    with board.expect(retrieval, source_peer("ORTHANC", ["127.0.0.1"]), {sop_a},
                      "GATEWAY") as move_id:
        assert _status(store(receiver.conf.port, "ORTHANC", [a, a], ("GATEWAY", move_id))) == \
            [0x0000, 0x0000]
        board.settle(move_id, _Sent(1))
    kept = retrieval.received[sop_a]
    objects = server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    assert [o["Key"] for o in objects if kept.location in o["Key"]]  # in the bucket, once
    assert data_set(svc.blobs.read_bytes(kept.location)) == data_set(Path(a).read_bytes())
    assert Path(a).read_bytes()[-4096:] not in server.client().get_object(
        Bucket=bucket, Key=next(o["Key"] for o in objects if kept.location in o["Key"])
    )["Body"].read()  # encrypted before upload


def test_a_wrong_receiver_configuration_is_one_line(sender_config, tmp_path):
    import copy
    import json
    import socket

    from click.testing import CliRunner

    from gateway.cli.main import main

    def run(config: dict) -> list[str]:
        path = tmp_path / f"{uuid.uuid4().hex}.json"
        path.write_text(json.dumps(config))
        env = {k: None for k in os.environ if k.startswith("GATEWAY_")}
        done = CliRunner().invoke(main, ["dicom-receiver"], env={**env, "GATEWAY_CONFIG_FILE": str(path)})
        assert done.exit_code == 1, done.output
        return done.output.strip().splitlines()

    unset = copy.deepcopy(sender_config)
    del unset["dicom_receiver"]
    [line] = run(unset)
    assert line.startswith("error: ") and "retrieve = receiver needs" in line
    none_uses_it = copy.deepcopy(sender_config)
    none_uses_it["sources"]["pacs"]["options"]["retrieve"] = "get"
    assert run(none_uses_it) == ["error: no DICOM source retrieves through the receiver: set a "
                                 "source's options.retrieve = \"receiver\", or "
                                 "dicom_receiver.all_sources"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = copy.deepcopy(sender_config)
        busy["dicom_receiver"]["port"] = port = taken.getsockname()[1]
        [line] = run(busy)
    assert line.startswith(f"error: dicom_receiver cannot listen on 127.0.0.1:{port}: ")
