"""Records never in logs: a whole transfer (authorization imported, a PDF pulled, mapped,
delivered, receipted, the bundle opened, its "opened" receipt and the second opinion sent
back) with every logger of every process at DEBUG (ours, SQLAlchemy, Celery, kombu,
requests, urllib3, werkzeug), and nothing any of them wrote names the patient or quotes a
record, in clear or base64."""
from __future__ import annotations

import http.client
import logging
import os

import pytest
import requests

from gateway.cli.demo import make_pdf
from tests.helpers import RECEIVER_ORG, bearer, make_token
from tests.security.imaging import pacs_fixture, start_imaging_transfer  # noqa: F401
from tests.security.phi import Patient, find
from tests.test_transfer_flow import TERMINAL, Stack

LIBRARIES = ("gateway", "sqlalchemy", "sqlalchemy.engine", "sqlalchemy.pool", "alembic", "celery",
             "kombu", "requests", "urllib3", "werkzeug", "pynetdicom", "joserfc")


DEBUG = ("--log-level", "DEBUG")  # the root logger of a `records-gateway` process


@pytest.fixture
def debug_everything(caplog, monkeypatch, tmp_path, sender_config, receiver_config):
    """Every logger at DEBUG: in this process, and in every process started after it (a
    sitecustomize runs before any library is imported; SQLAlchemy's default is WARNING)."""
    caplog.set_level(logging.DEBUG)
    for name in LIBRARIES:
        caplog.set_level(logging.DEBUG, logger=name)
    hook = tmp_path / "debug-everything"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        f"import logging\nfor name in {LIBRARIES!r}:\n    logging.getLogger(name).setLevel(logging.DEBUG)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    for config in (sender_config, receiver_config):
        config["log_level"] = "DEBUG"  # Celery's own level in the worker


def everything_logged(caplog, capfd, procs) -> dict[str, bytes]:
    """What this process and each of `procs` (stopped first, so nothing stays buffered) wrote."""
    for proc in procs:
        proc.stop()
    out, err = capfd.readouterr()
    written = {"in-process (caplog)": caplog.text.encode(),
               "in-process (stdout, stderr)": (out + err).encode()}
    written.update({proc.name: proc.log_path.read_bytes() for proc in procs})
    # every process logged at DEBUG, its database statements too
    assert all(b"DEBUG" in text and b"sqlalchemy.engine.Engine" in text
               for name, text in written.items() if "stdout" not in name)
    return written


def test_records_never_in_logs(debug_everything, app, client, operator, processes, sender_config,
                               receiver_config, claims_for, sign, drop_dir, tmp_path, caplog, capfd):
    debug = DEBUG
    # the way back: the center's gateway posts "opened" receipts and replies to the hospital's API
    receiver_url = receiver_config["base_url"]
    (tmp_path / "center-token").write_text(make_token(app, "peer", "test-center"))
    receiver_config["senders"]["test-hospital"].update(
        base_url=f"http://127.0.0.1:{sender_config['port']}", token_file=str(tmp_path / "center-token"))
    sender_config["senders"] = {"test-center": {"organization": RECEIVER_ORG,
                                                "jwks_url": f"{receiver_url}/.well-known/jwks.json"}}
    api = processes(sender_config, tmp_path, "hospital-api", *debug, "serve", "--no-worker").wait_http()
    stack = Stack(app, client, operator, processes, sender_config, receiver_config, tmp_path,
                  worker_args=(*debug, "worker", "--beat"))
    stack.receiver = processes(receiver_config, tmp_path, "receiver", *debug, "serve",
                               "--receive").wait_http()

    patient = Patient.new()
    auth_id = stack.authorize(claims_for(patient=patient.claims_patient()), sign)
    tid = stack.transfer(auth_id)
    staging = tmp_path / "staging"
    staging.mkdir()
    finding = f"Finding {patient.given[2:]}{patient.family[2:]} in the left lobe"
    make_pdf(staging / f"{patient.family}-{patient.birth_date}-report.pdf", "Report",
             [finding, "synthetic"], patient.claims_patient())
    staging.rename(drop_dir / tid)
    view = stack.wait_state(tid, TERMINAL)
    assert view["state"] == "completed", view["reason"]
    [received] = stack.inbox()
    bundle = stack.received_bundle(received["id"])
    assert patient.family in str(bundle)  # the records did travel
    opened = requests.post(f"{receiver_url}/inbox/{received['id']}/opened",
                           headers=stack.inbox_headers, timeout=30).json()
    assert opened["senderNotified"] is True
    assert stack.view(tid)["bundles"][0]["opened"]["openedBy"] == "staff"
    opinion_text = f"Synthetic opinion on {patient.given} {patient.family}: agree"
    reply = requests.post(f"{receiver_url}/inbox/{received['id']}/reply", headers=stack.inbox_headers,
                          json={"resource": {"resourceType": "DiagnosticReport", "status": "final",
                                             "code": {"text": "Second opinion"},
                                             "issued": "2026-11-22T10:00:00+00:00",
                                             "conclusion": opinion_text}}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["receipt"]["status"] == "accepted"
    assert stack.client.get(f"/authorizations/{auth_id}", headers=operator).status_code == 200
    # an auditor's accounting of disclosures names the patient in a header (sent with
    # http.client: this test's own HTTP client logs nothing)
    conn = http.client.HTTPConnection("127.0.0.1", sender_config["port"], timeout=30)
    conn.request("GET", "/audit/accounting", headers={
        **bearer(make_token(app, "auditor")),
        "X-Patient": f"urn:oid:2.16.840.1.113883.19.5|{patient.mrn}"})
    assert conn.getresponse().status == 200
    conn.close()
    assert stack.client.get(f"/transfers/{tid}", headers=operator).status_code == 200

    written = everything_logged(caplog, capfd, (stack.worker, stack.receiver, api))
    needles = {**patient.needles(), "document text": finding.encode(),
               "opinion text": opinion_text.encode()}
    hits = {where: found for where, text in written.items() if (found := find(needles, text))}
    assert hits == {}


def test_a_patient_search_leaves_no_identifier_in_logs(tmp_path, caplog):
    """The FHIR connector finds the patient by MRN (`Patient?identifier=`): urllib3 logs the
    request line at DEBUG, but not its query. Later requests carry only the server's own
    logical id of the patient (`Patient/{id}/$everything`), not a business identifier."""
    from connectors.base import PatientIdentifier, RawRecord, RecordQuery
    from connectors.fhir.connector import FhirRestConnector
    from tests.fhir.fault_peer import FaultPeer, observation
    from tests.fhir.fault_peer import patient as fhir_patient

    caplog.set_level(logging.DEBUG)
    for name in LIBRARIES:
        caplog.set_level(logging.DEBUG, logger=name)
    person = Patient.new()
    peer = FaultPeer().start()
    try:
        peer.add(fhir_patient("p1", person.mrn, family=person.family, birth=person.birth_date),
                 observation("o1", "p1"))
        query = RecordQuery("a", "t", identifiers=(PatientIdentifier("urn:mrn", person.mrn),))
        options = {"base_url": peer.base_url, "backoff": 0.05, "max_retries": 1, "timeout": [2, 2]}
        with FhirRestConnector("ehr", options, tmp_path) as conn:
            records = [r for r in conn.fetch(query) if isinstance(r, RawRecord)]
    finally:
        peer.stop()
    assert records  # the patient was found and pulled
    assert "urllib3.connectionpool" in caplog.text and "Patient" in caplog.text
    assert find(person.needles(), caplog.text.encode()) == set()


def test_images_never_in_logs(debug_everything, pacs, request, sender_config, receiver_config,
                              receiver_url, sign, tmp_path, caplog, capfd):
    """C-FIND by MRN and C-MOVE from a PACS, STOW-RS to the receiver, every logger at DEBUG
    (pynetdicom's too: it can dump query identifiers): no name, birth date, MRN or pixel."""
    patient = Patient.new()
    study, pixels = pacs.upload_study(tmp_path / "generated", patient)
    sender_config["sources"]["pacs"] = pacs.source()  # before the sender's app is made
    stack = Stack(*(request.getfixturevalue(name) for name in
                    ("app", "client", "operator", "processes", "sender_config", "receiver_config")),
                  tmp_path, worker_args=(*DEBUG, "worker", "--beat"))
    stack.receiver = stack.processes(receiver_config, tmp_path, "receiver", *DEBUG, "serve",
                                     "--receive").wait_http()
    tid = start_imaging_transfer(stack, sign, pacs, patient, receiver_url)
    view = stack.wait_state(tid, TERMINAL, timeout=240)
    assert view["state"] == "completed", view["reason"]
    assert view["receipt"]["dicomInstances"] == {study.study_uid: 4}

    written = everything_logged(caplog, capfd, (stack.worker, stack.receiver))
    assert b"pynetdicom" in written[stack.worker.name]  # the DICOM exchange was logged
    needles = {**patient.needles(), "pixel data": pixels}
    hits = {where: found for where, text in written.items() if (found := find(needles, text))}
    assert hits == {}
