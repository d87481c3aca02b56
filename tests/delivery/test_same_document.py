"""One document reached in two different sets of bytes (a report and its scanned or
faxed copy) is delivered once, with the Provenance of both places; a report that differs
in one value is a different document and is delivered too."""
from __future__ import annotations

import base64
import hashlib
import io
import json

import pytest

from gateway.outbound import same_document
from gateway.outbound.bundles import _first_with_identifier
from gateway.cli.demo import make_pdf
from tests.delivery.delivery_support import (TERMINAL, manifest_of, record_binaries,
                                             start_from_sources, start_from_two_sources)

PATIENT = {"name": {"family": "Testperson", "given": ["Avery"]}, "birthDate": "1970-01-01"}
CBC = ["Hemoglobin 13.2 g/dL (ref 12.0-15.5)", "Leukocytes 6.1 10*3/uL",
       "Impression: within normal limits.", "Signed: Dr. Synthetic Example, 2026-03-04"]


def _report(path, lines, title="Complete blood count"):
    make_pdf(path, title, lines, PATIENT)
    return path


def _scan(pdf, path):
    """The report as a fax machine sends it: one image per page, no text layer."""
    import img2pdf
    import pypdfium2

    doc = pypdfium2.PdfDocument(str(pdf))
    try:
        image = doc[0].render(scale=200 / 72).to_pil().convert("L")
    finally:
        doc.close()
    png = io.BytesIO()
    image.save(png, format="PNG")
    path.write_bytes(img2pdf.convert(png.getvalue()))
    return path


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_scanned_copy_is_the_same_document_and_a_changed_value_is_not(tmp_path):
    original = _report(tmp_path / "cbc.pdf", CBC)
    scan = _scan(original, tmp_path / "cbc-scan.pdf")
    changed = _report(tmp_path / "cbc-2.pdf", [CBC[0].replace("13.2", "11.2"), *CBC[1:]])
    other = _report(tmp_path / "discharge.pdf", ["Discharged home in good condition.",
                                                "Follow-up in two weeks, 2026-03-18."],
                    title="Discharge summary")
    prints = {p.name: same_document.fingerprint(p, "application/pdf")
              for p in (original, scan, changed, other)}
    assert _sha(original) != _sha(scan)
    assert same_document.same(prints["cbc.pdf"], prints["cbc-scan.pdf"])  # read by OCR
    assert not same_document.same(prints["cbc.pdf"], prints["cbc-2.pdf"])  # one value differs
    assert not same_document.same(prints["cbc.pdf"], prints["discharge.pdf"])
    copies = same_document.duplicates([(n, prints[n]) for n in
                                       ("cbc.pdf", "discharge.pdf", "cbc-2.pdf", "cbc-scan.pdf")])
    assert copies == {"cbc-scan.pdf": "cbc.pdf"}
    # the fingerprint carries no readable text
    assert "hemoglobin" not in json.dumps(prints["cbc.pdf"]).lower()
    assert same_document.fingerprint(tmp_path / "cbc.pdf", "application/json") is None


def test_too_little_text_is_never_called_the_same():
    assert same_document.from_text(["Page 1"], 1) is None
    assert same_document.duplicates([("a", None), ("b", None)]) == {}


def test_a_resource_with_the_identifier_of_an_earlier_one_follows_it():
    seen: dict[str, str] = {}
    lab = {"resourceType": "Observation", "identifier": [{"system": "urn:lab", "value": "A1"}]}
    assert _first_with_identifier(seen, lab, "urn:uuid:1") == "urn:uuid:1"
    assert _first_with_identifier(seen, lab, "urn:uuid:2") == "urn:uuid:1"
    other_type = {**lab, "resourceType": "DiagnosticReport"}
    assert _first_with_identifier(seen, other_type, "urn:uuid:3") == "urn:uuid:3"
    no_system = {"resourceType": "Observation", "identifier": [{"value": "A1"}]}
    assert _first_with_identifier(seen, no_system, "urn:uuid:4") == "urn:uuid:4"


def test_a_report_and_its_scanned_copy_from_two_sources_go_once(two_sources, dstack, sign,
                                                                drop_dir, receiver_url):
    copies = two_sources
    tid = start_from_two_sources(dstack, sign, drop_dir, copies, receiver_url)
    work = drop_dir.parent / "make"
    (work / "records").mkdir(parents=True)
    (work / "copies").mkdir()
    cbc = _report(work / "records" / "cbc.pdf", CBC)
    discharge = _report(work / "records" / "discharge.pdf", ["Discharged home in good condition."
                                                            " Follow-up in two weeks."],
                        title="Discharge summary")
    scan = _scan(cbc, work / "copies" / "cbc-fax.pdf")
    changed = _report(work / "copies" / "cbc-corrected.pdf", [CBC[0].replace("13.2", "11.2"), *CBC[1:]])
    sha = {p.name: _sha(p) for p in (cbc, discharge, scan, changed)}
    (work / "copies").rename(copies / tid)
    (work / "records").rename(drop_dir / tid)

    view = dstack.wait_state(tid, TERMINAL, timeout=180)
    assert view["state"] == "completed", view["reason"]
    [bundle] = [dstack.received_bundle(b["id"]) for b in dstack.inbox()]
    # three documents: the scanned copy went as its original, the corrected one went too
    assert record_binaries([bundle]) == sorted([sha["cbc.pdf"], sha["discharge.pdf"],
                                                sha["cbc-corrected.pdf"]])
    provenance = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance"]
    by_source = {p["entity"][0]["what"]["identifier"]["system"].rsplit(":", 1)[-1]: p for p in provenance}
    assert set(by_source) == {"records", "copies"}
    origins = {e["what"]["identifier"]["value"] for e in by_source["copies"]["entity"]}
    assert origins == {"cbc-fax.pdf", "cbc-corrected.pdf"}
    shared = {t["reference"] for t in by_source["copies"]["target"]} & \
        {t["reference"] for t in by_source["records"]["target"]}
    assert len(shared) == 1  # the report both places held
    [doc] = [e["resource"] for e in bundle["entry"] if e["fullUrl"] in shared]
    assert doc["resourceType"] == "DocumentReference"
    assert {"system": "urn:records-gateway:sha256", "value": sha["cbc.pdf"]} in doc["identifier"]
    # the manifest lists the fax copy with its own sha256, delivered as that entry
    manifest = manifest_of(bundle)
    delivered = {d["origin"]: d for d in manifest["sources"]["copies"]["delivered"]}
    assert delivered["cbc-fax.pdf"]["sha256"] == sha["cbc-fax.pdf"]
    assert delivered["cbc-fax.pdf"]["entry"] == next(iter(shared))


@pytest.fixture
def ehr_and_copies(two_sources, sender_config, sekmet):
    """sekmet-fhir as the hospital's FHIR API (source "ehr") beside the "copies" folder."""
    from tests.helpers import SENDER_ORG

    sender_config["sources"]["ehr"] = {"kind": "fhir-rest", "organization": SENDER_ORG, "endpoint": sekmet,
                                       "options": {"base_url": sekmet, "auth": {"type": "none"},
                                                   "retrieval": "search"}}
    return two_sources


def test_a_fhir_report_and_its_scanned_copy_go_once_as_the_fhir_original(
        ehr_and_copies, sekmet, dstack, sign, receiver_url, tmp_path):
    """The report as the EHR's FHIR API serves it (a DocumentReference and its PDF
    Binary), and the same report scanned in a drop folder: the FHIR original goes once,
    and the scan's source is named in the Provenance of that Binary."""
    import uuid

    import requests

    copies = ehr_and_copies
    # unique in the shared server; digits only, as OCR reads them back (a hex value's
    # letters beside digits were misread in 1 of 40 scans, and then the copy is rightly
    # a different document)
    mrn = str(uuid.uuid4().int)[:10]
    report = _report(tmp_path / "report.pdf", [*CBC, f"Accession {mrn}"])
    scan = _scan(report, tmp_path / "report-fax.pdf")
    json_headers = {"Content-Type": "application/fhir+json"}
    patient = requests.post(f"{sekmet}/Patient", json={
        "resourceType": "Patient", "identifier": [{"system": "urn:test:mrn", "value": mrn}],
        "name": [{"family": "Testperson", "given": ["Avery"]}], "birthDate": "1970-01-01"},
        headers=json_headers, timeout=10).json()
    binary = requests.post(f"{sekmet}/Binary", json={
        "resourceType": "Binary", "contentType": "application/pdf",
        "data": base64.b64encode(report.read_bytes()).decode()}, headers=json_headers, timeout=30).json()
    requests.post(f"{sekmet}/DocumentReference", json={
        "resourceType": "DocumentReference", "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]},
        "subject": {"reference": f"Patient/{patient['id']}"}, "date": "2026-03-04T00:00:00Z",
        "content": [{"attachment": {"contentType": "application/pdf", "url": f"Binary/{binary['id']}"}}]},
        headers=json_headers, timeout=10).raise_for_status()
    tid = start_from_sources(dstack, sign, receiver_url, {
        "ehr": {"type": "fhir", "address": sekmet},
        "copies": {"type": "pdf-folder", "address": str(copies)}},
        patient={**PATIENT, "identifiers": [{"system": "urn:test:mrn", "value": mrn}]})
    (copies / f".{tid}").mkdir()
    scan.rename(copies / f".{tid}" / "report-fax.pdf")
    (copies / f".{tid}").rename(copies / tid)

    view = dstack.wait_state(tid, TERMINAL, timeout=180)
    assert view["state"] == "completed", view["reason"]
    [bundle] = [dstack.received_bundle(b["id"]) for b in dstack.inbox()]
    assert record_binaries([bundle]) == [_sha(report)]  # the FHIR original only
    provenance = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance"
                  and e["resource"]["entity"][0]["what"]["identifier"]["system"].endswith(":copies")]
    [from_copies] = provenance
    [target] = [t["reference"] for t in from_copies["target"]]
    [original] = [e for e in bundle["entry"] if e["fullUrl"] == target]
    assert original["resource"]["resourceType"] == "Binary"
    assert hashlib.sha256(base64.b64decode(original["resource"]["data"])).hexdigest() == _sha(report)
