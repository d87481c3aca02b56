"""The connector and mapping against a real FHIR server (sekmet-fhir) with Synthea patients."""
from __future__ import annotations

import base64
import collections
import shutil
import time
from datetime import date

import orjson
import pytest
import requests

from connectors.base import Gap, PatientIdentifier, Progress, RecordQuery, RejectedRecord, SourceRejected
from connectors.fhir.connector import FhirRestConnector
from mappings import MappingContext, map_record
from mappings.fhir_r4 import InvalidResource, map_fhir_json_items, resource_uuid
from tests.fhir.conftest import mrn_of, query_for

CTX = MappingContext("urn:uuid:6d0c2d7e-1111-4000-8000-000000000001")


def pull(base, query, workdir, rejected=None, **options):
    """Records of a pull; RejectedRecords go to `rejected` (a list) and must be expected."""
    progress: list[Progress] = []
    with FhirRestConnector("ehr", {"base_url": base, **options}, workdir, progress.append) as conn:
        conn.check()
        records = list(conn.fetch(query))
    refused = [r for r in records if isinstance(r, RejectedRecord)]
    if rejected is None:
        assert not refused
    else:
        rejected.extend(refused)
    # Gaps (types not searchable, references unresolved) are reported, not records
    return [r for r in records if not isinstance(r, (RejectedRecord, Gap))], conn, progress


def mapped(records):
    items = [i for r in records for i in (map_fhir_json_items(r, CTX) if r.kind == "fhir-json"
                                          else map_record(r, CTX))]
    return [i for i in items if not isinstance(i, InvalidResource)], [i for i in items if isinstance(i, InvalidResource)]


def server_count(sekmet, patient_id):
    doc = requests.get(f"{sekmet.direct}/Patient/{patient_id}/$everything", timeout=60).json()
    return collections.Counter(e["resource"]["resourceType"] for e in doc["entry"])


def test_everything_pull_is_complete_valid_and_normalized(sekmet, tmp_path):
    subject = sekmet.patients[0]
    records, conn, progress = pull(sekmet.base_url, query_for(subject["patient"]), tmp_path, chunk_resources=300)
    expected = server_count(sekmet, subject["id"])
    assert {r.metadata["stream"] for r in records} == {"Patient/$everything"}
    assert all(r.kind == "fhir-json" and r.path.exists() for r in records)
    assert len({r.origin for r in records}) == len(records)
    assert sum(r.metadata["resources"] for r in records) == sum(expected.values())
    assert max(r.metadata["resources"] for r in records) <= 300
    good, bad = mapped(records)
    assert not bad
    types = collections.Counter(i.resource.get_resource_type() for i in good)
    assert types["Provenance"] == len(records) + expected["Provenance"]
    types["Provenance"] -= len(records)
    assert +types == +expected
    ids = {i.resource.id for i in good}
    assert len(ids) == len(good)
    for item in good:  # the patient is always CTX.patient_reference
        subject_ref = orjson.loads(item.resource.model_dump_json()).get("subject", {}).get("reference")
        assert subject_ref in (None, CTX.patient_reference)
    # every urn:uuid reference in the pull points at a resource of the pull (or the patient)
    dangling = set()
    for item in good:
        for value in _references(orjson.loads(item.resource.model_dump_json())):
            assert subject["id"] not in value
            if value.startswith("urn:uuid:") and value[9:] not in ids and value != CTX.patient_reference:
                dangling.add(value)
    assert not dangling
    assert progress and progress[-1].done == sum(expected.values()) and progress[-1].bytes > 0
    assert records[0].metadata["pull_started"]


def _references(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                yield v
            else:
                yield from _references(v)
    elif isinstance(node, list):
        for v in node:
            yield from _references(v)


def test_search_pull_narrowed_by_data_classes_and_dates(sekmet, tmp_path):
    subject = sekmet.patients[0]
    query = query_for(subject["patient"], data_classes=frozenset({"labs", "immunizations"}),
                      date_from=date(2015, 1, 1), date_to=date(2022, 12, 31))
    records, conn, _ = pull(sekmet.base_url, query, tmp_path, retrieval="search")
    streams = {r.metadata["stream"].split("?")[0] for r in records}
    assert streams <= {"DiagnosticReport", "Observation", "Immunization", "Practitioner", "PractitionerRole",
                       "Organization", "Location", "Encounter"}
    good, bad = mapped(records)
    assert not bad and good
    classes = collections.Counter(i.data_class for i in good)
    assert set(classes) <= {"labs", "immunizations", "notes", "radiology", "pathology", "supporting"}
    assert classes["labs"] and classes["immunizations"]
    for item in good:
        if item.data_class in ("labs", "immunizations") and item.clinical_date:
            assert date(2015, 1, 1) <= item.clinical_date <= date(2022, 12, 31)


def test_incremental_pull_fetches_only_what_changed(sekmet, tmp_path):
    subject = sekmet.patients[1]
    first, conn, _ = pull(sekmet.base_url, query_for(subject["patient"]), tmp_path / "1", retrieval="search")
    since = first[0].metadata["pull_started"]
    time.sleep(1.1)  # _lastUpdated has second resolution here
    obs = requests.get(f"{sekmet.direct}/Observation", params={"patient": subject["id"], "_count": "1"},
                       timeout=30).json()["entry"][0]["resource"]
    obs["status"] = "amended"
    sekmet.put(obs)
    created = sekmet.post({"resourceType": "Condition", "subject": {"reference": f"Patient/{subject['id']}"},
                           "code": {"text": "new finding"}, "onsetDateTime": "2026-01-01"})
    query = RecordQuery("auth-1", "transfer-2", identifiers=(mrn_of(subject["patient"]),))
    second, _, _ = pull(sekmet.base_url, query, tmp_path / "2", retrieval="search", since=since,
                        supporting=False)
    good, bad = mapped(second)
    got = {(i.resource.get_resource_type(), i.resource.meta.source.rsplit("/", 1)[1]) for i in good
           if i.resource.get_resource_type() != "Provenance"}
    assert got == {("Observation", obs["id"]), ("Condition", created["id"])}


def test_patient_matching_never_guesses(sekmet, tmp_path, synthea_files):
    nobody = RecordQuery("a", "t", identifiers=(PatientIdentifier("urn:mrn", "does-not-exist"),))
    with pytest.raises(SourceRejected, match="no patient"):
        pull(sekmet.base_url, nobody, tmp_path / "0")
    twin = dict(sekmet.patients[0]["patient"])
    twin.pop("id")
    twin.pop("meta", None)
    sekmet.post(twin)  # a second patient with the same identifiers
    try:
        with pytest.raises(SourceRejected, match="2 patients .* refusing to guess"):
            pull(sekmet.base_url, query_for(sekmet.patients[0]["patient"]), tmp_path / "2")
    finally:
        for e in requests.get(f"{sekmet.direct}/Patient", params={"identifier": f"{mrn_of(twin).system}|{mrn_of(twin).value}"},
                              timeout=30).json().get("entry", []):
            if e["resource"]["id"] != sekmet.patients[0]["id"]:
                requests.delete(f"{sekmet.direct}/Patient/{e['resource']['id']}", timeout=30)
    # name and birth date when no identifier matches
    p = sekmet.patients[1]["patient"]
    by_name = RecordQuery("a", "t", identifiers=(PatientIdentifier("urn:other", "x"),),
                          family_name=p["name"][0]["family"], given_names=tuple(p["name"][0]["given"]),
                          birth_date=date.fromisoformat(p["birthDate"]), data_classes=frozenset({"allergies"}))
    records, conn, _ = pull(sekmet.base_url, by_name, tmp_path / "3", retrieval="search")
    assert all(r.metadata["patient_id"] == sekmet.patients[1]["id"] for r in records)


def test_attachments_are_fetched_and_foreign_urls_refused(sekmet, tmp_path):
    subject = sekmet.patients[1]
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 400
    binary = sekmet.post({"resourceType": "Binary", "contentType": "application/pdf",
                          "data": base64.b64encode(pdf).decode()})
    doc = sekmet.post({
        "resourceType": "DocumentReference", "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11526-1"}]},
        "subject": {"reference": f"Patient/{subject['id']}"}, "date": "2024-04-05T00:00:00Z",
        "content": [{"attachment": {"contentType": "application/pdf", "url": f"Binary/{binary['id']}"}},
                    {"attachment": {"contentType": "application/pdf",
                                    "url": "http://169.254.169.254/latest/meta-data"}}]})
    query = query_for(subject["patient"], data_classes=frozenset({"pathology"}))
    rejected = []
    records, conn, _ = pull(sekmet.base_url, query, tmp_path, rejected, retrieval="search")
    (refusal,) = rejected  # reported to the gateway as a failed item, with the reason
    assert "169.254.169.254" in refusal.origin and refusal.reason == "outside the server base (refused)"
    atts = [r for r in records if r.kind == "fhir-attachment"]
    assert len(atts) == 1 and atts[0].path.read_bytes() == pdf and atts[0].media_type == "application/pdf"
    page = next(r for r in records if r.kind == "fhir-json" and f"Binary/{binary['id']}" in r.metadata["attachments"])
    assert page.metadata["refused"] == [{"url": "http://169.254.169.254/latest/meta-data",
                                         "reason": "outside the server base (refused)"}]
    good, _ = mapped(records)
    ref = next(i.resource for i in good if i.resource.id == resource_uuid(sekmet.base_url, "DocumentReference", doc["id"]))
    assert ref.content[0].attachment.url == f"urn:uuid:{resource_uuid(sekmet.base_url, 'Binary', binary['id'])}"
    assert ref.content[1].attachment.url == "http://169.254.169.254/latest/meta-data"
    (bin_item,) = map_record(atts[0], CTX)
    assert bin_item.carries_record_bytes and bin_item.data_class == "pathology"
    assert bin_item.resource.id == resource_uuid(sekmet.base_url, "Binary", binary["id"])


def test_resume_after_a_crash_loses_nothing_and_duplicates_nothing(sekmet, tmp_path):
    subject = sekmet.patients[0]
    options = {"retrieval": "search", "page_size": 100, "chunk_resources": 50}
    full, _, _ = pull(sekmet.base_url, query_for(subject["patient"]), tmp_path / "full", **options)
    full_keys = {line for r in full if r.kind == "fhir-json" for line in _keys(r)}

    work = tmp_path / "crash"
    stored: dict[str, set] = {}
    with FhirRestConnector("ehr", {"base_url": sekmet.base_url, **options}, work) as conn:
        for i, rec in enumerate(conn.fetch(query_for(subject["patient"]))):
            if i == 7:
                break  # the worker dies while handing over this record: it was never stored
            if isinstance(rec, Gap):
                continue
            stored[rec.origin] = set(_keys(rec))
            rec.path.unlink()  # the gateway moved it into its blob store
    # one more record the gateway never stored and whose file vanished too
    lost = next(p for p in sorted(work.glob("fhir-*.ndjson")))
    lost.unlink()
    query = query_for(subject["patient"])
    query = RecordQuery(**{**query.__dict__, "already_fetched": frozenset(stored)})
    with FhirRestConnector("ehr", {"base_url": sekmet.base_url, **options}, work) as conn:
        rest = [r for r in conn.fetch(query) if not isinstance(r, Gap)]
    assert not set(stored) & {r.origin for r in rest}
    assert len({r.origin for r in rest}) == len(rest)
    keys = [k for ks in stored.values() for k in ks] + [k for r in rest for k in _keys(r)]
    assert len(keys) == len(set(keys))  # no resource twice
    assert set(keys) == full_keys, (lost.name, sorted(stored), [(r.origin, len(_keys(r))) for r in rest])
    shutil.rmtree(tmp_path / "full")


def _keys(record):
    with open(record.path, "rb") as fh:
        return [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in map(orjson.loads, fh)]
