"""Nothing in clear at rest: after a whole transfer, neither gateway's database (the SQLite
files with their WAL, or a pg_dump of the PostgreSQL database) nor anything else in its
data dir (blob store, work folders, broker) holds the patient's name, birth date, MRN, a
record's text or its bytes, plain or in any form an attacker would decode."""
from __future__ import annotations

import subprocess

import pytest

from gateway.cli.demo import make_pdf
from tests.helpers import throwaway_database
from tests.security.imaging import pacs_fixture, start_imaging_transfer  # noqa: F401
from tests.security.phi import Patient, find, find_in_tree
from tests.test_transfer_flow import TERMINAL, Stack


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def databases(request, sender_config, receiver_config):
    """Both gateways on the backend under test; yields their URLs (None: SQLite files)."""
    if request.param == "sqlite":
        yield None, None
        return
    with throwaway_database() as sender_url, throwaway_database() as receiver_url:
        sender_config["database_url"] = sender_url
        receiver_config["database_url"] = receiver_url
        yield sender_url, receiver_url


def _pg_dump(url: str) -> bytes:
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    done = subprocess.run(["pg_dump", "--data-only", plain], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-500:]
    return done.stdout


def test_nothing_in_clear_at_rest(databases, request, claims_for, sign, drop_dir, tmp_path):
    patient = Patient.new()
    stack = Stack(*(request.getfixturevalue(name) for name in
                    ("app", "client", "operator", "processes", "sender_config", "receiver_config")),
                  tmp_path)
    stack.start_receiver()
    auth_id = stack.authorize(claims_for(patient=patient.claims_patient()), sign)
    tid = stack.transfer(auth_id)
    staging = tmp_path / "staging"
    staging.mkdir()
    finding = f"Finding {patient.given[2:]}{patient.family[2:]} in the left lobe"
    pdf = staging / f"{patient.family}-{patient.birth_date}-report.pdf"  # names carry names
    make_pdf(pdf, "Report", [finding, "synthetic"], patient.claims_patient())
    record = pdf.read_bytes()
    staging.rename(drop_dir / tid)
    view = stack.wait_state(tid, TERMINAL)
    assert view["state"] == "completed", view["reason"]

    needles = {**patient.needles(), "document text": finding.encode(),
               "document bytes": record[len(record) // 2:len(record) // 2 + 48]}
    assert "document bytes" in find(needles, record)
    # the answers still name the patient: the columns are decrypted on the way out
    shown = stack.client.get(f"/authorizations/{auth_id}", headers=stack.operator)
    assert patient.family in shown.get_data(as_text=True)
    assert patient.family in stack.view(tid)["itemList"][0]["origin"]
    [received] = stack.inbox()
    bundle = stack.received_bundle(received["id"])
    [person] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert person["name"][0]["family"] == patient.family

    hits = {}
    for side in ("sender", "receiver"):
        hits.update({f"{side}/{path}": found for path, found in
                     find_in_tree(needles, tmp_path / side).items()})
    for side, url in zip(("sender", "receiver"), databases):
        if url is not None:
            found = find(needles, _pg_dump(url))
            if found:
                hits[f"{side} pg_dump"] = found
    assert hits == {}


def test_no_image_or_patient_in_clear_at_rest(pacs, request, sender_config, receiver_url, sign,
                                              tmp_path):
    """The same with a CT study: C-FIND by MRN, C-MOVE into the sender, STOW-RS to the
    receiver; neither side keeps a pixel, the name or the MRN in clear."""
    patient = Patient.new()
    study, pixels = pacs.upload_study(tmp_path / "generated", patient)
    sender_config["sources"]["pacs"] = pacs.source()  # before the sender's app is made
    stack = Stack(*(request.getfixturevalue(name) for name in
                    ("app", "client", "operator", "processes", "sender_config", "receiver_config")),
                  tmp_path)
    stack.start_receiver()
    tid = start_imaging_transfer(stack, sign, pacs, patient, receiver_url)
    view = stack.wait_state(tid, TERMINAL, timeout=240)
    assert view["state"] == "completed", view["reason"]
    assert view["receipt"]["dicomInstances"] == {study.study_uid: 4}

    needles = {**patient.needles(), "pixel data": pixels}
    assert find(needles, study.files[0].read_bytes()) >= {"pixel data", "family name", "MRN"}
    hits = {}
    for side in ("sender", "receiver"):
        hits.update({f"{side}/{path}": found for path, found in
                     find_in_tree(needles, tmp_path / side).items()})
    assert hits == {}
