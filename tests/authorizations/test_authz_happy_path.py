"""A valid authorization verifies, is stored with its Consent and claims, and is usable."""
from __future__ import annotations

import hashlib
from datetime import date, timedelta

from sqlalchemy import select

from gateway.trust.authorizations import (allows, check_active, covers_recipient,
                                          covers_source, import_authorization,
                                          verify_authorization)
from gateway.storage.models import AuditEvent, Authorization

from tests.authorizations.authz_support import ISSUER, NOW, PATIENT_SECRET


def test_valid_authorization_verifies(claims, sign, trust):
    jws = sign(claims)
    auth = verify_authorization(jws, trust, now=NOW)
    assert auth.id == "auth-0001"
    assert auth.issuer == ISSUER
    assert auth.kid == "esign-2026-01"
    assert auth.alg == "EdDSA"
    assert auth.jws_sha256 == hashlib.sha256(jws.encode()).hexdigest()
    assert auth.not_before == NOW
    assert auth.expires_at == NOW + timedelta(days=30)
    assert auth.data_classes == {"all"}
    assert auth.recipient.id == "org-second-opinion"
    assert [d.id for d in auth.disclosers] == ["org-demo-clinic"]
    assert auth.patient.birthDate == date(1970, 1, 1)
    assert auth.consent == claims["consent"]
    assert auth.consent["resourceType"] == "Consent"
    assert auth.claims == claims


def test_es256_authorization_verifies(claims, sign, trust, es256_key):
    auth = verify_authorization(sign(claims, es256_key), trust, now=NOW)
    assert (auth.alg, auth.kid) == ("ES256", "esign-ec-1")


def test_import_stores_row_consent_claims_and_audit(claims, sign, trust, session):
    jws = sign(claims)
    row = import_authorization(session, jws, trust, actor="tester", role="operator", now=NOW, patient_secret=PATIENT_SECRET)
    session.commit()
    session.expire_all()
    stored = session.get(Authorization, "auth-0001")
    assert stored is row or stored.id == row.id
    assert stored.issuer == ISSUER and stored.key_id == "esign-2026-01"
    assert stored.jws == jws
    assert stored.jws_sha256 == hashlib.sha256(jws.encode()).hexdigest()
    assert stored.consent == claims["consent"]
    assert stored.claims == claims
    assert stored.recipient_id == "org-second-opinion"
    assert stored.status == "active"
    check_active(stored, now=NOW + timedelta(days=1))
    covers_source(stored, "org-demo-clinic", {"type": "pdf-folder", "address": "demo-clinic"})
    covers_recipient(stored, "org-second-opinion", {"type": "gateway", "address": "http://127.0.0.1:8081/"})
    assert allows(stored, "labs", "2020-05-01")
    events = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
    assert [(e.type, e.outcome) for e in events] == [("authorization.received", "success"),
                                                     ("authorization.verified", "success")]
    assert events[1].authorization_id == "auth-0001"
    assert events[1].actor == "tester" and events[1].role == "operator"
    assert events[1].patient_key and len(events[1].patient_key) == 64
    # no patient data in the audit log
    blob = repr([e.detail for e in events])
    assert "Testperson" not in blob and "MRN-000001" not in blob and "1970-01-01" not in blob
