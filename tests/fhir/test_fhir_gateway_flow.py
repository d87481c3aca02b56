"""A FHIR source through the whole gateway: a real FHIR server (sekmet-fhir) loaded with a
Synthea patient, pulled under an authorization, delivered as one coherent bundle whose
references all resolve inside it."""
from __future__ import annotations

import uuid

from gateway.trust.authorizations import example_claims
from tests.fhir.conftest import MRN_SYSTEM
from tests.helpers import ISSUER, RECEIVER_ORG, SENDER_ORG
from tests.test_transfer_flow import TERMINAL, Stack


def _references(node, out: list[str]) -> list[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                out.append(value)
            else:
                _references(value, out)
    elif isinstance(node, list):
        for value in node:
            _references(value, out)
    return out


def test_fhir_patient_record_arrives_whole(app, client, operator, processes, sender_config,
                                           receiver_config, tmp_path, sign, receiver_url, sekmet):
    server_patient = sekmet.patients[0]["patient"]
    mrn = next(i for i in server_patient["identifier"] if i.get("system") == MRN_SYSTEM)
    sender_config["sources"]["ehr"] = {"kind": "fhir-rest", "organization": SENDER_ORG,
                                       "endpoint": sekmet.base_url,
                                       "options": {"base_url": sekmet.base_url, "auth": {"type": "none"}}}
    from gateway import create_app

    app = create_app(sender_config)
    client = app.test_client()
    from tests.helpers import bearer, make_token
    operator = bearer(make_token(app, "operator"))
    stack = Stack(app, client, operator, processes, sender_config, receiver_config, tmp_path)
    stack.start_receiver()
    patient = {"name": {"family": server_patient["name"][0]["family"],
                        "given": server_patient["name"][0]["given"]},
               "birthDate": server_patient["birthDate"],
               "identifiers": [{"system": mrn["system"], "value": mrn["value"]}]}
    claims = example_claims(
        ISSUER, f"auth-{uuid.uuid4().hex[:12]}", patient=patient,
        disclosers=[{"id": SENDER_ORG, "name": "Test Hospital",
                     "endpoints": [{"type": "fhir", "address": sekmet.base_url}]}],
        recipient={"id": RECEIVER_ORG, "name": "Test Center",
                   "endpoint": {"type": "gateway", "address": receiver_url}})
    auth_id = stack.authorize(claims, sign)
    r = client.post("/transfers", json={"authorization": auth_id, "sources": ["ehr"],
                                        "recipient": "center"}, headers=operator)
    assert r.status_code == 202, r.get_json()
    view = stack.wait_state(r.get_json()["id"], TERMINAL, timeout=300)
    assert view["state"] == "completed", view["reason"]
    assert view["sources"][0]["items"] >= 1 and view["items"].get("failed", 0) == 0

    bundles = [stack.received_bundle(b["id"]) for b in stack.inbox()]
    entries = [e for b in bundles for e in b["entry"]]
    full_urls = {e["fullUrl"] for e in entries}
    kinds = {e["resource"]["resourceType"] for e in entries}
    assert {"Condition", "Observation", "Encounter"} <= kinds
    # every reference between clinical resources resolves to an entry of the delivery
    dangling = sorted({ref for e in entries for ref in _references(e["resource"], [])
                       if ref.startswith("urn:uuid:") and ref not in full_urls})
    assert dangling == []
    # one Patient: the server's own copy is merged into the transfer's Patient
    assert sum(e["resource"]["resourceType"] == "Patient" for e in entries) == 1
    app.extensions["gateway"].close()
