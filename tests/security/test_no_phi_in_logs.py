"""Records never in logs: a whole transfer (authorization imported, a PDF pulled, mapped,
delivered, receipted, the bundle opened, its "opened" receipt and the second opinion sent
back) with every logger of every process at DEBUG (ours, SQLAlchemy, Celery, kombu,
requests, urllib3, werkzeug), and nothing any of them wrote names the patient or quotes a
record, in clear or base64."""
from __future__ import annotations

import logging
import os

import requests

from gateway.cli.demo import make_pdf
from tests.helpers import RECEIVER_ORG, make_token
from tests.security.phi import Patient, find
from tests.test_transfer_flow import TERMINAL, Stack

LIBRARIES = ("gateway", "sqlalchemy", "sqlalchemy.engine", "sqlalchemy.pool", "alembic", "celery",
             "kombu", "requests", "urllib3", "werkzeug", "pynetdicom", "joserfc")


def test_records_never_in_logs(app, client, operator, processes, sender_config, receiver_config,
                               claims_for, sign, drop_dir, tmp_path, caplog, capfd, monkeypatch):
    caplog.set_level(logging.DEBUG)  # the root logger: the in-process API and its libraries
    for name in LIBRARIES:  # some set their own default (SQLAlchemy: WARNING)
        caplog.set_level(logging.DEBUG, logger=name)
    # the same in every process started below, before any library is imported
    hook = tmp_path / "debug-everything"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        f"import logging\nfor name in {LIBRARIES!r}:\n    logging.getLogger(name).setLevel(logging.DEBUG)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    for config in (sender_config, receiver_config):
        config["log_level"] = "DEBUG"  # Celery's own level in the worker
    debug = ("--log-level", "DEBUG")
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
    assert stack.client.get(f"/transfers/{tid}", headers=operator).status_code == 200

    procs = (stack.worker, stack.receiver, api)
    for proc in procs:
        proc.stop()  # everything it buffered is written
    written = {"in-process (caplog)": caplog.text.encode()}
    out, err = capfd.readouterr()
    written["in-process (stdout, stderr)"] = (out + err).encode()
    for proc in procs:
        written[proc.name] = proc.log_path.read_bytes()
    # every process logged at DEBUG, its database statements too
    assert all(b"DEBUG" in text and b"sqlalchemy.engine.Engine" in text for text in
               [caplog.text.encode(), *(written[proc.name] for proc in procs)])

    needles = {**patient.needles(), "document text": finding.encode(),
               "opinion text": opinion_text.encode()}
    hits = {where: found for where, text in written.items() if (found := find(needles, text))}
    assert hits == {}
