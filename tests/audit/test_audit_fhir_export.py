"""BALP AuditEvents, FHIR Bundle / NDJSON exports and the accounting of disclosures."""
from __future__ import annotations

import base64
import io
import json

import pytest
from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent
from fhir.resources.R4B.bundle import Bundle
from pypdf import PdfReader
from sqlalchemy.orm import Session

from gateway.storage.models import Authorization

from gateway import audit
from gateway.audit import checkpoints, export, queries, verify
from gateway.audit.fhir_auditevent import (DCM, LIFECYCLE, LOG_ENTRY_URL, GatewayIdentity,
                                           to_fhir)

SECRET = b"s" * 32  # the deployment secret patient keys are an HMAC with
PATIENT = audit.patient_key("urn:oid:2.16.840.1.113883.4.1", "123-45-6789", SECRET)
OTHER = audit.patient_key("urn:oid:2.16.840.1.113883.4.1", "987-65-4321", SECRET)
ME = GatewayIdentity("St. Example Records Gateway", "https://gw.example.org")


@pytest.fixture
def filled(sqlite_engine, log_key):
    """Two transfers' worth of events for two patients, checkpointed."""
    with Session(sqlite_engine) as s:
        for t, pk, recipient in (("t1", PATIENT, "Second Opinion Center"), ("t2", OTHER, "Clinic B")):
            auth = f"auth-{t}"
            audit.record(s, "authorization.verified", actor="api:intake", role="operator",
                         authorization_id=auth, patient_key=pk, purpose="TREAT")
            audit.record(s, "pull.finished", actor="worker", transfer_id=t, authorization_id=auth,
                         patient_key=pk, source="ehr-main", items=4, bytes=2048)
            audit.record(s, "delivery.succeeded", actor="worker", transfer_id=t, authorization_id=auth,
                         patient_key=pk, recipient=recipient, bundle_sha256="ab" * 32, entries=17,
                         recipient_endpoint=f"https://{t}.example.org/fhir",
                         size=40960, data_classes=["notes", "labs"], purpose="TREAT")
            s.commit()
        audit.record(s, "authorization.rejected", actor="api:intake", role="operator",
                     authorization_id="auth-bad", patient_key=PATIENT, outcome="deny", reason="expired")
        audit.record(s, "delivery.failed", actor="worker", transfer_id="t1", authorization_id="auth-t1",
                     patient_key=PATIENT, outcome="failure", recipient="Second Opinion Center")
        audit.record(s, "api.read", actor="auditor-1", role="auditor", patient_key=PATIENT,
                     resource="transfers/t1")
        s.commit()
        # as the transfer steps write them: only the authorization names the patient
        s.add(Authorization(id="auth-t3", issuer="https://esign.example", key_id="k1",
                            jws_sha256="ef" * 32, jws="x.y.z", consent={"resourceType": "Consent"},
                            claims={"purpose": "Second opinion on the treatment plan"},
                            recipient_id="tumor-board"))
        audit.record(s, "authorization.verified", actor="api:intake", role="operator",
                     authorization_id="auth-t3", patient_key=PATIENT, recipient="tumor-board",
                     data_classes=["imaging", "pathology"])
        audit.record(s, "transfer.delivery.sent", actor="worker", transfer_id="t3",
                     authorization_id="auth-t3", recipient="tumor-board", bundle_id="b3",
                     sha256="cd" * 32)
        s.commit()
        checkpoints.create_checkpoint(s, log_key, origin="gw.example.org/audit")
        s.commit()
    return sqlite_engine


def test_disclosure_follows_balp_privacy_disclosure(filled):
    with Session(filled) as s:
        events = queries.find_events(s, type_prefix="delivery.succeeded")
    r = to_fhir(events[0], me=ME)
    FhirAuditEvent.model_validate(r)
    assert (r["type"]["system"], r["type"]["code"]) == (DCM, "110106")
    assert r["action"] == "R" and r["outcome"] == "0"
    assert {"system": LIFECYCLE, "code": "disclose",
            "display": "Disclose Record Lifecycle Event"} in r["subtype"]
    roles = {a["type"]["coding"][0]["code"]: a["who"] for a in r["agent"]}
    assert roles["110153"]["display"] == ME.name
    assert roles["110152"]["display"] == "Second Opinion Center"
    dest = next(a for a in r["agent"] if a["type"]["coding"][0]["code"] == "110152")
    assert dest["network"] == {"address": "https://t1.example.org/fhir", "type": "5"}
    entity_roles = {e["role"]["code"]: e for e in r["entity"]}
    assert entity_roles["1"]["what"]["identifier"]["value"] == PATIENT  # the patient (hashed key)
    assert entity_roles["4"]["what"]["identifier"]["value"] == "urn:sha256:" + "ab" * 32  # the data
    assert entity_roles["13"]["type"]["code"] == "Consent"
    assert r["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
    ext = next(e for e in r["extension"] if e["url"] == LOG_ENTRY_URL)
    assert {"url": "seq", "valueString": str(events[0].seq)} in ext["extension"]


def test_authorization_decisions_are_permit_and_deny_with_the_consent(filled):
    with Session(filled) as s:
        permit = to_fhir(queries.find_events(s, type_prefix="authorization.verified")[0])
        deny = to_fhir(queries.find_events(s, type_prefix="authorization.rejected")[0])
        read = to_fhir(queries.find_events(s, type_prefix="api.read")[0])
        imp = to_fhir(queries.find_events(s, type_prefix="pull.")[0])
    for r, outcome, decision in ((permit, "0", "permit"), (deny, "8", "deny")):
        assert r["type"]["code"] == "110113" and r["subtype"][0]["code"] == "AuthZ-Consent"
        assert r["outcome"] == outcome and r["outcomeDesc"].startswith(decision)
        consent = next(e for e in r["entity"] if e["type"]["code"] == "Consent")
        assert consent["detail"] == [{"type": "decision", "valueString": decision}]
    assert "expired" in deny["outcomeDesc"]
    assert read["type"]["code"] == "rest" and read["subtype"][0]["code"] == "read"
    assert read["agent"][0]["requestor"] is True
    assert imp["type"]["code"] == "110107" and imp["action"] == "C"


def test_bundle_and_ndjson_exports_verify_offline(filled, log_key, tmp_path):
    with Session(filled) as s:
        doc = export.bundle(s, me=ME, patient_key=PATIENT)
        Bundle.model_validate(doc)
        assert doc["type"] == "collection" and len(doc["entry"]) == 8
        (tmp_path / "bundle.json").write_text(json.dumps(doc))
        buf = io.StringIO()
        assert export.write_ndjson(s, buf, fhir=True, me=ME) == 11
        (tmp_path / "all.ndjson").write_text(buf.getvalue())
        (tmp_path / "cps.json").write_text(json.dumps(checkpoints.checkpoints_document(s)))
    (tmp_path / "jwks.json").write_text(json.dumps(
        {"keys": [checkpoints.public_jwk(log_key.public_key())]}))
    assert verify.verify_files(tmp_path / "all.ndjson", tmp_path / "cps.json", tmp_path / "jwks.json") == []
    # one patient's events: a partial export, checked by inclusion proofs alone
    assert verify.verify_files(tmp_path / "bundle.json", tmp_path / "cps.json", tmp_path / "jwks.json",
                               partial=True) == []
    problems = verify.verify_files(tmp_path / "bundle.json", tmp_path / "cps.json",
                                   tmp_path / "jwks.json")
    assert any("missing from the log" in p for p in problems)  # not the whole log
    # change the human-readable canonical payload of one event in the Bundle: caught
    ev = doc["entry"][2]["resource"]
    ext = next(e for e in ev["extension"] if e["url"] == LOG_ENTRY_URL)
    canon = next(x for x in ext["extension"] if x["url"] == "canonical")
    body = json.loads(base64.b64decode(canon["valueBase64Binary"]))
    body["detail"]["recipient"] = "Someone Else"
    canon["valueBase64Binary"] = base64.b64encode(json.dumps(body).encode()).decode()
    (tmp_path / "bundle.json").write_text(json.dumps(doc))
    problems = verify.verify_files(tmp_path / "bundle.json", tmp_path / "cps.json",
                                   tmp_path / "jwks.json", partial=True)
    assert any("seq 3:" in p for p in problems), problems


def test_readable_fields_of_an_export_cannot_be_changed(filled, log_key, tmp_path):
    """Only the canonical event is hashed into the log; the AuditEvent's readable fields
    (agent, outcome, entities) are rebuilt from it and compared, so an export cannot say
    something else than what was logged."""
    with Session(filled) as s:
        buf = io.StringIO()
        export.write_ndjson(s, buf, fhir=True, me=ME)
        (tmp_path / "cps.json").write_text(json.dumps(checkpoints.checkpoints_document(s)))
    (tmp_path / "jwks.json").write_text(json.dumps(
        {"keys": [checkpoints.public_jwk(log_key.public_key())]}))
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    changes = {
        "agent": lambda r: r["agent"][0]["who"].update(display="Someone Else"),
        "outcome": lambda r: r.update(outcome="0" if r["outcome"] != "0" else "8"),
        "entity": lambda r: r.setdefault("entity", []).append({"what": {"display": "Extra"}}),
    }
    for field, change in changes.items():
        edited = json.loads(json.dumps(events))
        change(edited[4])
        path = tmp_path / f"{field}.ndjson"
        path.write_text("\n".join(json.dumps(e) for e in edited) + "\n")
        problems = verify.verify_files(path, tmp_path / "cps.json", tmp_path / "jwks.json")
        assert problems == [f"seq 5 (line 5): AuditEvent altered: fields {field} differ from its "
                            "canonical event"], problems


def test_accounting_of_disclosures_json_and_pdf(filled):
    with Session(filled) as s:
        acc = export.accounting(s, PATIENT)
    # the failed delivery is not a disclosure; t3's names the patient only through its authorization
    assert [d["recipient"] for d in acc["disclosures"]] == ["Second Opinion Center", "tumor-board"]
    t3 = acc["disclosures"][1]
    assert t3["purpose"] == "Second opinion on the treatment plan"
    assert "imaging, pathology" in t3["description"] and t3["bundle_sha256"] == "cd" * 32
    d = acc["disclosures"][0]
    assert d["purpose"] == "TREAT" and d["authorization_id"] == "auth-t1"
    assert "notes, labs" in d["description"] and d["bundle_sha256"] == "ab" * 32
    assert acc["checkpoint"]["tree_size"] == 11
    json.dumps(acc)
    pdf = export.accounting_pdf(acc)
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert "Accounting of disclosures" in text and "Second Opinion Center" in text
    assert "auth-t1" in text and "tumor-board" in text
    with Session(filled) as s:
        empty = export.accounting(s, "0" * 64)
    assert empty["disclosures"] == []
    assert "No disclosures" in PdfReader(io.BytesIO(export.accounting_pdf(empty))).pages[0].extract_text()
