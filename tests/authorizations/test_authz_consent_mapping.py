"""mappings/consent.py: the Consent is valid R4 (R4B models) and mirrors the HIPAA elements."""
from __future__ import annotations

import json
from datetime import date, datetime, timezone

import pytest
from fhir.resources.R4B.consent import Consent

from mappings.consent import (DATA_CLASS_SYSTEM, ConsentInvalid, build_consent, consent_mismatches,
                              validate_consent)

START = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
END = datetime(2026, 3, 31, 12, tzinfo=timezone.utc)
TERMS = dict(patient_identifier={"system": "urn:mrn", "value": "X1"}, signed_on=date(2026, 3, 1),
             not_before=START, expires_at=END,
             disclosers=[{"id": "org-a", "name": "A"}, {"id": "org-b", "name": "B"}],
             recipient={"id": "org-r", "name": "R"}, data_classes=["labs", "imaging"],
             purpose="second opinion", date_range={"start": date(2020, 1, 1), "end": date(2025, 1, 1)})


def check(consent, **over):
    model = validate_consent(consent)
    args = dict(patient_identifiers=[TERMS["patient_identifier"]], not_before=START, expires_at=END,
                disclosers=["org-a", "org-b"], recipient="org-r", date_range=TERMS["date_range"])
    args.update(over)
    return consent_mismatches(model, **args)


def test_built_consent_is_valid_r4_and_round_trips():
    consent = build_consent(**TERMS, consent_id="auth-1")
    model = Consent.model_validate(consent)
    again = json.loads(model.model_dump_json())
    assert again["patient"] == {"identifier": {"system": "urn:mrn", "value": "X1"}}
    assert again["provision"]["period"] == {"start": "2026-03-01T12:00:00Z", "end": "2026-03-31T12:00:00Z"}
    assert again["provision"]["dataPeriod"] == {"start": "2020-01-01", "end": "2025-01-01"}
    assert again["provision"]["class"] == [{"system": DATA_CLASS_SYSTEM, "code": "imaging"},
                                           {"system": DATA_CLASS_SYSTEM, "code": "labs"}]
    assert [a["role"]["coding"][0]["code"] for a in again["provision"]["actor"]] == ["CST", "CST", "IRCP"]
    assert again["id"] == "auth-1" and again["status"] == "active"
    assert check(consent) == []


def test_mismatches_are_each_named():
    consent = build_consent(**TERMS)
    problems = check(consent, patient_identifiers=[{"system": "urn:mrn", "value": "OTHER"}],
                     disclosers=["org-a"], recipient="org-x", date_range=None,
                     expires_at=datetime(2026, 4, 1, tzinfo=timezone.utc))
    assert problems == [
        "consent.patient.identifier does not match any of patient.identifiers",
        "consent.provision.period.end does not match exp",
        "consent.provision.dataPeriod.start does not match information.dateRange.start",
        "consent.provision.dataPeriod.end does not match information.dateRange.end",
        "consent.provision.actor (role CST) does not match disclosers",
        "consent.provision.actor (role IRCP) does not match recipient",
    ]


@pytest.mark.parametrize("consent, expected", [
    ([], "consent is not a JSON object"),
    ({"resourceType": "Patient"}, "consent.resourceType is not 'Consent'"),
    ({"resourceType": "Consent"}, "consent is not a valid FHIR R4 Consent"),
    ({"resourceType": "Consent", "status": "active", "scope": {"text": "x"}, "category": [{"text": "x"}],
      "bogusElement": 1}, "consent is not a valid FHIR R4 Consent"),
    ({"resourceType": "Consent", "status": "rejected", "scope": {"text": "x"}, "category": [{"text": "x"}]},
     "consent.status is 'rejected', expected 'active'"),
])
def test_invalid_consents(consent, expected):
    with pytest.raises(ConsentInvalid, match=expected.replace("(", "\\(")):
        validate_consent(consent)


def test_partial_dates_in_the_consent_are_mismatches_not_crashes():
    consent = build_consent(**TERMS)
    consent["dateTime"] = "2026-03"
    consent["provision"]["period"]["start"] = "2026"
    consent["provision"]["dataPeriod"]["end"] = "2025-01"
    problems = check(consent, signed_on=date(2026, 3, 1))
    assert problems == ["consent.dateTime does not match signature.date",
                        "consent.provision.period.start does not match nbf",
                        "consent.provision.dataPeriod.end does not match information.dateRange.end"]


def test_same_instant_in_another_time_zone_matches():
    consent = build_consent(**TERMS)
    consent["provision"]["period"]["start"] = "2026-03-01T14:00:00+02:00"
    assert check(consent) == []


def test_golden_consent():
    """The whole Consent for fixed terms, as reviewed in tests/authorizations/golden/consent.json."""
    from pathlib import Path
    golden = json.loads((Path(__file__).parent / "golden" / "consent.json").read_text())
    built = build_consent(**TERMS, consent_id="auth-1",
                          form_sha256_b64="47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", form_size=0)
    assert built == golden
    assert json.loads(Consent.model_validate(golden).model_dump_json())["sourceAttachment"]["hash"] == \
        "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
