"""Fidelity: every instance arrives in the bytes the PACS holds it in.

A study with one instance per transfer syntax (explicit/implicit VR little endian,
explicit VR big endian, deflated, JPEG baseline, JPEG lossless (process 14 and SV1),
JPEG-LS lossless and near-lossless, RLE, JPEG 2000), each made by a real encoder, is
stored in a real Orthanc as is (over HTTP); then retrieved by C-GET, by C-MOVE and by WADO-RS, by
the connector alone and through two gateways (pulled, delivered by STOW-RS to a
receiving gateway). Each instance's transfer syntax and the bytes of its data set after
the file meta must be the PACS's (a deflated data set compared inflated: see
`data_set_digest`); a difference fails naming the instance and the syntax.
"""
from __future__ import annotations

import hashlib
import struct
import uuid
import zlib
from datetime import date
from pathlib import Path

import pytest
import requests

from connectors import connector_class
from connectors.base import PatientIdentifier, RawRecord, RecordQuery, SkippedRecord
from connectors.dicom.intake import FolderSink
from connectors.dicom.qr import COMMON_STORAGE_CLASSES
from tests.dicom.conftest import GATEWAY_AET
from tests.dicom.dicom_peers import Modality, Orthanc
from tests.dicom.dicom_studies import SYNTAX_ENCODERS, make_study, make_syntax_study
from tests.dicom.store_peer import data_set
from tests.helpers import ISSUER, RECEIVER_ORG, SENDER_ORG

PATIENT = "PAT-FIDELITY"
MANY = "PAT-FIDELITY-CLASSES"
MRN = "urn:oid:2.16.840.1.113883.19.5"
TERMINAL = {"completed", "failed", "cancelled", "dead_letter"}
SKIPPED = ("another patient's demographics: the study's birth date differs from the "
           "authorization's (PatientID matches)")


def transfer_syntax(body: bytes) -> str:
    """The Transfer Syntax UID of a Part 10 file's meta group."""
    assert body[128:132] == b"DICM"
    (meta_len,) = struct.unpack_from("<I", body, 132 + 8)
    offset, end = 132 + 12, 132 + 12 + meta_len
    while offset < end:
        group, elem, vr = struct.unpack_from("<HH2s", body, offset)
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            (length,) = struct.unpack_from("<I", body, offset + 8)
            head = 12
        else:
            (length,) = struct.unpack_from("<H", body, offset + 6)
            head = 8
        if (group, elem) == (0x0002, 0x0010):
            return body[offset + head:offset + head + length].rstrip(b"\0 ").decode()
        offset += head + length
    raise AssertionError("no Transfer Syntax UID in the file meta")


DEFLATED = "1.2.840.10008.1.2.1.99"


def data_set_digest(body: bytes, syntax: str) -> str:
    """sha256 of a Part 10 file's data set. A deflated data set is compared inflated: the
    whole data set is one deflate stream, which a PACS's network layer may compress anew
    when it sends it (dcmtk's does), so its compressed bytes need not be the stored ones."""
    raw = data_set(body)
    if syntax == DEFLATED:
        raw = zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw)
    return hashlib.sha256(raw).hexdigest()


class Held:
    """What the PACS holds: SOP Instance UID -> (transfer syntax, sha256 of the data set)."""

    def __init__(self, pacs: Orthanc, syntax_of: dict[str, str]):
        self.expected: dict[str, tuple[str, str]] = {}
        for sop, syntax in syntax_of.items():
            (found,) = requests.post(f"{pacs.url}/tools/lookup", data=sop, timeout=10).json()
            body = requests.get(f"{pacs.url}/instances/{found['ID']}/file", timeout=10).content
            assert transfer_syntax(body) == syntax, f"the PACS converted {sop} on the way in"
            self.expected[sop] = (syntax, data_set_digest(body, syntax))

    def compare(self, got: dict[str, bytes], how: str) -> None:
        """`got`: SOP Instance UID -> the Part 10 file as delivered."""
        problems = []
        for sop, (syntax, digest) in sorted(self.expected.items(), key=lambda kv: kv[1][0]):
            body = got.get(sop)
            if body is None:
                problems.append(f"{sop} ({syntax}): missing")
                continue
            arrived = transfer_syntax(body)
            if arrived != syntax:
                problems.append(f"{sop} ({syntax}): arrived as {arrived}")
            elif data_set_digest(body, syntax) != digest:
                problems.append(f"{sop} ({syntax}): data set bytes differ")
        extra = sorted(set(got) - set(self.expected))
        assert not problems and not extra, f"{how}: " + "; ".join(problems + [
            f"{sop}: not held by the PACS" for sop in extra])


METHODS = ("get", "move", "wado")


def patient(method: str) -> str:
    """One patient (and study) per retrieve: a receiving gateway takes an instance from a
    sender once, so three transfers at once must carry three different studies."""
    return f"{PATIENT}-{method.upper()}"


@pytest.fixture(scope="module")
def fidelity(dicom, tmp_path_factory):
    """An Orthanc of its own holding, per retrieve, a study of every syntax exactly as
    encoded (stored over HTTP, so no C-STORE negotiation converts anything on the way
    in) and a study of another person under the same PatientID (found, not taken)."""
    root = tmp_path_factory.mktemp("fidelity")
    made, files = {}, []
    for method in METHODS:
        study, syntax_of = make_syntax_study(root / method, patient_id=patient(method))
        other = make_study(root / f"other-{method}", 2, 1, patient_id=patient(method),
                           birth_date="19650505", rows=32, cols=32)
        made[method] = (study, syntax_of, other)
        files += study.files + other.files
        assert len(set(syntax_of.values())) >= 8
    # more SOP classes than one association has contexts for with every common syntax
    classes = COMMON_STORAGE_CLASSES[:12]
    many, many_syntax = make_syntax_study(
        root / "many", patient_id=MANY, syntaxes=[list(SYNTAX_ENCODERS)[i % 11] for i in range(12)],
        sop_classes=classes)
    pacs = Orthanc(root / "orthanc", [Modality(GATEWAY_AET, dicom.gateway_port)],
                   aet="FIDPACS").start()
    try:
        for f in files + many.files:
            requests.post(f"{pacs.url}/instances", data=f.read_bytes(),
                          timeout=30).raise_for_status()
        pacs.studies = {m: (study, Held(pacs, syntax_of), other)
                        for m, (study, syntax_of, other) in made.items()}
        pacs.many = (Held(pacs, many_syntax), classes, many, many_syntax)
        yield pacs
    finally:
        pacs.stop()


def options(dicom, pacs: Orthanc, method: str, sink) -> dict:
    opts = dicom.options(port=pacs.dicom_port, ae_title=pacs.aet, retrieve=method, sink=sink,
                         retries=0)
    if method == "wado":
        opts["dicomweb_url"] = pacs.dicomweb_url
    return opts


@pytest.mark.parametrize("method", ["get", "move", "wado"])
def test_each_instance_arrives_in_the_syntax_the_pacs_holds(dicom, fidelity, tmp_path, method):
    pacs = fidelity
    study, held, other = pacs.studies[method]
    query = RecordQuery("a", "t", identifiers=(PatientIdentifier("mrn", patient(method)),),
                        family_name="Doe", birth_date=date(1970, 1, 1))
    with connector_class("dicom")("pacs", options(dicom, pacs, method,
                                                  FolderSink(tmp_path / "out")),
                                  tmp_path / "wd") as conn:
        records = list(conn.fetch(query))
    got = {r.metadata["sop_instance_uid"]: Path(r.path).read_bytes() for r in records
           if isinstance(r, RawRecord) and r.kind == "dicom"}
    held.compare(got, f"retrieved by {method}")
    syntaxes = {r.metadata["sop_instance_uid"]: r.metadata["transfer_syntax"] for r in records
                if isinstance(r, RawRecord) and r.kind == "dicom"}
    assert syntaxes == {sop: s for sop, (s, _) in held.expected.items()}
    assert set(syntaxes.values()) == set(SYNTAX_ENCODERS)
    assert [(r.origin, r.reason) for r in records if isinstance(r, SkippedRecord)] == [
        (other.study_uid, SKIPPED)]


@pytest.fixture(scope="module")
def told(dicom, fidelity, tmp_path_factory):
    """A second Orthanc holding the study of many SOP classes that reads its files to
    answer C-FIND, so it tells each instance's SOP class at the instance level."""
    _, classes, many, many_syntax = fidelity.many
    root = tmp_path_factory.mktemp("told")
    with Orthanc(root / "orthanc", [Modality(GATEWAY_AET, dicom.gateway_port)], aet="TOLDPACS",
                 dicomweb=False, extra={"StorageAccessOnFind": "Always"}) as pacs:
        for f in many.files:
            requests.post(f"{pacs.url}/instances", data=f.read_bytes(),
                          timeout=30).raise_for_status()
        pacs.many = (Held(pacs, many_syntax), classes, many, many_syntax)
        yield pacs


@pytest.mark.parametrize("classes_told", [False, True])
def test_c_get_of_more_sop_classes_than_one_association_takes(dicom, fidelity, told, tmp_path,
                                                              classes_told):
    """12 SOP classes x 13 syntaxes is more than 127 presentation contexts: the instances
    are retrieved in groups of SOP classes (where the PACS tells each instance's class,
    else one by one, trying the study's classes group by group), each still in the
    syntax the PACS holds."""
    pacs = told if classes_told else fidelity
    held, classes = pacs.many[:2]
    query = RecordQuery("a", "t", identifiers=(PatientIdentifier("mrn", MANY),))
    with connector_class("dicom")("pacs", options(dicom, pacs, "get",
                                                  FolderSink(tmp_path / "out")),
                                  tmp_path / "wd") as conn:
        records = list(conn.fetch(query))
        # the two PACSs differ as meant: one tells each instance's class, one does not
        uid = pacs.many[2].study_uid
        answers = [a for series in conn.backend.series(uid)
                   for a in conn.backend.instances(uid, series["SeriesInstanceUID"])]
    assert {a.get("SOPClassUID", "") for a in answers} == (set(classes) if classes_told
                                                         else {""})
    got = {r.metadata["sop_instance_uid"]: Path(r.path).read_bytes() for r in records
           if isinstance(r, RawRecord) and r.kind == "dicom"}
    held.compare(got, f"C-GET of 12 SOP classes (classes told: {classes_told})")
    assert {r.metadata["sop_class_uid"] for r in records
            if isinstance(r, RawRecord) and r.kind == "dicom"} == set(classes)


# -- through two gateways --------------------------------------------------------------------
@pytest.fixture
def sender_config(sender_config, dicom, fidelity):
    """The test sender with the fidelity PACS as three sources, one per retrieve."""
    pacs = fidelity
    for method in METHODS:
        sender_config["sources"][f"fid-{method}"] = {
            "kind": "dicom", "organization": SENDER_ORG, "data_class": "imaging",
            "endpoint": f"dicom://{pacs.aet}@127.0.0.1:{pacs.dicom_port}",
            "options": options(dicom, pacs, method, None)}
        sender_config["sources"][f"fid-{method}"]["options"].pop("sink")
    return sender_config


@pytest.fixture
def stack(app, client, operator, processes, sender_config, receiver_config, tmp_path):
    from tests.delivery.delivery_fixtures import _stack_class

    return _stack_class()(app, client, operator, processes, sender_config, receiver_config,
                          tmp_path)


def test_delivered_to_a_receiving_gateway_as_the_pacs_holds_it(stack, sign, dicom, fidelity,
                                                               receiver_url, receiver_config):
    """Three transfers at once, one per retrieve (C-GET, C-MOVE, WADO-RS), each pulled into
    the sender's blob store and delivered by STOW-RS to the receiving gateway."""
    from sqlalchemy import select

    from gateway import create_app
    from gateway.storage.models import Item, ReceivedInstance
    from gateway.trust.authorizations import example_claims
    from tests.delivery.delivery_support import manifest_of

    pacs = fidelity
    stack.start_receiver()
    ids = {}
    for method in METHODS:
        claims = example_claims(
            ISSUER, f"auth-{uuid.uuid4().hex[:12]}",
            patient={"name": {"family": "Doe", "given": ["Jane"]}, "birthDate": "1970-01-01",
                     "identifiers": [{"system": MRN, "value": patient(method)}]},
            disclosers=[{"id": SENDER_ORG, "name": "Test Hospital", "endpoints": [
                {"type": "dicom", "address": f"dicom://{pacs.aet}@127.0.0.1:{pacs.dicom_port}"}]}],
            recipient={"id": RECEIVER_ORG, "name": "Recipient",
                       "endpoint": {"type": "gateway", "address": receiver_url}})
        auth_id = stack.authorize(claims, sign)
        r = stack.client.post("/transfers", json={
            "authorization": auth_id, "sources": [f"fid-{method}"], "recipient": "center"},
            headers=stack.operator)
        assert r.status_code == 202, r.get_json()
        ids[method] = r.get_json()["id"]
    sender = stack.app.extensions["gateway"]
    everything = {}
    for method, tid in ids.items():
        study, held, _ = pacs.studies[method]
        everything.update(held.expected)
        n = len(held.expected)
        source = f"fid-{method}"
        view = stack.wait_state(tid, TERMINAL, timeout=240)
        assert view["state"] == "completed", (method, view["reason"])
        assert view["receipt"]["dicomInstances"] == {study.study_uid: n}
        # the study of another birth date: found, not taken, said in the view
        report = view["completeness"][source]
        assert report["refused"] == [{"reason": SKIPPED, "count": 1}], report
        assert (report["found"], report["delivered"]) == (n + 2, n + 1)
        # what the sender pulled is what the PACS holds
        with sender.db.session() as s:
            items = s.scalars(select(Item).filter_by(transfer_id=tid, kind="dicom")).all()
            pulled = {i.record_meta["sop_instance_uid"]: sender.blobs.read_bytes(i.blob_key)
                      for i in items}
        held.compare(pulled, f"pulled by {method}")
    # ... and so is what the receiving gateway holds, and each manifest says what was skipped
    receiver = create_app(receiver_config)
    svc = receiver.extensions["gateway"]
    try:
        with svc.db.session() as s:
            rows = s.scalars(select(ReceivedInstance)).all()
        got = {row.sop_instance_uid: svc.blobs.read_bytes(row.blob_key) for row in rows}
    finally:
        svc.close()
    for method in METHODS:
        held = pacs.studies[method][1]
        held.compare({k: v for k, v in got.items() if k in held.expected},
                     f"{method}, delivered by STOW-RS to a receiving gateway")
    assert set(got) == set(everything)
    received = stack.inbox()
    assert len(received) == 3
    for entry in received:
        (src,) = manifest_of(stack.received_bundle(entry["id"]))["sources"].values()
        assert src["completeness"]["refused"] == [{"reason": SKIPPED, "count": 1}]
