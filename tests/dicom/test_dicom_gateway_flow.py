"""Imaging through the whole gateway, real processes and peers: a study pulled from Orthanc
by C-MOVE into the sender's worker, its ImagingStudy in the bundle, its instances sent
beside it: by STOW-RS to a second gateway in receive mode (which counts them in its
receipt), or by C-STORE to a second Orthanc for a plain FHIR recipient (sekmet); and a
destination that stops taking instances half way, then the resumed delivery."""
from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from gateway.storage.models import AuditEvent, Item, ReceivedInstance
from gateway.trust.authorizations import example_claims
from tests.delivery.delivery_fixtures import PLAIN_ORG, _stack_class, sekmet  # noqa: F401
from tests.dicom.dicom_studies import make_study
from tests.dicom.store_peer import RefusingStoreSCP, data_set
from tests.helpers import ISSUER, RECEIVER_ORG, SENDER_ORG
from tests.test_transfer_flow import binaries

TERMINAL = {"completed", "failed", "cancelled", "dead_letter"}
MRN = "urn:oid:2.16.840.1.113883.19.5"


@pytest.fixture
def refusing():
    scp = RefusingStoreSCP(accept=10).start()
    yield scp
    scp.stop()


@pytest.fixture
def sender_config(sender_config, dicom, sekmet, refusing):  # noqa: F811
    """The test sender, plus the PACS as a source and plain FHIR recipients with each
    kind of DICOM destination (none, an Orthanc, the refusing SCP)."""
    sender_config["sources"]["pacs"] = {
        "kind": "dicom", "organization": SENDER_ORG, "data_class": "imaging",
        "endpoint": f"dicom://ORTHANC@127.0.0.1:{dicom.orthanc.dicom_port}",
        "options": dicom.options()}
    plain = {"base_url": sekmet, "kind": "fhir", "organization": PLAIN_ORG}
    sender_config["peers"].update({
        "plain-pacs": {**plain, "dicom": {"kind": "c-store", "host": "127.0.0.1",
                                          "port": dicom.recipient.dicom_port,
                                          "ae_title": "RECIPIENT"}},
        "plain-refusing": {**plain, "dicom": {"kind": "c-store", "host": "127.0.0.1",
                                              "port": refusing.port, "ae_title": refusing.aet}},
        "plain-none": plain})
    return sender_config


@pytest.fixture
def stack(app, client, operator, processes, sender_config, receiver_config, tmp_path):
    return _stack_class()(app, client, operator, processes, sender_config, receiver_config,
                          tmp_path)


def upload_study(dicom, tmp_path, n: int = 24):
    pid = f"PAT-GW-{uuid.uuid4().hex[:8]}"
    study = make_study(tmp_path / pid, n, 2, patient_id=pid, rows=64, cols=64)
    dicom.orthanc.upload(study.files)
    return study


def transfer(stack, sign, dicom, study, recipient: str, org: str, address: str, **kw) -> str:
    claims = example_claims(
        ISSUER, f"auth-{uuid.uuid4().hex[:12]}",
        patient={"name": {"family": "Doe", "given": ["Jane"]}, "birthDate": "1970-01-01",
                 "identifiers": [{"system": MRN, "value": study.patient_id}]},
        disclosers=[{"id": SENDER_ORG, "name": "Test Hospital", "endpoints": [
            {"type": "dicom", "address": f"dicom://ORTHANC@127.0.0.1:{dicom.orthanc.dicom_port}"}]}],
        recipient={"id": org, "name": "Recipient", "endpoint": {"type": "gateway", "address": address}},
        **kw)
    auth_id = stack.authorize(claims, sign)
    r = stack.client.post("/transfers", json={"authorization": auth_id, "sources": ["pacs"],
                                              "recipient": recipient}, headers=stack.operator)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def source_data_sets(study) -> dict[str, str]:
    return {sop: hashlib.sha256(data_set(f.read_bytes())).hexdigest()
            for sop, f in zip(study.sop_uids_in_file_order(), study.files)}


def sender_items(stack, tid: str) -> dict[str, Item]:
    with stack.app.extensions["gateway"].db.session() as s:
        return {i.record_meta["sop_instance_uid"]: i for i in s.scalars(
            select(Item).filter_by(transfer_id=tid, kind="dicom"))}


def test_study_to_a_receiving_gateway_by_stow_rs(stack, sign, dicom, tmp_path, receiver_url,
                                                 receiver_config):
    study = upload_study(dicom, tmp_path)
    stack.start_receiver()
    tid = transfer(stack, sign, dicom, study, "center", RECEIVER_ORG, receiver_url)
    view = stack.wait_state(tid, TERMINAL, timeout=240)
    assert view["state"] == "completed", view["reason"]
    assert view["items"] == {"mapped": 25}  # 24 instances beside + the study's manifest
    receipt = view["receipt"]
    assert receipt["dicomInstances"] == {study.study_uid: 24} == receipt["dicomListed"]
    assert receipt["dicomForwarded"]["instances"] == 24
    items = sender_items(stack, tid)
    assert sorted(items) == sorted(study.sop_uids)
    # pulled straight into the encrypted blob store: one blob each, no plaintext left over
    sender = stack.app.extensions["gateway"]
    assert len({i.blob_key for i in items.values()}) == 24
    for item in items.values():
        assert hashlib.sha256(sender.blobs.read_bytes(item.blob_key)).hexdigest() == item.sha256
    work = Path(stack.sender_config["data_dir"]) / "work" / tid
    assert [p for p in work.rglob("*") if p.is_file()] == []
    # the images went once, while the bundle was assembled: before it was, and before it left
    with sender.db.session() as s:
        kinds = s.scalars(select(AuditEvent.type).filter_by(transfer_id=tid)
                          .order_by(AuditEvent.seq)).all()
    assert kinds.count("transfer.dicom.forward.started") == 1
    assert kinds.index("transfer.state.assembling") < kinds.index("transfer.dicom.forward.started") \
        < kinds.index("transfer.dicom.forward.finished") < kinds.index("transfer.delivery.attempt")
    # the bundle describes the study; the instances are not in it
    [received] = stack.inbox()
    bundle = stack.received_bundle(received["id"])
    resources = [e["resource"] for e in bundle["entry"]]
    [imaging] = [r for r in resources if r["resourceType"] == "ImagingStudy"]
    assert imaging["identifier"][0]["value"] == f"urn:oid:{study.study_uid}"
    assert imaging["numberOfInstances"] == 24 and imaging["numberOfSeries"] == 2
    assert imaging["contained"][0]["resourceType"] == "Endpoint"
    assert {i["uid"] for s in imaging["series"] for i in s["instance"]} == set(study.sop_uids)
    assert any(r["resourceType"] == "DocumentReference" and r.get("context", {}).get("related")
               and r["context"]["related"][0]["identifier"]["value"] == f"urn:oid:{study.study_uid}"
               for r in resources)
    assert not any(r["resourceType"] == "Binary" and r.get("contentType") == "application/dicom"
                   for r in resources)
    url = receiver_config["base_url"]
    [listed] = requests.get(f"{url}/inbox/{received['id']}/studies", headers=stack.inbox_headers,
                            timeout=10).json()["studies"]
    assert listed["instances"] == listed["instancesReceived"] == 24
    # the center retrieves the images from its inbox (WADO-RS style): the source's bytes
    got = requests.get(url + listed["retrieve"], headers=stack.inbox_headers, timeout=30)
    assert got.status_code == 200, got.text
    boundary = got.headers["Content-Type"].split("boundary=")[1].encode()
    bodies = [p.split(b"\r\n\r\n", 1)[1][:-2] for p in got.content.split(b"--" + boundary)[1:-1]]
    assert sorted(hashlib.sha256(b).hexdigest() for b in bodies) == \
        sorted(i.sha256 for i in sender_items(stack, tid).values())
    sop = study.sop_uids[0]
    one = requests.get(f"{url}{listed['retrieve']}/instances/{sop}", headers=stack.inbox_headers,
                       timeout=30)
    assert one.headers["Content-Type"] == "application/dicom"
    assert hashlib.sha256(one.content).hexdigest() == sender_items(stack, tid)[sop].sha256
    for path in (f"/inbox/{received['id']}/studies/1.2.3.4", f"{listed['retrieve']}/instances/../x",
                 f"/inbox/{received['id']}/studies/..%2F..%2Fetc"):
        assert requests.get(url + path, headers=stack.inbox_headers, timeout=10).status_code == 404
    # the receiver holds each instance with the sender's sha256, the source's data set
    from gateway import create_app

    receiver = create_app(receiver_config)
    svc = receiver.extensions["gateway"]
    with svc.db.session() as s:
        rows = s.scalars(select(ReceivedInstance)).all()
    assert {r.sop_instance_uid: r.sha256 for r in rows} == {k: i.sha256 for k, i in items.items()}
    # the accepted bundle took them: the sweep of uploads no bundle took leaves them be
    assert {r.bundle_id for r in rows} == {received["id"]}
    sources = source_data_sets(study)
    for row in rows:
        body = svc.blobs.read_bytes(row.blob_key)
        assert hashlib.sha256(body).hexdigest() == row.sha256
        assert hashlib.sha256(data_set(body)).hexdigest() == sources[row.sop_instance_uid]
    svc.close()


def test_images_go_while_another_source_still_waits(stack, sign, dicom, tmp_path, receiver_url,
                                                    receiver_config, drop_dir):
    """The study's instances leave as soon as the PACS pull ends, not after the slowest
    source: here a folder that has no documents yet."""
    study = upload_study(dicom, tmp_path)
    stack.start_receiver()
    claims = example_claims(
        ISSUER, f"auth-{uuid.uuid4().hex[:12]}",
        patient={"name": {"family": "Doe", "given": ["Jane"]}, "birthDate": "1970-01-01",
                 "identifiers": [{"system": MRN, "value": study.patient_id}]},
        disclosers=[{"id": SENDER_ORG, "name": "Test Hospital", "endpoints": [
            {"type": "dicom", "address": f"dicom://ORTHANC@127.0.0.1:{dicom.orthanc.dicom_port}"},
            {"type": "pdf-folder", "address": str(drop_dir)}]}],
        recipient={"id": RECEIVER_ORG, "name": "Recipient",
                   "endpoint": {"type": "gateway", "address": receiver_url}})
    auth_id = stack.authorize(claims, sign)
    r = stack.client.post("/transfers", json={"authorization": auth_id, "sources": ["pacs", "records"],
                                              "recipient": "center"}, headers=stack.operator)
    assert r.status_code == 202, r.get_json()
    tid = r.get_json()["id"]
    from tests.helpers import wait_until, write_pdfs

    def forwarded():  # the PACS source is marked done once its instances went
        items = sender_items(stack, tid)
        done = {s["name"]: s["state"] for s in stack.view(tid)["sources"]}["pacs"] == "done"
        return done and len(items) == 24 and all(i.forwarded_at for i in items.values()) and items
    items = wait_until(forwarded, 240, 0.2, "the PACS pulled and its instances forwarded")
    view = stack.view(tid)
    assert view["state"] == "pulling"  # the folder has nothing yet
    from gateway import create_app

    receiver = create_app(receiver_config)
    rsvc = receiver.extensions["gateway"]
    with rsvc.db.session() as s:  # held by the recipient, no bundle has taken them yet
        held = {r.sop_instance_uid: r.sha256 for r in s.scalars(select(ReceivedInstance))}
    rsvc.close()
    assert held == {sop: i.sha256 for sop, i in items.items()}
    sent = write_pdfs(drop_dir / tid, count=1)
    view = stack.wait_state(tid, TERMINAL, timeout=240)
    assert view["state"] == "completed", view["reason"]
    assert view["receipt"]["dicomInstances"] == {study.study_uid: 24}
    assert view["receipt"]["dicomForwarded"]["instances"] == 24
    [received] = stack.inbox()
    assert binaries(stack.received_bundle(received["id"])) == set(sent)
    with stack.app.extensions["gateway"].db.session() as s:
        kinds = s.scalars(select(AuditEvent.type).filter_by(transfer_id=tid)
                          .order_by(AuditEvent.seq)).all()
    assert kinds.count("transfer.dicom.forward.started") == 1  # once, during the pull
    assert kinds.index("transfer.dicom.forward.finished") < kinds.index("transfer.state.mapping")


def test_a_study_under_an_imaging_only_authorization_is_taken(stack, sign, dicom, tmp_path, receiver_url):
    """The receiver classes the study's ImagingStudy and its DocumentReference (LOINC
    18748-4, a radiology type, pointing at DICOM images) as "imaging", as the sender
    released them: the delivery is taken whole (issue 13, item 3)."""
    study = upload_study(dicom, tmp_path, n=4)
    stack.start_receiver()
    tid = transfer(stack, sign, dicom, study, "center", RECEIVER_ORG, receiver_url,
                   data_classes=("imaging",))
    view = stack.wait_state(tid, TERMINAL, timeout=240)
    assert view["state"] == "completed", view["reason"]
    assert view["receipt"]["status"] == "accepted"
    assert view["receipt"]["dicomInstances"] == {study.study_uid: 4}
    [received] = stack.inbox()
    kinds = sorted(e["resource"]["resourceType"] for e in stack.received_bundle(received["id"])["entry"])
    assert kinds.count("ImagingStudy") == 1 and kinds.count("DocumentReference") == 3  # + summary, manifest


def test_plain_fhir_recipient_gets_the_images_by_c_store(stack, sign, dicom, tmp_path, sekmet):  # noqa: F811
    study = upload_study(dicom, tmp_path)
    tid = transfer(stack, sign, dicom, study, "plain-pacs", PLAIN_ORG, sekmet)
    view = stack.wait_state(tid, TERMINAL, timeout=240)
    assert view["state"] == "completed", view["reason"]
    assert view["receipt"]["kind"] == "unsigned-acknowledgment"
    assert view["receipt"]["dicomForwarded"] == {"instances": 24,
                                                 "outcomes": {"c-store 0x0000": 24}}
    orthanc = dicom.recipient.url
    [found] = requests.post(f"{orthanc}/tools/lookup", data=study.study_uid, timeout=10).json()
    held = requests.get(f"{orthanc}/studies/{found['ID']}/instances", timeout=10).json()
    assert len(held) == 24
    sources = source_data_sets(study)
    for inst in held:
        sop = inst["MainDicomTags"]["SOPInstanceUID"]
        body = requests.get(f"{orthanc}/instances/{inst['ID']}/file", timeout=10).content
        assert hashlib.sha256(data_set(body)).hexdigest() == sources[sop]
    # the ImagingStudy reached the FHIR server
    found = requests.get(f"{sekmet}/ImagingStudy", params={
        "identifier": f"urn:dicom:uid|urn:oid:{study.study_uid}"}, timeout=10).json()
    assert found.get("total", len(found.get("entry", []))) >= 1


def test_resumed_delivery_sends_only_the_missing_instances(stack, sign, dicom, tmp_path,
                                                           sekmet, refusing):  # noqa: F811
    study = upload_study(dicom, tmp_path)
    tid = transfer(stack, sign, dicom, study, "plain-refusing", PLAIN_ORG, sekmet)
    from tests.helpers import wait_until

    # the destination takes 10, then is out of resources: the step retries
    wait_until(lambda: refusing.refused >= 28, 240, 0.2, "two refused forwarding attempts")
    # the refusals come before the delivering step records its failed attempt's reason
    view = wait_until(lambda: (v := stack.view(tid))["reason"] and v, 60, 0.1,
                      "the refused attempt's reason")
    assert view["state"] == "delivering" and "not yet accepted" in view["reason"]
    assert len(refusing.stored) == 10 and view["bundles"][0]["state"] == "assembled"
    accepted_before = refusing.c_stores - refusing.refused
    refusing.open_up()
    view = stack.wait_state(tid, TERMINAL, timeout=120)
    assert view["state"] == "completed", view["reason"]
    assert sorted(refusing.stored) == sorted(study.sop_uids)
    # no instance went twice: the resumed attempts sent only the 14 missing ones
    assert accepted_before == 10 and refusing.c_stores - refusing.refused == 24
    assert all(i.forwarded_at is not None for i in sender_items(stack, tid).values())
    assert [i["forwarded"] for i in view["itemList"] if i["kind"] == "dicom"] == \
        ["c-store 0x0000"] * 24
    sources = source_data_sets(study)
    assert refusing.stored == sources
    finished = [e.detail for e in stack.events("transfer.dicom.forward.finished")
                if e.transfer_id == tid]
    assert finished[0]["sent"] == 10 and finished[0]["unconfirmed"] == 14
    assert finished[-1]["sent"] == 14 and finished[-1]["unconfirmed"] == 0


def test_instances_to_a_recipient_without_a_dicom_destination_fail_clearly(
        stack, sign, dicom, tmp_path, sekmet):  # noqa: F811
    study = upload_study(dicom, tmp_path, n=4)
    tid = transfer(stack, sign, dicom, study, "plain-none", PLAIN_ORG, sekmet)
    view = stack.wait_state(tid, TERMINAL, timeout=240)
    assert view["state"] == "failed"
    assert "no DICOM destination for the 4 DICOM instance(s)" in view["reason"]
    with stack.app.extensions["gateway"].db.session() as s:
        assert s.scalars(select(AuditEvent).filter_by(type="transfer.delivery.sent")).all() == []
