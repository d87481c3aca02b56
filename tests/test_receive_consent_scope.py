"""Receive mode checks every record a bundle carries against its Consent (issue 13, item 3):
a data class the Consent does not allow, or a clinical date outside its data period,
refuses the whole bundle (422, nothing stored, the refusal audited without patient data),
whether or not the patient-summary Composition lists the record. Records are classed and
dated by the rule the sender filters by, so what a sender builds for the allowed classes
passes."""
from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, timezone

import pytest
from sqlalchemy import func, select

from connectors.base import RawRecord
from gateway.storage.models import AuditEvent, ReceivedBundle
from mappings import MappingContext, map_record
from tests.test_receive import PATIENT, consent, peer, post, receiver, sender_keys  # noqa: F401
from tests.test_transfer_flow import stack  # noqa: F401

SECRET_NAME = "Zebulon-Quarrington"  # synthetic, must never reach an answer or the audit log


def urn(n: int) -> str:
    return f"urn:uuid:7a1d2c3b-0000-4000-8000-{n:012d}"


def entry(n: int, resource: dict) -> dict:
    return {"fullUrl": urn(n), "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"]}}


def observation(category: str, when: str | None = "2021-06-01") -> dict:
    obs = {"resourceType": "Observation", "status": "final",
           "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                     "code": category}]}],
           "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": SECRET_NAME},
           "subject": {"reference": PATIENT}, "valueQuantity": {"value": 72, "unit": "/min"}}
    if when:
        obs["effectiveDateTime"] = when
    return obs


def pdf_document(tmp_path, data_class: str, n: int = 1) -> list[dict]:
    """Entries of a DocumentReference and its Binary as the sender maps a PDF of a source
    filing its records under `data_class` (mappings/pdf_document.py, the real mapping)."""
    from gateway.cli.demo import make_pdf

    path = tmp_path / f"{data_class}.pdf"
    make_pdf(path, "Synthetic report", ["synthetic"],
             {"name": {"family": SECRET_NAME, "given": ["A"]}, "birthDate": "1970-01-01"})
    data = path.read_bytes()
    record = RawRecord("records", "pdf", "application/pdf", path, hashlib.sha256(data).hexdigest(),
                       len(data), "report.pdf", metadata={"data_class": data_class})
    (mapped,) = map_record(record, MappingContext(PATIENT))
    doc = json.loads(mapped.resource.model_dump_json())
    doc["content"][0]["attachment"]["url"] = urn(n + 500)
    return [entry(n, doc), entry(n + 500, {"resourceType": "Binary", "contentType": "application/pdf",
                                            "data": "JVBERi0="})]


def bundle_of(resources: list[dict], the_consent: dict,
              ident: str = "urn:uuid:7a1d2c3b-1111-4000-8000-0000000000aa") -> bytes:
    """A bundle about PATIENT under `the_consent`: resources become entries 2, 3, ... at
    urn(1), urn(2), ... (entries as they are)."""
    entries = [{"fullUrl": PATIENT, "resource": {"resourceType": "Patient", "name": [{"family": SECRET_NAME}]},
                "request": {"method": "POST", "url": "Patient"}},
               entry(0, the_consent)]
    entries += [r if "fullUrl" in r else entry(n, r) for n, r in enumerate(resources, start=1)]
    return json.dumps({"resourceType": "Bundle", "type": "transaction",
                       "identifier": {"system": "urn:ietf:rfc:3986", "value": ident},
                       "entry": entries}).encode()


def stored(receiver) -> int:  # noqa: F811
    with receiver.extensions["gateway"].db.session() as s:
        return s.scalar(select(func.count()).select_from(ReceivedBundle))


def refusals(receiver) -> list[AuditEvent]:  # noqa: F811
    with receiver.extensions["gateway"].db.session() as s:
        rows = s.scalars(select(AuditEvent).filter_by(type="receive.bundle.refused")).all()
        s.expunge_all()
        return rows


def assert_refused(receiver, r, *words):  # noqa: F811
    """422 naming the entry and what is outside; no acceptance receipt, nothing stored, the
    refusal audited as denied; no patient data in the answer or the audit log."""
    assert r.status_code == 422, r.get_json()
    text = r.get_json()["issue"][0]["diagnostics"]
    for word in words:
        assert word in text, text
    assert "signature" not in r.get_json()  # an OperationOutcome, not a transaction-response
    assert stored(receiver) == 0
    [event] = refusals(receiver)
    assert event.outcome == "deny" and all(w in event.detail["reason"] for w in words)
    assert SECRET_NAME not in json.dumps(r.get_json()) + json.dumps(event.detail)


def test_an_observation_of_a_class_the_consent_does_not_allow_is_refused(receiver, peer, sender_keys):  # noqa: F811
    labs = consent(data_classes=("labs",))
    client = receiver.test_client()
    r = post(client, peer, bundle_of([observation("laboratory"), observation("vital-signs")], labs),
             sender_keys)
    assert_refused(receiver, r, "entry 3", urn(2), "Observation", "data class 'vitals'")
    # the same bundle without it is taken, and stored with every entry
    r = post(client, peer, bundle_of([observation("laboratory")], labs), sender_keys, key="key-2")
    assert r.status_code == 200, r.get_json()
    assert len(r.get_json()["entry"]) == 3 and stored(receiver) == 1


@pytest.mark.parametrize("when,words", [
    ("2023-05-01", ("dated outside the Consent's data period",)),
    ("2019-12-31", ("dated outside the Consent's data period",)),
    (None, ("has no clinical date",)),
])
def test_a_record_dated_outside_the_consent_period_is_refused(receiver, peer, sender_keys, when, words):  # noqa: F811
    limited = consent(data_classes=("labs",), date_range=(date(2020, 1, 1), date(2022, 12, 31)))
    client = receiver.test_client()
    r = post(client, peer, bundle_of([observation("laboratory", "2020-01-01"),
                                      observation("laboratory", when)], limited), sender_keys)
    assert_refused(receiver, r, "entry 3", "data class 'labs'", *words)
    assert when is None or when not in r.get_json()["issue"][0]["diagnostics"]  # no record's date
    # first and last day of the period are inside it
    r = post(client, peer, bundle_of([observation("laboratory", "2020-01-01"),
                                      observation("laboratory", "2022-12-31T23:59:00Z")], limited),
             sender_keys, key="key-2")
    assert r.status_code == 200, r.get_json()
    assert stored(receiver) == 1


def test_a_document_of_a_class_the_consent_does_not_allow_is_refused(receiver, peer, sender_keys,  # noqa: F811
                                                                     tmp_path):
    labs = consent(data_classes=("labs",))
    client = receiver.test_client()
    # a scanned note, as the sender maps it, under a Consent for labs only
    r = post(client, peer, bundle_of(pdf_document(tmp_path, "notes"), labs), sender_keys)
    assert_refused(receiver, r, "entry 2", "DocumentReference", "data class 'notes'")
    # a pathology report from a FHIR server: its LOINC type says its class
    report = {"resourceType": "DocumentReference", "status": "current",
              "type": {"coding": [{"system": "http://loinc.org", "code": "11526-1"}]},
              "subject": {"reference": PATIENT}, "date": "2021-03-04T00:00:00Z",
              "content": [{"attachment": {"contentType": "text/plain", "data": "aGk="}}]}
    r = post(client, peer, bundle_of([report], labs), sender_keys, key="key-2")
    assert r.status_code == 422 and "data class 'pathology'" in r.get_json()["issue"][0]["diagnostics"]
    # a scanned lab report goes, with the Binary it points at
    r = post(client, peer, bundle_of(pdf_document(tmp_path, "labs"), labs), sender_keys, key="key-3")
    assert r.status_code == 200, r.get_json()
    assert len(r.get_json()["entry"]) == 4 and stored(receiver) == 1


def test_a_scan_is_dated_as_the_sender_dated_it(receiver, peer, sender_keys, tmp_path):  # noqa: F811
    """A PDF is released by its creation date (2000-01-01 for these synthetic ones), not
    by the day it arrived in the folder: the receiver reads the same date."""
    docs = pdf_document(tmp_path, "notes")
    assert docs[0]["resource"]["date"][:4] == str(datetime.now(timezone.utc).year)
    client = receiver.test_client()
    then = consent(data_classes=("notes",), date_range=(date(1999, 1, 1), date(2001, 12, 31)))
    assert post(client, peer, bundle_of(docs, then), sender_keys).status_code == 200
    later = consent(data_classes=("notes",), date_range=(date(2001, 1, 1), None))
    r = post(client, peer, bundle_of(docs, later, ident="urn:uuid:7a1d2c3b-1111-4000-8000-0000000000bb"),
             sender_keys, key="key-2")
    assert r.status_code == 422 and "dated outside" in r.get_json()["issue"][0]["diagnostics"]


def test_a_binary_no_allowed_record_points_at_is_a_document(receiver, peer, sender_keys):  # noqa: F811
    """A Binary says nothing of itself: one that only the Provenance names is classed as a
    document, and a Consent for labs does not cover it."""
    labs = consent(data_classes=("labs",))
    smuggled = {"resourceType": "Binary", "contentType": "application/pdf", "data": "JVBERi0="}
    provenance = {"resourceType": "Provenance", "target": [{"reference": urn(2)}],
                  "recorded": "2026-01-01T00:00:00Z", "agent": [{"who": {"display": "Hospital"}}]}
    r = post(receiver.test_client(), peer, bundle_of([observation("laboratory"), smuggled, provenance], labs),
             sender_keys)
    assert_refused(receiver, r, "entry 3", urn(2), "Binary", "data class 'documents'")


def test_a_binary_a_record_points_at_is_covered_wherever_it_is(receiver, peer, sender_keys):  # noqa: F811
    """The records that may vouch for a Binary are walked until every Binary is vouched
    for: one pointed at only by the last of many labs (derivedFrom), after records
    pointing at nothing, is still found; the one nobody points at is still refused."""
    labs = consent(data_classes=("labs",))
    attached = {"resourceType": "Binary", "contentType": "application/pdf", "data": "JVBERi0="}
    late = {**observation("laboratory"), "derivedFrom": [{"reference": urn(1)}]}
    many = [observation("laboratory") for _ in range(30)]
    client = receiver.test_client()
    r = post(client, peer, bundle_of([attached, *many, late], labs), sender_keys)
    assert r.status_code == 200, r.get_json()
    r = post(client, peer, bundle_of([attached, *many, late, dict(attached)], labs,
                                     ident="urn:uuid:7a1d2c3b-1111-4000-8000-0000000000cc"),
             sender_keys, key="key-2")
    assert r.status_code == 422 and "data class 'documents'" in r.get_json()["issue"][0]["diagnostics"]
    assert urn(33) in r.get_json()["issue"][0]["diagnostics"]


def test_the_summary_mark_is_no_way_around_the_check(receiver, peer, sender_keys, tmp_path):  # noqa: F811
    """The bundle's own entries pass unclassed, one of each: a second document typed as the
    patient summary is refused."""
    from gateway.exchange.structure import SUMMARY_TYPE

    labs = consent(data_classes=("labs",))
    summaries = []
    for n in (1, 2):
        doc, binary = pdf_document(tmp_path, "notes", n)
        doc["resource"]["type"] = {"coding": [SUMMARY_TYPE]}
        summaries += [doc, binary]
    r = post(receiver.test_client(), peer, bundle_of(summaries, labs), sender_keys)
    assert_refused(receiver, r, "a second '60591-5' DocumentReference")


def test_who_and_where_go_with_the_records_whatever_the_classes(receiver, peer, sender_keys):  # noqa: F811
    limited = consent(data_classes=("labs",), date_range=(date(2020, 1, 1), date(2022, 12, 31)))
    practitioner = {"resourceType": "Practitioner", "name": [{"family": "Doctor"}]}
    provenance = {"resourceType": "Provenance", "target": [{"reference": urn(1)}],
                  "recorded": "2026-01-01T00:00:00Z", "agent": [{"who": {"display": "Hospital"}}]}
    r = post(receiver.test_client(), peer, bundle_of([observation("laboratory"), practitioner, provenance],
                                                     limited), sender_keys)
    assert r.status_code == 200, r.get_json()
    assert len(r.get_json()["entry"]) == 5 and stored(receiver) == 1


def test_what_the_real_sender_sends_for_the_allowed_classes_and_dates_is_taken(stack, claims_for, sign,  # noqa: F811
                                                                              drop_dir):
    """A real sending gateway (worker process) and a real receiving one: the source files its
    PDFs as notes, created 2000-01-01 (reportlab's invariant mode) and dropped today; under
    a Consent for notes of 1999-2001 every document is delivered, taken and receipted."""
    from tests.helpers import GENERATED, write_pdfs
    from tests.test_transfer_flow import TERMINAL

    stack.start_receiver()
    claims = claims_for(data_classes=("notes",), date_range=(date(1999, 1, 1), date(2001, 12, 31)))
    tid = stack.transfer(stack.authorize(claims, sign))
    sent = write_pdfs(drop_dir / tid, count=3)
    view = stack.wait_state(tid, TERMINAL)
    assert view["state"] == "completed", view["reason"]
    assert view["items"] == {"mapped": 3} and view["receipt"]["status"] == "accepted"
    [received] = stack.inbox()
    bundle = stack.received_bundle(received["id"])
    # Patient, Consent, List, Provenance, summary (Composition, PDF + Binary), manifest
    # (+ Binary), and the three notes with their Binaries
    assert view["receipt"]["entries"] == len(bundle["entry"]) == 9 + 2 * len(sent)
    docs = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference"
            and e["resource"]["type"]["coding"][0]["code"] not in GENERATED]
    assert len(docs) == 3 and {d["context"]["period"]["start"] for d in docs} == {"2000-01-01"}


def test_a_fhir_binary_travels_in_the_bundle_of_the_record_pointing_at_it():
    """A Binary says nothing of itself: the receiver judges it by the record that points at
    it, so a transfer split into several bundles never puts the two apart, even where date
    order puts the Binary first."""
    from gateway.outbound.bundles import _pack
    from gateway.outbound.units import StreamedBinary, Unit

    binary = Unit(date="2021-01-01", full_url="urn:uuid:0a-binary", estimate=400,
                  entries=[StreamedBinary("urn:uuid:0a-binary", "blob", "application/pdf", 290)])
    other = Unit(date="2021-01-01", full_url="urn:uuid:5b-other", estimate=100,
                 entries=[entry(1, observation("laboratory"))])
    owner = Unit(date="2021-01-01", full_url="urn:uuid:9c-owner", estimate=100, entries=[{
        "fullUrl": "urn:uuid:9c-owner", "resource": {
            "resourceType": "DocumentReference", "status": "current",
            "content": [{"attachment": {"contentType": "application/pdf", "url": "urn:uuid:0a-binary"}}]}}])
    parts = _pack([binary, other, owner], limit=450)
    assert [[u.full_url for u in part] for part in parts] == [
        ["urn:uuid:5b-other"], ["urn:uuid:9c-owner", "urn:uuid:0a-binary"]]
    assert _pack([other], limit=450) == [[other]]
