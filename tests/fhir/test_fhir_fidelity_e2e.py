"""The FHIR fidelity test (issue 12, "Done when"): records served by FHIR sources are
pulled by a transfer, delivered to a receiving gateway, and every value of every
delivered resource is compared, by its exact JSON text at every path, with what the
source serves when the resource is read raw. Only the documented normalizations may
differ (the resource's id and meta.source, references; see test_fhir_fidelity.py); a
difference fails the test naming the record and the JSON path. Nothing the source
served may be missing.

Two sources, one transfer:
- sekmet-fhir, a real third-party FHIR R4 server. It stores resources through Python's
  json module, so it serves decimals re-rendered (`1.00` as `1.0`, `1.5e3` as `1500.0`,
  `-0` as `0`): the comparison is against what it serves, as the gateway can only keep
  what it is given. Date-times, contained resources and everything else it serves as
  stored.
- a source that serves the stored JSON text verbatim (pretty-printed, as many servers
  answer), for what sekmet cannot be made to show: decimals of every form kept as
  written, and R4 resource types that R4B lacks. It is the fault peer's FHIR API
  (tests/fhir/fault_peer.py) answering from raw text.
"""
from __future__ import annotations

import json
import uuid

import requests

from gateway import create_app
from gateway.trust.authorizations import example_claims
from mappings.fhir_r4 import resource_uuid
from tests.fhir.fault_peer import FaultPeer
from tests.fhir.fhir_peers import SekmetServer
from tests.fhir.test_fhir_fidelity import DATE_TIMES, DECIMALS, R4_ONLY, Normalized, differences, tagged
from tests.helpers import ISSUER, RECEIVER_ORG, SENDER_ORG, bearer, make_token
from tests.test_transfer_flow import TERMINAL, Stack

MRN = {"system": "urn:mrn:fidelity", "value": "FID-1"}
PATIENT = ('{"resourceType": "Patient", "id": "fp1", "identifier": [{"system": "%s", "value": "%s"}],\n'
           ' "name": [{"family": "Precise", "given": ["Dee"]}], "birthDate": "1970-01-01"}'
           % (MRN["system"], MRN["value"]))


def observation(n: int, value: str, when: str) -> str:
    instant = when if "T" in when else "2024-01-02T03:04:05.715Z"  # issued: an instant
    return ('{\n  "resourceType": "Observation", "id": "fo%d", "status": "final",\n'
            '  "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",'
            ' "code": "laboratory"}]}],\n'
            '  "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}], "text": "Glucose"},\n'
            '  "subject": {"reference": "Patient/fp1"},\n'
            '  "effectiveDateTime": "%s", "issued": "%s",\n'
            '  "valueQuantity": {"value": %s, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},\n'
            '  "referenceRange": [{"low": {"value": %s}, "high": {"value": 1.50e2}}],\n'
            '  "component": [{"code": {"text": "ratio"}, "valueQuantity": {"value": 0.001530}}]\n}'
            % (n, when, instant, value, value))


def records() -> list[str]:
    """The source records: decimals and date-times of every form, contained resources."""
    out = [PATIENT]
    for n, value in enumerate(DECIMALS):
        out.append(observation(n, value, DATE_TIMES[n % len(DATE_TIMES)]))
    for n, when in enumerate(DATE_TIMES):
        out.append('{"resourceType": "Condition", "id": "fc%d", "subject": {"reference": "Patient/fp1"},\n'
                   ' "code": {"text": "finding"}, "onsetPeriod": {"start": "%s", "end": "%s"},'
                   ' "recordedDate": "%s"}' % (n, when, when, when))
    out.append('{"resourceType": "Medication", "id": "fm3", "code": {"text": "ibuprofen"}}')
    out.append('{"resourceType": "MedicationRequest", "id": "fmr1", "status": "active", "intent": "order",\n'
               ' "subject": {"reference": "Patient/fp1"}, "authoredOn": "2024-02-03T10:00:00.5-05:00",\n'
               ' "contained": [{"resourceType": "Medication", "id": "m1", "code": {"text": "aspirin"}},\n'
               '               {"resourceType": "Medication", "id": "m2", "code": {"text": "aspirin"}},\n'
               '               {"resourceType": "Medication", "id": "m3", "code": {"text": "ibuprofen"}}],\n'
               ' "medicationReference": {"reference": "#m2"},\n'
               ' "supportingInformation": [{"reference": "#m1"}, {"reference": "#m3"},'
               ' {"reference": "Medication/fm3"}],\n'
               ' "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": 2.50, "unit": "mL"}}]}]}')
    return out


class VerbatimPeer(FaultPeer):
    """The fault peer's FHIR API (metadata, Patient search, $everything, paging) answering
    with each resource's stored text, byte for byte, in pretty-printed pages; a read
    (`Type/id`) answers the stored text itself."""

    def __init__(self):
        super().__init__()
        self.raw: dict[tuple[str, str], str] = {}

    def add_raw(self, text: str) -> None:
        doc = json.loads(text)
        self.raw[(doc["resourceType"], doc["id"])] = text
        self.add(doc)

    def read(self, rtype: str, rid: str):
        raw = self.raw.get((rtype, rid))
        return raw.encode() if raw is not None else super().read(rtype, rid)

    def page(self, path: str, rtype: str, items: list[dict], params: dict):
        bundle = super().page(path, rtype, items, params)
        head = json.dumps({k: v for k, v in bundle.items() if k != "entry"}, indent=2)[:-2]
        entries = ",\n".join(
            '    {\n      "fullUrl": "%s",\n      "resource": %s,\n      "search": {"mode": "match"}\n    }'
            % (e["fullUrl"], self.raw[(e["resource"]["resourceType"], e["resource"]["id"])])
            for e in bundle["entry"])
        return (head + ',\n  "entry": [\n' + entries + "\n  ]\n}\n").encode()


def _source(base: str) -> dict:
    return {"kind": "fhir-rest", "organization": SENDER_ORG, "endpoint": base,
            "options": {"base_url": base, "auth": {"type": "none"}}}


def test_delivered_values_are_the_text_the_sources_serve(app, processes, sender_config, receiver_config,
                                                          tmp_path, sign, receiver_url):
    (tmp_path / "sekmet").mkdir()
    sekmet = SekmetServer(tmp_path / "sekmet").start()
    verbatim = VerbatimPeer().start()
    try:
        for text in records():
            doc = json.loads(text)
            requests.put(f"{sekmet.direct}/{doc['resourceType']}/{doc['id']}", data=text.encode(),
                         headers={"Content-Type": "application/fhir+json"}, timeout=30).raise_for_status()
            verbatim.add_raw(text)
        for text in R4_ONLY:
            verbatim.add_raw(text)
        sources = {"ehr": sekmet.base_url, "verbatim": verbatim.base_url}
        for name, base in sources.items():
            sender_config["sources"][name] = _source(base)
        app = create_app(sender_config)
        client = app.test_client()
        stack = Stack(app, client, bearer(make_token(app, "operator")), processes, sender_config,
                      receiver_config, tmp_path)
        stack.start_receiver()
        claims = example_claims(
            ISSUER, f"auth-{uuid.uuid4().hex[:12]}",
            patient={"name": {"family": "Precise", "given": ["Dee"]}, "birthDate": "1970-01-01",
                     "identifiers": [MRN]},
            disclosers=[{"id": SENDER_ORG, "name": "Test Hospital",
                         "endpoints": [{"type": "fhir", "address": b} for b in sources.values()]}],
            recipient={"id": RECEIVER_ORG, "name": "Test Center",
                       "endpoint": {"type": "gateway", "address": receiver_url}})
        r = client.post("/transfers", json={"authorization": stack.authorize(claims, sign),
                                            "sources": list(sources), "recipient": "center"},
                        headers=stack.operator)
        assert r.status_code == 202, r.get_json()
        view = stack.wait_state(r.get_json()["id"], TERMINAL, timeout=300)
        # completed: the receiver's signed receipt named the same entry hashes, computed
        # over the same text on both sides
        assert view["state"] == "completed", view["reason"]
        assert view["items"].get("failed", 0) == 0

        url = receiver_config["base_url"]
        entries = []
        for received in stack.inbox():
            raw = requests.get(f"{url}/inbox/{received['id']}/bundle", headers=stack.inbox_headers,
                               timeout=30).content
            entries.extend(tagged(raw)["entry"])
        patient_url = next(e["fullUrl"] for e in entries if e["resource"]["resourceType"] == "Patient")
        problems, delivered = [], {name: set() for name in sources}
        for entry in entries:
            res = entry["resource"]
            source_url = (res.get("meta") or {}).get("source", "")
            name = next((n for n, b in sources.items() if source_url.startswith(b + "/")), None)
            if name is None:
                continue  # the gateway's own entries: Patient, Consent, lists, summary, manifest
            rtype, rid = source_url[len(sources[name]) + 1:].split("/")
            delivered[name].add(f"{rtype}/{rid}")
            assert entry["fullUrl"] == f"urn:uuid:{resource_uuid(sources[name], rtype, rid)}"
            served = requests.get(source_url, timeout=30)  # the record read raw from its source
            served.raise_for_status()
            norm = Normalized(sources[name], "fp1", patient_url)
            problems += [f"{name} {rtype}/{rid}: {d}" for d in differences(tagged(served.content), res, norm)]
        assert problems == [], "delivered values differ from the source's:\n" + "\n".join(problems)
        # nothing missing: every record each source holds for the patient arrived (the
        # server's Patient is represented by the transfer's own Patient entry)
        held = [json.loads(t) for t in records() + R4_ONLY]
        expected = {f"{d['resourceType']}/{d['id']}" for d in held if d["resourceType"] != "Patient"}
        sekmet_expected = {k for k in expected if k.split("/")[0] not in
                           {json.loads(t)["resourceType"] for t in R4_ONLY}}  # not patient records
        assert delivered == {"ehr": sekmet_expected, "verbatim": expected}
        # the verbatim source really served every decimal form as written, and so it arrived
        served_values = {e["resource"]["valueQuantity"]["value"][1] for e in entries
                         if e["resource"]["resourceType"] == "Observation"
                         and e["resource"]["meta"]["source"].startswith(verbatim.base_url)}
        assert served_values == set(DECIMALS)
        app.extensions["gateway"].close()
    finally:
        verbatim.stop()
        sekmet.stop()
