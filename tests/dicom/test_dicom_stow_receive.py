"""Receive mode's STOW-RS endpoint in process: instances from a trusted peer gateway are
parsed as they stream in, checked, stored encrypted with their sha256, taken once."""
from __future__ import annotations

import hashlib
import io

import pytest
from sqlalchemy import select

from gateway.storage.models import ReceivedInstance
from gateway.inbound.stow import parts
from tests.dicom.dicom_studies import make_study
from tests.helpers import bearer, make_token
from tests.test_receive import peer, receiver, sender_keys  # noqa: F401  (fixtures)

CT = "multipart/related; type=\"application/dicom\"; boundary={b}"


def multipart(blobs: list[bytes], boundary: str = "b0undary") -> bytes:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                    + blob + b"\r\n" for blob in blobs)
    return body + b"--" + boundary.encode() + b"--\r\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return make_study(tmp_path_factory.mktemp("stow"), 4, 2, patient_id="PAT-STOWRX",
                      rows=32, cols=32)


def post(client, headers, body: bytes, boundary: str = "b0undary", path: str = "/dicomweb/studies"):
    return client.post(path, data=body, headers={**headers, "Content-Type": CT.format(b=boundary)})


def held(receiver) -> dict[str, str]:
    with receiver.extensions["gateway"].db.session() as s:
        return {r.sop_instance_uid: r.sha256 for r in s.scalars(select(ReceivedInstance))}


def test_instances_are_stored_once_with_their_sha256(receiver, peer, study):
    client = receiver.test_client()
    blobs = [f.read_bytes() for f in study.files]
    r = post(client, peer, multipart(blobs))
    assert r.status_code == 200, r.get_data(as_text=True)
    stored = r.get_json()["00081199"]["Value"]
    assert sorted(x["00081155"]["Value"][0] for x in stored) == sorted(study.sop_uids)
    # the preamble is zeroed on the way in (it could hide another file format)
    sums = {sop: hashlib.sha256(bytes(128) + b[128:]).hexdigest()
            for sop, b in zip(study.sop_uids_in_file_order(), blobs)}
    assert held(receiver) == sums
    svc = receiver.extensions["gateway"]
    with svc.db.session() as s:
        row = s.scalars(select(ReceivedInstance)).first()
        assert hashlib.sha256(svc.blobs.read_bytes(row.blob_key)).hexdigest() == row.sha256
    # a resumed delivery sends some again: answered as stored, kept once
    r = post(client, peer, multipart(blobs[:2]), path=f"/dicomweb/studies/{study.study_uid}")
    assert r.status_code == 200 and held(receiver) == sums


def test_instances_no_bundle_took_expire(receiver, peer, study):
    from gateway.inbound import stow

    assert post(receiver.test_client(), peer, multipart([f.read_bytes() for f in study.files])).status_code == 200
    svc = receiver.extensions["gateway"]
    kept = held(receiver)
    taken = dict(sorted(kept.items())[:3])
    with svc.db.session() as s:  # an accepted bundle listing three of them (one with other bytes)
        listed = {study.study_uid: {**taken, "9.9.9": "0" * 64}}
        wrong_sop = sorted(kept)[3]
        listed[study.study_uid][wrong_sop] = "f" * 64
        stow.bind(s, "hospital-a", listed, "bundle-row-1")
    assert stow.sweep_now(svc) == 0  # younger than receive_upload_ttl_s
    svc.settings.receive_upload_ttl_s = 0
    with svc.db.session() as s:
        gone = [r.blob_key for r in s.scalars(select(ReceivedInstance).filter_by(bundle_id=None))]
    assert stow.sweep_now(svc) == len(kept) - 3 == len(gone)
    assert held(receiver) == taken
    assert not any(svc.blobs.exists(key) for key in gone)


def test_bad_parts_and_requests_are_refused(receiver, peer, study):
    client = receiver.test_client()
    good = study.files[0].read_bytes()
    r = post(client, peer, multipart([b"not dicom at all" * 20, good]))
    assert r.status_code == 202  # one stored, one failed
    assert r.get_json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    r = post(client, peer, multipart([good]), path="/dicomweb/studies/1.2.3.4")
    assert r.status_code == 409  # another study than the URL names
    r = client.post("/dicomweb/studies", data=multipart([good]),
                    headers={**peer, "Content-Type": "application/dicom"})
    assert r.status_code == 400 and "multipart/related" in r.get_json()["issue"][0]["diagnostics"]
    cut = multipart([good])[:-200]
    r = post(client, peer, cut)
    assert r.status_code == 400
    stranger = bearer(make_token(receiver, "peer", "someone-else"))
    assert post(client, stranger, multipart([good])).status_code == 403
    assert list(held(receiver)) == [study.sop_uids_in_file_order()[0]]


def test_a_request_that_breaks_off_records_nothing_and_leaves_no_blob(receiver, peer, study):
    """A request's instances are recorded together once it has been read: the sender,
    answered nothing, sends them all again."""
    client = receiver.test_client()
    root = receiver.extensions["gateway"].blobs.backend.root
    before, blobs = held(receiver), sorted(p for p in root.rglob("*") if p.is_file())
    cut = multipart([f.read_bytes() for f in study.files[1:4]])[:-200]  # two whole parts, then cut
    assert post(client, peer, cut).status_code == 400
    assert held(receiver) == before
    assert sorted(p for p in root.rglob("*") if p.is_file()) == blobs


class _Trickle(io.RawIOBase):
    """Reads a few bytes at a time, so boundaries fall across reads."""

    def __init__(self, data: bytes, step: int):
        self.data, self.step, self.pos = data, step, 0

    def read(self, n=-1):
        out = self.data[self.pos:self.pos + min(self.step, n if n > 0 else self.step)]
        self.pos += len(out)
        return out


@pytest.mark.parametrize("step", [1, 7, 65536])
def test_parser_finds_parts_across_reads(step):
    blobs = [b"a" * 100, b"\r\n--b0undar" * 30, b"", b"z"]
    body = b"preamble\r\n" + multipart(blobs) + b"epilogue"
    got = [b"".join(p.chunks()) for p in parts(_Trickle(body, step), len(body), b"b0undary")]
    assert got == blobs


def test_a_receipt_short_of_instances_is_not_a_delivery():
    from gateway.exchange.manifest import study_digest
    from gateway.outbound.delivery import check_instances
    from gateway.errors import ReceiptInvalid

    sent = {"1.2.3": {"instances": 3, "sha256": study_digest(["a", "b", "c"])}}
    full = {"dicomInstances": {"1.2.3": 3}, "dicomSha256": {"1.2.3": study_digest(["c", "b", "a"])}}
    check_instances(full, sent, "center")
    with pytest.raises(ReceiptInvalid, match="holds 2 of 3 instances"):
        check_instances({**full, "dicomInstances": {"1.2.3": 2}}, sent, "center")
    with pytest.raises(ReceiptInvalid, match="instance hashes differ"):
        check_instances({**full, "dicomSha256": {"1.2.3": study_digest(["a", "b", "x"])}},
                        sent, "center")
    with pytest.raises(ReceiptInvalid, match="holds 0 of 3"):
        check_instances({}, sent, "center")  # a receiver that says nothing of the images


def test_dicom_destinations_are_validated_at_start_up():
    from gateway.config import load_settings
    from gateway.errors import ConfigError

    peer = {"base_url": "http://127.0.0.1:1/fhir", "kind": "fhir", "organization": "o"}
    with pytest.raises(ConfigError, match="needs host, port and ae_title"):
        load_settings({"peers": {"p": {**peer, "dicom": {"kind": "c-store", "host": "h"}}}})
    with pytest.raises(ConfigError, match="needs url"):
        load_settings({"peers": {"p": {**peer, "dicom": {"kind": "stow-rs"}}}})
    settings = load_settings({"peers": {"p": peer, "g": {**peer, "kind": "gateway"}}})
    assert settings.peers["p"].dicom_destination() is None  # a plain FHIR server: none
    assert settings.peers["g"].dicom_destination().url == "http://127.0.0.1:1/fhir/dicomweb"
