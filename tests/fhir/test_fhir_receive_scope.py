"""What a real FHIR sender releases under a narrow authorization is what the receiving
gateway checks it against (issue 13, item 3): a Synthea patient pulled from sekmet-fhir
for labs, conditions and notes since 2015 is delivered, and the receiver, classing and
dating every record by the same rule, takes all of it."""
from __future__ import annotations

import collections
from datetime import date

from gateway.exchange.structure import own_kind
from mappings.fhir.classify import clinical_date, data_class
from tests.fhir.gateway_run import run_fhir_transfer

ALLOWED = ("conditions", "labs", "notes")
SINCE = date(2015, 1, 1)


def test_a_narrow_fhir_transfer_is_taken_whole(processes, sender_config, receiver_config, tmp_path,
                                              sign, receiver_url, sekmet):
    subject = sekmet.patients[0]
    view, bundles, stack = run_fhir_transfer(processes, sender_config, receiver_config, tmp_path, sign,
                                             receiver_url, sekmet.base_url, subject["patient"],
                                             data_classes=ALLOWED, date_range=(SINCE, None))
    assert view["state"] == "completed", view["reason"]
    assert view["receipt"]["status"] == "accepted"
    assert sum(b["entries"] for b in view["bundles"]) == sum(len(b["entry"]) for b in bundles)
    records = [e["resource"] for b in bundles for e in b["entry"]
               if e["resource"]["resourceType"] not in ("Patient", "Consent", "Binary")
               and own_kind(e["resource"]) is None]
    types = collections.Counter(r["resourceType"] for r in records)
    assert types["Observation"] > 0 and types["Condition"] > 0
    # nothing of the classes left out travelled
    assert not {"Immunization", "MedicationRequest", "Encounter", "Claim", "Procedure"} & set(types)
    for r in records:
        cls = data_class(r)
        assert cls in ALLOWED or cls == "supporting", (r["resourceType"], cls)
        assert cls == "supporting" or clinical_date(r) >= SINCE
    stack.app.extensions["gateway"].close()
