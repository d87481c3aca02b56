"""A FHIR server's page may hold another patient's records (a search the server matched
loosely, an $everything that overreaches): they are refused and reported, never
delivered under this patient's authorization. Whom a record is about decides (subject,
patient, beneficiary), as on the receiving side."""
from __future__ import annotations

import json

from connectors.fhir.pages import split_page

BASE = "http://fhir.test/fhir"


def page(tmp_path, resources: list[dict]):
    path = tmp_path / "page.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": [
        {"fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}", "resource": r} for r in resources]}))
    return path


def observation(oid: str, patient: str) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"text": "glucose"}, "subject": {"reference": patient}}


def test_entries_about_another_patient_are_refused(tmp_path):
    mentions = {**observation("o5", "Patient/p1"), "focus": [{"reference": "Patient/p2"}]}
    claim = {"resourceType": "Coverage", "id": "v2", "beneficiary": {"reference": "Patient/p2"}}
    resources = [{"resourceType": "Patient", "id": "p1"}, {"resourceType": "Patient", "id": "p2"},
                 observation("o1", "Patient/p1"), observation("o2", "Patient/p2"),
                 observation("o3", f"{BASE}/Patient/p2"), observation("o4", f"{BASE}/Patient/p1"),
                 mentions, claim]
    result = split_page(page(tmp_path, resources), tmp_path / "out", seen={}, supporting=(),
                        base_url=BASE, chunk_resources=100, chunk_bytes=1 << 20,
                        want_attachments=False, patient_id="p1")
    assert sorted(key for key, _ in result.refused) == ["Coverage/v2", "Observation/o2", "Observation/o3",
                                                         "Patient/p2"]
    assert {reason for _, reason in result.refused} == {"refers to another patient: not taken"}
    kept = [json.loads(line)["resource"]["id"] for chunk in result.chunks
            for line in chunk.path.read_text().splitlines()]
    # a record of this patient that mentions another (a focus) is this patient's: kept
    assert sorted(kept) == ["o1", "o4", "o5", "p1"] and result.resources == 4
