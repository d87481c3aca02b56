"""The second-opinion center's request with real processes on loopback: the center takes
the patient's form once; two hospital gateways (a FHIR source on sekmet, a PDF folder)
start by themselves and deliver to it; a records office reachable only by fax gets its
request in the outbox and its faxed reply (behind the cover sheet) completes it; the
patient's status page shows each step; the patient's revocation stops the hospital
still pulling."""
from __future__ import annotations

import email
import io
import json
import re

import pypdfium2
import pytest
import requests
from pypdf import PdfReader, PdfWriter

from connectors.fax.cover import decode_cover
from gateway import create_app
from gateway.storage.blobstore import new_master_key
from tests.center.conftest import form_for
from tests.fhir.conftest import MRN_SYSTEM, sekmet, synthea_files  # noqa: F401 (fixtures)
from tests.helpers import free_port, wait_until, write_pdfs
from tests.test_transfer_flow import cli

CENTER_ORG = "org-center"
FAST = {"case_tick_s": 0.5, "step_lease_s": 5, "reconcile_interval_s": 1,
        "checkpoint_interval_s": 1, "fax_scan_interval_s": 0.5,
        "retry": {"base_delay_s": 0.2, "max_delay_s": 1.0, "max_attempts": 1000}}


class Gateway:
    """One `serve` process (API and its embedded worker) with its config and CLI."""

    def __init__(self, tmp_path, processes, name: str, config: dict):
        self.name, self.url = name, f"http://127.0.0.1:{config['port']}"
        self.config = {**FAST, "base_url": self.url, "blob_key": new_master_key(),
                       "data_dir": str(tmp_path / name), **config}
        self.file = tmp_path / f"{name}-cli.json"
        self.file.write_text(json.dumps(self.config))
        self.tmp, self.processes = tmp_path, processes
        self.cli("init")  # its keys

    def cli(self, *args) -> str:
        return cli(self.file, *args)

    def jwks(self) -> str:
        app = create_app(self.config)
        svc = app.extensions["gateway"]
        svc.keys.ensure()
        path = self.tmp / f"{self.name}-jwks.json"
        path.write_text(json.dumps(svc.keys.jwks()))
        svc.close()
        return str(path)

    def token(self, name: str, role: str, into=None) -> str:
        value = self.cli("token", "create", "--name", name, "--role", role)
        if into is not None:
            into.write_text(value)
        return value

    def start(self):
        self.file.write_text(json.dumps(self.config))
        self.proc = self.processes(self.config, self.tmp, self.name, "serve").wait_http(60)
        return self


@pytest.fixture
def world(tmp_path, processes, sekmet, mail):  # noqa: F811 (the sekmet fixture)
    center_port = free_port()
    center_url = f"http://127.0.0.1:{center_port}"
    drop_a = tmp_path / "hospital-a-drop"
    drop_a.mkdir()
    peer = {"base_url": center_url, "organization": CENTER_ORG}
    hosp_a = Gateway(tmp_path, processes, "hospital-a", {
        "organization": "org-hospital-a", "port": free_port(), "mode": "send",
        "trust_file": str(tmp_path / "trust.json"),
        "sources": {"records": {"kind": "pdf-folder", "organization": "org-hospital-a",
                                "endpoint": str(drop_a), "data_class": "notes", "auto": "start",
                                "options": {"path": str(drop_a)}}},
        "peers": {"center": {**peer, "token_file": str(tmp_path / "a-to-center")}}})
    hosp_b = Gateway(tmp_path, processes, "hospital-b", {
        "organization": "org-hospital-b", "port": free_port(), "mode": "send",
        "trust_file": str(tmp_path / "trust.json"),
        "sources": {"ehr": {"kind": "fhir-rest", "organization": "org-hospital-b",
                            "endpoint": sekmet.base_url, "auto": "start",
                            "options": {"base_url": sekmet.base_url, "auth": {"type": "none"}}}},
        "peers": {"center": {**peer, "token_file": str(tmp_path / "b-to-center")}}})
    for d in ("fax-out", "fax-replies", "fax-store"):
        (tmp_path / d).mkdir()
    center = Gateway(tmp_path, processes, "center", {
        "organization": CENTER_ORG, "port": center_port, "mode": "both",
        "senders": {"hospital-a": {"organization": "org-hospital-a", "jwks_file": hosp_a.jwks()},
                    "hospital-b": {"organization": "org-hospital-b", "jwks_file": hosp_b.jwks()}},
        "notify": {"interval_s": 0.5, "email": {
            "host": "127.0.0.1", "port": mail.port, "username": "gateway",
            "password_file": str(tmp_path / "smtp-password"), "ca_file": str(mail.ca),
            "from": "requests@center.example", "to": ["staff@center.example"], "events": []}},
        "center": {
            "name": "Test Second Opinion Center", "issuer": "https://center.test/intake",
            "fax_outbox": str(tmp_path / "fax-out"), "return_fax": "+1 555 0199",
            "fax_replies": {"drop": str(tmp_path / "fax-replies"), "store": str(tmp_path / "fax-store"),
                            "settle_seconds": 0, "file_settle_seconds": 0.3},
            "providers": {
                "hospital-a": {"name": "Hospital A", "kind": "gateway",
                               "organization": "org-hospital-a",
                               "endpoints": [{"type": "pdf-folder", "address": str(drop_a)}],
                               "base_url": hosp_a.url, "token_file": str(tmp_path / "center-to-a")},
                "hospital-b": {"name": "Hospital B", "kind": "gateway",
                               "organization": "org-hospital-b",
                               "endpoints": [{"type": "fhir", "address": sekmet.base_url}],
                               "base_url": hosp_b.url, "token_file": str(tmp_path / "center-to-b")},
                "office": {"name": "Valley Records Office", "kind": "fax",
                           "organization": "org-valley", "fax_number": "+1 555 0101",
                           "endpoints": [{"type": "fax", "address": "+1 555 0101"}]}}}})
    # trust: the hospitals trust the center's intake key; tokens both ways
    (tmp_path / "trust.json").write_text(center.cli("requests", "issuer-jwks"))
    center.token("hospital-a", "peer", tmp_path / "a-to-center")
    center.token("hospital-b", "peer", tmp_path / "b-to-center")
    hosp_a.token("center", "peer", tmp_path / "center-to-a")
    hosp_b.token("center", "peer", tmp_path / "center-to-b")
    staff = {"Authorization": "Bearer " + center.token("intake-desk", "operator")}
    for gw in (hosp_a, hosp_b):
        gw.operator = {"Authorization": "Bearer " + gw.token("records-office", "operator")}
    for gw in (center, hosp_a, hosp_b):
        gw.start()
    return {"center": center, "a": hosp_a, "b": hosp_b, "staff": staff, "drop_a": drop_a,
            "mail": mail, "tmp": tmp_path, "sekmet": sekmet}


def submit(center, staff, form: dict) -> dict:
    token = requests.post(f"{center.url}/center/forms", headers=staff, timeout=10).json()["formToken"]
    r = requests.post(f"{center.url}/center/requests", json={**form, "form_token": token},
                      headers=staff, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()


def status_link(mail, n: int) -> str:
    msgs = wait_until(lambda: len(mail.messages) >= n and mail.messages, 30, 0.2, "the status link mail")
    body = email.message_from_bytes(msgs[n - 1]["content"]).get_payload(decode=True).decode()
    return re.search(r"/my-request\?t=(\S+)", body).group(1)


def status(center, token: str) -> dict:
    r = requests.get(f"{center.url}/center/status", headers={"X-Status-Token": token}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def provider(view: dict, name: str) -> dict:
    return next(p for p in view["providers"] if p["name"] == name)


def wait_status(center, token, check, what, timeout=180) -> dict:
    return wait_until(lambda: (v := status(center, token)) and check(v) and v, timeout, 0.5, what)


@pytest.mark.timeout(1500)  # seven processes on a small machine
def test_one_request_asks_every_provider_and_the_patient_follows_it(world):
    center, staff, mail, tmp = world["center"], world["staff"], world["mail"], world["tmp"]
    patient = world["sekmet"].patients[0]["patient"]
    mrn = next(i for i in patient["identifier"] if i.get("system") == MRN_SYSTEM)
    form = form_for(providers=["hospital-a", "hospital-b", "office"],
                    family_name=patient["name"][0]["family"],
                    given_name=patient["name"][0]["given"][0], birth_date=patient["birthDate"],
                    identifier_system=mrn["system"], identifier_value=mrn["value"],
                    questions="Do I need the operation?\nWhat are the alternatives?")
    made = submit(center, staff, form)
    token = status_link(mail, 1)
    assert mail.messages[0]["to"] == [form["email"]] and mail.messages[0]["tls"]
    first = status(center, token)
    assert {p["name"] for p in first["providers"]} == {"Hospital A", "Hospital B",
                                                       "Valley Records Office"}
    said = json.dumps(first)
    assert form["family_name"] not in said and form["identifier_value"] not in said

    # hospital B pulls its FHIR server by itself and delivers: complete, counted by kind
    view = wait_status(center, token, lambda v: provider(v, "Hospital B")["status"] == "complete",
                       "hospital B to complete", timeout=300)
    b = provider(view, "Hospital B")["arrived"]
    assert b["resources"] > 0 and {"Condition", "Observation"} <= set(b["kinds"])
    # hospital A acknowledged; its case waits for its folder, then delivers what it holds
    assert provider(view, "Hospital A")["status"] in ("acknowledged", "receiving", "complete")
    patient_pdf = {"name": {"family": form["family_name"], "given": [form["given_name"]]},
                   "birthDate": form["birth_date"]}
    write_pdfs(world["drop_a"] / made["authorization"], 2, patient_pdf)
    view = wait_status(center, token, lambda v: provider(v, "Hospital A")["status"] == "complete",
                       "hospital A to complete", timeout=300)
    assert provider(view, "Hospital A")["arrived"]["documents"] == 2

    # the records office: a request letter, cover sheet and signed form in the fax outbox
    [sent] = [p for p in (tmp / "fax-out").iterdir()]
    assert sent.name.startswith("request-SO-") and not sent.name.startswith(".")
    pages = pypdfium2.PdfDocument(io.BytesIO(sent.read_bytes()))
    text = "".join(pages[i].get_textpage().get_text_range() for i in range(len(pages)))
    assert "Authorization to release health information" in text and "Valley Records Office" in text
    key = (tmp / "center" / "keys" / "fax-cover.key").read_bytes().strip()
    cover_page = next(i for i in range(len(pages))
                      if (c := decode_cover(pages[i].render(scale=2).to_pil(), key)) and c.valid)
    assert provider(status(center, token), "Valley Records Office")["status"] == "sent"
    # ... faxed back behind the cover sheet: it answers the request
    reply = PdfWriter()
    reply.add_page(PdfReader(io.BytesIO(sent.read_bytes())).pages[cover_page])
    records = tmp / "office-records.pdf"
    from gateway.cli.demo import make_pdf
    make_pdf(records, "Outside records", ["synthetic"], patient_pdf)
    reply.append(str(records))
    with open(tmp / "fax-replies" / ".fax-1.part", "wb") as fh:
        reply.write(fh)
    (tmp / "fax-replies" / ".fax-1.part").rename(tmp / "fax-replies" / "fax-1.pdf")
    view = wait_status(center, token, lambda v: v["state"] == "complete", "the request to complete")
    assert provider(view, "Valley Records Office")["arrived"]["faxes"] == 1
    assert not view["openedByCenter"] and not view["opinionReady"]

    # the center's staff open what arrived; the patient's questions come first in the summary
    inbox = requests.get(f"{center.url}/inbox", headers=staff, timeout=10)
    if inbox.status_code == 403:  # the inbox is the recipient role's
        staff_r = {"Authorization": "Bearer " + center.token("doctor", "recipient")}
        inbox = requests.get(f"{center.url}/inbox", headers=staff_r, timeout=10)
    else:
        staff_r = staff
    received = inbox.json()["received"]
    bundle = requests.get(f"{center.url}/inbox/{received[0]['id']}/bundle", headers=staff_r,
                          timeout=10).json()
    [composition] = [e["resource"] for e in bundle["entry"]
                     if e["resource"]["resourceType"] == "Composition"]
    assert composition["section"][0]["title"] == "Patient's questions"
    assert "Do I need the operation?" in composition["section"][0]["text"]["div"]
    assert not status(center, token)["openedByCenter"]
    r = requests.post(f"{center.url}/inbox/{received[0]['id']}/opened", headers=staff_r, timeout=10)
    assert r.status_code == 200, r.text
    wait_status(center, token, lambda v: v["openedByCenter"], "the page to say the records were opened")
    r = requests.post(f"{center.url}/center/requests/{made['id']}/opinion-ready", headers=staff,
                      timeout=10)
    assert r.status_code == 200
    assert status(center, token)["opinionReady"]

    # a second request, to hospital A alone, whose records are not there yet: it keeps
    # pulling until the patient revokes; the revocation stops it there
    second = submit(center, staff, {**form, "providers": ["hospital-a"]})
    token2 = status_link(mail, 2)
    wait_status(center, token2, lambda v: v["providers"][0]["status"] == "acknowledged",
                "hospital A to take the second request")
    a = world["a"]

    def hospital_case(auth_id):
        cases = requests.get(f"{a.url}/cases", headers=a.operator, timeout=10).json()["cases"]
        return next((c for c in cases if c["authorization"] == auth_id), None)

    wait_until(lambda: hospital_case(second["authorization"]), 60, 0.3, "hospital A's case")
    r = requests.post(f"{center.url}/center/status/revoke", headers={"X-Status-Token": token2},
                      timeout=30)
    assert r.status_code == 200 and r.json()["revoked"]
    closed = wait_until(lambda: (c := hospital_case(second["authorization"])) and
                        c["state"] == "closed" and c, 60, 0.3, "hospital A to close the case")
    got = requests.get(f"{a.url}/authorizations/{second['authorization']}", headers=a.operator,
                       timeout=10).json()
    assert got["status"] == "revoked"
    view = requests.get(f"{a.url}/cases/{closed['id']}", headers=a.operator, timeout=10).json()
    assert view["transfers"] and all(t["state"] == "cancelled" for t in view["transfers"])
    # the first request's authorization at hospital A is untouched
    assert requests.get(f"{a.url}/authorizations/{made['authorization']}", headers=a.operator,
                        timeout=10).json()["status"] == "active"
