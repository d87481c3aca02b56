""""No records" from a hospital that runs this gateway, end to end, with two real
processes on loopback: the center asks the hospital; the hospital's operator marks its
source "no records" (while its pull waits, and again after a pull that failed); the
hospital delivers a signed bundle with no records, and the center sets the provider to
"no-records" and completes the request. A replayed or altered delivery changes nothing.
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid

import pytest
import requests
from sqlalchemy import select

from gateway import create_app
from gateway.storage.models import Transfer, TransferBundle
from gateway.trust.receipts import SIGNATURE_HEADER
from tests.center.conftest import form_for
from tests.center.test_center_flow import CENTER_ORG, FAST, Gateway, submit
from tests.helpers import free_port, wait_until


@pytest.fixture
def pair(tmp_path, processes):
    """A center and one hospital (a PDF folder source that waits for its folder)."""
    center_url = f"http://127.0.0.1:{free_port()}"
    drop = tmp_path / "drop"
    drop.mkdir()
    hosp = Gateway(tmp_path, processes, "hospital", {
        "organization": "org-hospital", "port": free_port(), "mode": "send",
        "trust_file": str(tmp_path / "trust.json"),
        "sources": {"records": {"kind": "pdf-folder", "organization": "org-hospital",
                                "endpoint": str(drop), "data_class": "notes", "auto": "start",
                                "options": {"path": str(drop)}}},
        "peers": {"center": {"base_url": center_url, "organization": CENTER_ORG,
                             "token_file": str(tmp_path / "hospital-to-center")}}})
    center = Gateway(tmp_path, processes, "center", {
        "organization": CENTER_ORG, "port": int(center_url.rsplit(":", 1)[1]), "mode": "both",
        "senders": {"hospital": {"organization": "org-hospital", "jwks_file": hosp.jwks()}},
        "center": {"name": "Test Center", "issuer": "https://center.test/intake",
                   "providers": {"hospital": {
                       "name": "General Hospital", "kind": "gateway",
                       "organization": "org-hospital",
                       "endpoints": [{"type": "pdf-folder", "address": str(drop)}],
                       "base_url": hosp.url, "token_file": str(tmp_path / "center-to-hospital")}}}})
    (tmp_path / "trust.json").write_text(center.cli("requests", "issuer-jwks"))
    center.token("hospital", "peer", tmp_path / "hospital-to-center")
    hosp.token("center", "peer", tmp_path / "center-to-hospital")
    center.staff = {"Authorization": "Bearer " + center.token("intake-desk", "operator")}
    hosp.operator = {"Authorization": "Bearer " + hosp.token("records-office", "operator")}
    for gw in (center, hosp):
        gw.start()
    return center, hosp, drop, tmp_path


def request_view(center, request_id: str) -> dict:
    r = requests.get(f"{center.url}/center/requests/{request_id}", headers=center.staff, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def hospital_case(hosp, authorization_id: str) -> dict | None:
    listed = requests.get(f"{hosp.url}/cases", headers=hosp.operator, timeout=10).json()["cases"]
    case = next((c for c in listed if c["authorization"] == authorization_id), None)
    if case is None:
        return None
    return requests.get(f"{hosp.url}/cases/{case['id']}", headers=hosp.operator, timeout=10).json()


def mark_no_records(hosp, case_id: str, reason: str) -> dict:
    r = requests.post(f"{hosp.url}/cases/{case_id}/sources/records/no-records",
                      json={"reason": reason}, headers=hosp.operator, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def delivered_bundle(hosp, authorization_id: str) -> tuple[bytes, TransferBundle]:
    """The bundle the hospital delivered under this authorization, as it went."""
    app = create_app(hosp.config)
    svc = app.extensions["gateway"]
    try:
        with svc.db.session() as s:
            part = s.scalars(select(TransferBundle).join(Transfer).where(
                Transfer.authorization_id == authorization_id,
                Transfer.state == "completed")).one()
            s.expunge(part)
        return svc.blobs.read_bytes(part.blob_key), part
    finally:
        svc.close()


def deliver(center, token: str, body: bytes, key: str, signature: str) -> requests.Response:
    return requests.post(f"{center.url}/fhir", data=body, timeout=30, headers={
        "Content-Type": "application/fhir+json", "Accept": "application/fhir+json",
        "Authorization": f"Bearer {token}", "Idempotency-Key": key, SIGNATURE_HEADER: signature})


@pytest.mark.timeout(600)
def test_a_hospital_with_no_records_completes_the_request(pair):
    center, hosp, drop, tmp = pair
    form = form_for(providers=["hospital"])

    # 1. the hospital's operator says "no records" while its pull waits for the folder
    first = submit(center, center.staff, form)
    case = wait_until(lambda: hospital_case(hosp, first["authorization"]), 60, 0.3,
                      "the hospital's case")
    wait_until(lambda: request_view(center, first["id"])["providers"][0]["status"]
               == "acknowledged", 60, 0.3, "the hospital to acknowledge")
    assert request_view(center, first["id"])["state"] == "open"
    mark_no_records(hosp, case["id"], "no patient by that name in our records")
    done = wait_until(lambda: (v := request_view(center, first["id"]))["state"] == "complete"
                      and v, 120, 0.5, "the center's request to complete")
    [p] = done["providers"]
    assert p["status"] == "no-records" and p["error"] is None
    assert p["arrived"] == {"bundles": 1, "documents": 0, "resources": 0, "byType": {}}
    assert done["completedAt"] is not None
    [transfer] = hospital_case(hosp, first["authorization"])["transfers"]
    assert transfer["state"] == "completed" and transfer["receipt"]

    # 2. a pull that failed for good (the folder is a link: refused), then "no records":
    # nothing is in flight any more, so the word goes in a transfer of its own
    second = submit(center, center.staff, form)
    case2 = wait_until(lambda: hospital_case(hosp, second["authorization"]), 60, 0.3,
                       "the hospital's second case")
    (tmp / "elsewhere").mkdir()
    (drop / second["authorization"]).symlink_to(tmp / "elsewhere")
    # the source fails first, then its transfer (its pulling step names every source's reason)
    failed = wait_until(lambda: (c := hospital_case(hosp, second["authorization"]))
                        and c["sources"][0]["status"] == "failed"
                        and [t["state"] for t in c["transfers"]] != ["pulling"] and c, 120, 0.3,
                        "the hospital's pull and its transfer to fail")
    assert [t["state"] for t in failed["transfers"]] == ["failed"]

    # an altered or replayed delivery does not answer for the hospital
    token = (tmp / "hospital-to-center").read_text().strip()
    body, part = delivered_bundle(hosp, first["authorization"])
    again = deliver(center, token, body, part.bundle_id, part.signature)  # a retry: same answer
    assert again.status_code == 200, again.text
    replayed = deliver(center, token, body, str(uuid.uuid4()), part.signature)
    assert replayed.status_code == 422 and "replay" in replayed.text
    forged_body = body.replace(first["authorization"].encode(), second["authorization"].encode())
    assert forged_body != body and hashlib.sha256(forged_body).digest() != hashlib.sha256(body).digest()
    forged = deliver(center, token, forged_body, str(uuid.uuid4()), part.signature)
    assert forged.status_code in (400, 401, 403, 422), forged.text
    assert json.loads(forged.text)["resourceType"] == "OperationOutcome"
    foreign = deliver(center, "not-a-peer-token", forged_body, str(uuid.uuid4()), part.signature)
    assert foreign.status_code == 401
    time.sleep(4 * FAST["case_tick_s"])  # the center's passes find nothing new
    view = request_view(center, second["id"])
    assert view["state"] == "open" and view["providers"][0]["status"] == "acknowledged"
    assert view["providers"][0]["arrived"] == {}
    assert request_view(center, first["id"])["providers"][0]["arrived"]["bundles"] == 1

    mark_no_records(hosp, case2["id"], "records office: nothing held for this patient")
    done = wait_until(lambda: (v := request_view(center, second["id"]))["state"] == "complete"
                      and v, 120, 0.5, "the second request to complete")
    assert done["providers"][0]["status"] == "no-records"
    assert done["providers"][0]["arrived"]["resources"] == 0
    runs = hospital_case(hosp, second["authorization"])
    assert runs["complete"] and runs["sources"][0]["status"] == "no-records"
    assert [t["state"] for t in runs["transfers"]] == ["failed", "completed"]
    assert runs["transfers"][1]["receipt"] and runs["transfers"][1]["sources"] == ["records"]
