"""One transfer from a FHIR source through the whole gateway (sender worker, receiving
gateway), for the end-to-end FHIR tests: what was delivered and what the sender reports."""
from __future__ import annotations

import base64
import json
import uuid

from gateway.trust.authorizations import example_claims
from tests.helpers import ISSUER, RECEIVER_ORG, SENDER_ORG, bearer, make_token
from tests.test_transfer_flow import TERMINAL, Stack


def run_fhir_transfer(processes, sender_config, receiver_config, tmp_path, sign, receiver_url,
                      base_url: str, patient: dict, options: dict | None = None,
                      data_classes=("all",), date_range=None) -> tuple[dict, list[dict], Stack]:
    """Pull `patient` (a FHIR Patient on `base_url`) under a new authorization and deliver it.
    Returns (the transfer's API view once it ended, the received bundles, the stack)."""
    mrn = patient["identifier"][0]
    sender_config["sources"]["ehr"] = {"kind": "fhir-rest", "organization": SENDER_ORG,
                                       "endpoint": base_url,
                                       "options": {"base_url": base_url, "auth": {"type": "none"},
                                                   **(options or {})}}
    from gateway import create_app
    from gateway.engine.faxes import ensure_cover_key

    app = create_app(sender_config)
    svc = app.extensions["gateway"]
    svc.keys.ensure()  # as the `app` fixture does: the worker process reads them
    ensure_cover_key(svc.settings.keys_dir)
    (tmp_path / "sender-jwks.json").write_text(json.dumps(svc.keys.jwks()))
    client = app.test_client()
    operator = bearer(make_token(app, "operator"))
    stack = Stack(app, client, operator, processes, sender_config, receiver_config, tmp_path)
    stack.start_receiver()
    name = patient["name"][0]
    claims = example_claims(
        ISSUER, f"auth-{uuid.uuid4().hex[:12]}",
        patient={"name": {"family": name["family"], "given": name.get("given", ["X"])},
                 "birthDate": patient["birthDate"],
                 "identifiers": [{"system": mrn["system"], "value": mrn["value"]}]},
        disclosers=[{"id": SENDER_ORG, "name": "Test Hospital",
                     "endpoints": [{"type": "fhir", "address": base_url}]}],
        recipient={"id": RECEIVER_ORG, "name": "Test Center",
                   "endpoint": {"type": "gateway", "address": receiver_url}},
        data_classes=data_classes, date_range=date_range)
    auth_id = stack.authorize(claims, sign)
    r = client.post("/transfers", json={"authorization": auth_id, "sources": ["ehr"],
                                        "recipient": "center"}, headers=operator)
    assert r.status_code == 202, r.get_json()
    view = stack.wait_state(r.get_json()["id"], TERMINAL, timeout=150)
    bundles = [stack.received_bundle(b["id"]) for b in stack.inbox()] if view["state"] == "completed" else []
    return view, bundles, stack


def source_resources(bundles: list[dict], base_url: str) -> dict[str, dict]:
    """"Type/id" at the source -> the delivered resource (by its meta.source)."""
    out = {}
    for b in bundles:
        for e in b["entry"]:
            src = (e["resource"].get("meta") or {}).get("source") or ""
            if src.startswith(base_url + "/"):
                out[src[len(base_url) + 1:]] = e["resource"]
    return out


def manifest(bundles: list[dict]) -> dict:
    """The completeness manifest the sender put in the delivery."""
    for b in bundles:
        for e in b["entry"]:
            res = e["resource"]
            if res["resourceType"] == "Binary" and res.get("contentType") == "application/json":
                doc = json.loads(base64.b64decode(res["data"]))
                if "sources" in doc:
                    return doc
    raise AssertionError("no completeness manifest in the delivery")
