"""What an authorization covers: its sources, its recipient, its data classes and dates.
Each check works on a VerifiedAuthorization and on the stored row alike."""
from __future__ import annotations

import os
from datetime import date, datetime, timezone

import pytest

from tests.authorizations.authz_support import ISSUER, NOW, PATIENT_SECRET
from gateway.trust.authorizations import (allows, covers_recipient, covers_source,
                                          example_claims, import_authorization,
                                          verify_authorization)
from gateway.errors import AuthorizationDenied

DISCLOSERS = [
    {"id": "org-general-hospital", "name": "General Hospital",
     "endpoints": [{"type": "fhir", "address": "https://ehr.general.example/fhir/R4/"},
                   {"type": "dicom", "address": "PACS@pacs.general.example:104"}]},
    {"id": "org-imaging-center", "name": "Imaging Center",
     "endpoints": [{"type": "fax", "address": "+1-555-0100"}]},
]
RECIPIENT = {"id": "org-second-opinion", "name": "Second Opinion Center",
             "endpoint": {"type": "gateway", "address": "https://gw.second-opinion.example"}}


@pytest.fixture(params=["verified", "row"])
def auth(request, sign, trust, tmp_path):
    claims = example_claims(ISSUER, "auth-cov", disclosers=DISCLOSERS, recipient=RECIPIENT,
                            data_classes=["labs", "imaging", "notes"],
                            date_range=(date(2022, 1, 1), date(2024, 6, 30)), now=NOW)
    jws = sign(claims)
    if request.param == "verified":
        return verify_authorization(jws, trust, now=NOW)
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session
    from gateway.storage.models import Base
    from gateway.storage.sealed import ColumnKeys, bind_keys
    engine = create_engine(f"sqlite:///{tmp_path / 'cov.db'}")
    bind_keys(engine, ColumnKeys(os.urandom(32)))
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        import_authorization(session, jws, trust, actor="t", now=NOW, patient_secret=PATIENT_SECRET)
        session.commit()
    with Session(engine) as session:  # a fresh load, as a transfer step does
        from gateway.storage.models import Authorization
        row = session.get(Authorization, "auth-cov")
        session.expunge(row)
    engine.dispose()
    return row


def test_named_sources_and_endpoints_are_covered(auth):
    assert covers_source(auth, "org-general-hospital").name == "General Hospital"
    covers_source(auth, "org-general-hospital", {"type": "fhir", "address": "https://EHR.general.example/fhir/R4"})
    covers_source(auth, "org-general-hospital", ("dicom", "PACS@pacs.general.example:104"))
    covers_source(auth, "org-imaging-center", {"type": "fax", "address": "+1-555-0100"})


def test_source_not_named_is_denied(auth):
    with pytest.raises(AuthorizationDenied) as info:
        covers_source(auth, "org-unknown-clinic")
    assert str(info.value) == "source 'org-unknown-clinic' is not a discloser named in authorization auth-cov"
    assert info.value.http_status == 403


@pytest.mark.parametrize("endpoint", [
    {"type": "fhir", "address": "https://ehr.general.example/fhir/R5"},
    {"type": "fhir", "address": "http://ehr.general.example/fhir/R4"},
    {"type": "dicom", "address": "OTHER@pacs.general.example:104"},
    {"type": "fax", "address": "+1-555-0100"},  # the imaging center's fax, not the hospital's
])
def test_endpoint_not_named_for_that_source_is_denied(auth, endpoint):
    with pytest.raises(AuthorizationDenied, match="of source 'org-general-hospital' is not named"):
        covers_source(auth, "org-general-hospital", endpoint)


def test_named_recipient_is_covered(auth):
    assert covers_recipient(auth, "org-second-opinion").name == "Second Opinion Center"
    covers_recipient(auth, "org-second-opinion", {"type": "gateway", "address": "https://gw.second-opinion.example/"})


def test_recipient_not_named_is_denied(auth):
    with pytest.raises(AuthorizationDenied) as info:
        covers_recipient(auth, "org-data-broker")
    assert str(info.value) == "recipient 'org-data-broker' is not the recipient named in authorization auth-cov"
    with pytest.raises(AuthorizationDenied, match="is not the endpoint of recipient 'org-second-opinion'"):
        covers_recipient(auth, "org-second-opinion", {"type": "gateway", "address": "https://evil.example"})


@pytest.mark.parametrize("data_class, clinical_date, expected", [
    ("labs", date(2023, 5, 1), True),
    ("imaging", "2022-01-01", True),  # first day of the range
    ("notes", "2024-06-30T23:59:00+00:00", True),  # last day
    ("notes", datetime(2024, 7, 1, tzinfo=timezone.utc), False),  # day after
    ("labs", date(2021, 12, 31), False),
    ("medications", date(2023, 5, 1), False),  # class not authorized
    ("pathology", date(2023, 5, 1), False),
    ("labs", None, False),  # undated record under a date range: not released
    ("labs", "not a date", False),
    ("nonsense", date(2023, 5, 1), False),
])
def test_allows_filters_by_class_and_date(auth, data_class, clinical_date, expected):
    assert allows(auth, data_class, clinical_date) is expected


def test_all_classes_without_a_date_range(sign, trust):
    auth = verify_authorization(sign(example_claims(ISSUER, "auth-all", now=NOW)), trust, now=NOW)
    assert auth.date_range is None
    assert all(allows(auth, c, None) for c in ["labs", "imaging", "medications", "allergies"])
    assert allows(auth, "labs", "1980-01-01")


def test_open_ended_date_range(sign, trust):
    claims = example_claims(ISSUER, "auth-open", data_classes=["all"], date_range=(date(2020, 1, 1), None), now=NOW)
    auth = verify_authorization(sign(claims), trust, now=NOW)
    assert auth.date_range == (date(2020, 1, 1), None)
    assert allows(auth, "labs", "2030-01-01") and not allows(auth, "labs", "2019-12-31")
