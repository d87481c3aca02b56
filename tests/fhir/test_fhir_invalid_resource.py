"""One invalid resource among valid ones, served by a real FHIR server (sekmet-fhir stores
it as given): the transfer completes, every valid resource of that page is delivered, and
the completeness report names the invalid one with its reason (issue 12, item 7)."""
from __future__ import annotations

import uuid

from tests.fhir.gateway_run import run_fhir_transfer, source_resources


def test_one_invalid_resource_does_not_sink_its_page(processes, sender_config, receiver_config, tmp_path,
                                                     sign, receiver_url, sekmet):
    tag = uuid.uuid4().hex[:10]
    pid = f"inv-{tag}"
    patient = sekmet.put({"resourceType": "Patient", "id": pid,
                          "identifier": [{"system": "urn:test:mrn", "value": f"MRN-{tag}"}],
                          "name": [{"family": f"Invalid{tag}", "given": ["Ida"]}], "birthDate": "1971-02-03"})
    valid = [f"ok{i}-{tag}" for i in range(4)]
    for i, oid in enumerate(valid):
        sekmet.put({"resourceType": "Observation", "id": oid, "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": f"2024-03-0{i + 1}",
                    "valueQuantity": {"value": 60 + i, "unit": "/min"}})
    bad = f"bad-{tag}"
    sekmet.put({"resourceType": "Observation", "id": bad, "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": "2024-13-45"})

    view, bundles, stack = run_fhir_transfer(processes, sender_config, receiver_config, tmp_path, sign,
                                             receiver_url, sekmet.base_url, patient)
    assert view["state"] == "completed", view["reason"]
    got = source_resources(bundles, sekmet.base_url)
    assert sorted(k for k in got if k.startswith("Observation/")) == sorted(f"Observation/{v}" for v in valid)
    report = view["completeness"]["ehr"]
    assert report["invalidResources"] == 1 and report["complete"] is False
    (named,) = report["invalid"]
    assert named["what"] == f"Observation/{bad}"
    assert "effectiveDateTime" in named["reason"]
    assert "2024-13-45" not in str(report)  # reasons carry element paths, never values
    stack.app.extensions["gateway"].close()
