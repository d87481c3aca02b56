"""Nothing silently missing from a FHIR pull (issue 12, items 5 and 10): the per-type plan
comes from the server's CapabilityStatement and names what it cannot search; references
the pull leaves dangling are read, or reported as unresolved."""
from __future__ import annotations

import collections
import uuid

import orjson
import requests

from connectors.base import Gap, PatientIdentifier, RawRecord, RecordQuery, RejectedRecord
from connectors.fhir.connector import FhirRestConnector
from connectors.fhir.plan import CORE_TYPES
from tests.fhir.conftest import query_for
from tests.fhir.fault_peer import FaultPeer, observation, patient
from tests.fhir.gateway_run import manifest, run_fhir_transfer, source_resources

QUERY = RecordQuery("a", "t", identifiers=(PatientIdentifier("urn:mrn", "42"),))
FAST = {"backoff": 0.05, "backoff_max": 0.2, "max_retries": 2, "timeout": [2, 2], "page_size": 10}
# a server with billing types: Claim cannot be searched by patient, Coverage by beneficiary
BILLING_SERVER = {"Patient": ["identifier"], "Observation": ["patient", "date"],
                  "Claim": ["identifier", "status"], "ExplanationOfBenefit": ["patient", "created"],
                  "Coverage": ["beneficiary", "payor"], "SupplyDelivery": ["patient"],
                  "Device": ["patient"], "Practitioner": ["name"]}


def pull(peer, workdir, query=QUERY, **options) -> list:
    with FhirRestConnector("ehr", {"base_url": peer.base_url, **FAST, **options}, workdir) as conn:
        return list(conn.fetch(query))


def pulled(records) -> dict[str, dict]:
    """"Type/id" -> resource, over the records' NDJSON lines."""
    out = {}
    for r in records:
        if isinstance(r, RawRecord) and r.kind == "fhir-json":
            for line in r.path.read_bytes().splitlines():
                res = orjson.loads(line)["resource"]
                out[f"{res['resourceType']}/{res['id']}"] = res
    return out


def gaps(records, kind: str) -> dict[str, str]:
    return {g.what: g.reason for g in records if isinstance(g, Gap) and g.kind == kind}


def billing_peer() -> FaultPeer:
    peer = FaultPeer(everything=False)
    peer.capability_types = BILLING_SERVER
    peer.add(patient("p1", "42"), observation("o1", "p1"),
             {"resourceType": "Claim", "id": "c1", "patient": {"reference": "Patient/p1"}},
             {"resourceType": "ExplanationOfBenefit", "id": "e1", "patient": {"reference": "Patient/p1"}},
             {"resourceType": "Coverage", "id": "v1", "beneficiary": {"reference": "Patient/p1"}},
             {"resourceType": "SupplyDelivery", "id": "s1", "patient": {"reference": "Patient/p1"}})
    return peer.start()


def test_search_plan_covers_every_type_the_server_lists(tmp_path):
    peer = billing_peer()
    try:
        records = pull(peer, tmp_path)
        assert not [r for r in records if isinstance(r, RejectedRecord)]
        assert sorted(pulled(records)) == ["Coverage/v1", "ExplanationOfBenefit/e1", "Observation/o1",
                                           "SupplyDelivery/s1"]
        asked = {r["path"]: r["params"] for r in peer.requests if r["path"] not in ("metadata", "Patient")}
        assert asked["Coverage"]["beneficiary"] == "Patient/p1"  # the parameter the server lists
        assert asked["ExplanationOfBenefit"]["patient"] == "p1"
        assert "Claim" not in asked
        not_searchable = gaps(records, "not-searchable")
        assert set(not_searchable) == (CORE_TYPES - set(BILLING_SERVER)) | {"Claim"}
        assert "no patient search parameter" in not_searchable["Claim"]
        assert not_searchable["Goal"] == "the server's CapabilityStatement does not list this type"
        # a narrower authorization: only its own types, its own gaps
        billing = pull(peer, tmp_path / "billing",
                       RecordQuery("a", "t", identifiers=QUERY.identifiers, data_classes=frozenset({"billing"})))
        assert sorted(pulled(billing)) == ["Coverage/v1", "ExplanationOfBenefit/e1"]
        assert set(gaps(billing, "not-searchable")) == {"Claim"}
    finally:
        peer.stop()


def dangling_peer() -> FaultPeer:
    """$everything leaves out Devices, Practitioners, Organizations and Specimens that the
    Observation references."""
    peer = FaultPeer()
    peer.everything_omits = {"Device", "Practitioner", "Organization", "Specimen"}
    obs = observation("o1", "p1")
    obs.update({
        "device": {"reference": "Device/d1"},
        "performer": [{"reference": "Practitioner/dr1"}, {"reference": "Practitioner/secret"},
                      {"reference": "https://elsewhere.example/fhir/Practitioner/x"},
                      {"reference": "Practitioner?identifier=urn:npi|1"}, {"reference": "#c1"}],
        "hasMember": [{"reference": "Observation/o-gone"}],
        "focus": [{"reference": "Patient/p2"}],
        "specimen": {"reference": f"{peer.base_url}/Specimen/sp1"},
    })
    peer.add(patient("p1", "42"), obs,
             {"resourceType": "Device", "id": "d1", "status": "active"},
             {"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "Who"}],
              "extension": [{"url": "urn:x", "valueReference": {"reference": "Organization/org1"}}]},
             {"resourceType": "Practitioner", "id": "secret"},
             {"resourceType": "Organization", "id": "org1", "name": "Clinic"},
             {"resourceType": "Specimen", "id": "sp1", "subject": {"reference": "Patient/p2"}})
    peer.fault("Practitioner/secret", "status", status=403, times=5)
    return peer.start()


def test_references_everything_left_out_are_read_or_reported(tmp_path):
    peer = dangling_peer()
    try:
        records = pull(peer, tmp_path)
        got = pulled(records)
        assert {"Device/d1", "Practitioner/dr1", "Organization/org1"} <= set(got)  # org1: a second round
        assert "Specimen/sp1" not in got and "Practitioner/secret" not in got
        unresolved = gaps(records, "unresolved")
        assert len(unresolved) == sum(isinstance(g, Gap) and g.kind == "unresolved" for g in records)  # once each
        assert set(unresolved) == {"Practitioner/secret", "Observation/o-gone", "Patient/p2", "Specimen/sp1",
                                   "https://elsewhere.example/fhir/Practitioner/x"}
        assert "HTTP 403" in unresolved["Practitioner/secret"]
        assert "HTTP 404" in unresolved["Observation/o-gone"]
        assert unresolved["Specimen/sp1"] == "refers to another patient: not taken"
        assert unresolved["Patient/p2"].startswith("another patient")
        assert unresolved["https://elsewhere.example/fhir/Practitioner/x"].startswith("outside the server base")
        reads = sorted(r["path"] for r in peer.requests if "/" in r["path"] and "$" not in r["path"])
        assert reads == ["Device/d1", "Observation/o-gone", "Organization/org1", "Practitioner/dr1",
                         "Practitioner/secret", "Specimen/sp1"]
        # the text of a read resource is kept as served
        line = next(r for r in records if isinstance(r, RawRecord) and "Device?read#" in r.origin)
        assert orjson.loads(line.path.read_bytes())["fullUrl"] == f"{peer.base_url}/Device/d1"
    finally:
        peer.stop()


def test_reference_reads_stay_within_the_authorization_and_the_limit(tmp_path):
    peer = dangling_peer()
    try:
        labs = RecordQuery("a", "t", identifiers=QUERY.identifiers, data_classes=frozenset({"labs"}))
        records = pull(peer, tmp_path / "labs", labs)
        got = pulled(records)
        assert "Device/d1" not in got and "Practitioner/dr1" in got  # Device: procedures, not labs
        assert "Device/d1" not in gaps(records, "unresolved")
        peer.requests.clear()
        limited = pull(peer, tmp_path / "limited", max_reference_reads=2)
        reads = sorted(r["path"] for r in peer.requests if "/" in r["path"] and "$" not in r["path"])
        assert reads == ["Device/d1", "Observation/o-gone"]  # the first two, in order
        over = gaps(limited, "unresolved")
        assert "over the limit of 2 reads" in over["Practitioner/dr1"]
    finally:
        peer.stop()


def test_everything_on_a_real_server_leaves_a_device_out_and_the_pull_reads_it(sekmet, tmp_path):
    tag = uuid.uuid4().hex[:10]
    pid, dev = f"dang-{tag}", f"dev-{tag}"
    pat = sekmet.put({"resourceType": "Patient", "id": pid,
                      "identifier": [{"system": "http://hospital.smarthealthit.org", "value": f"MRN-{tag}"}],
                      "name": [{"family": f"Dangle{tag}"}], "birthDate": "1960-05-06"})
    sekmet.put({"resourceType": "Device", "id": dev, "status": "active"})  # no patient: not in $everything
    sekmet.put({"resourceType": "Observation", "id": f"obs-{tag}", "status": "final", "code": {"text": "x"},
                "subject": {"reference": f"Patient/{pid}"}, "device": {"reference": f"Device/{dev}"},
                "derivedFrom": [{"reference": f"Observation/gone-{tag}"}], "effectiveDateTime": "2024-01-02"})
    everything = requests.get(f"{sekmet.direct}/Patient/{pid}/$everything", timeout=30).json()
    assert f"Device/{dev}" not in {f"{e['resource']['resourceType']}/{e['resource']['id']}"
                                   for e in everything["entry"]}
    with FhirRestConnector("ehr", {"base_url": sekmet.base_url}, tmp_path) as conn:
        records = list(conn.fetch(query_for(pat)))
    assert f"Device/{dev}" in pulled(records)
    assert gaps(records, "unresolved") == {
        f"Observation/gone-{tag}": "the server answered HTTP 404 to its read (not found)"}


def test_search_transfer_delivers_every_type_and_reports_what_it_cannot_search(
        processes, sender_config, receiver_config, tmp_path, sign, receiver_url, sekmet):
    subject = sekmet.patients[0]
    view, bundles, stack = run_fhir_transfer(processes, sender_config, receiver_config, tmp_path, sign,
                                             receiver_url, sekmet.base_url, subject["patient"],
                                             {"retrieval": "search"})
    assert view["state"] == "completed", view["reason"]
    got = collections.Counter(k.partition("/")[0] for k in source_resources(bundles, sekmet.base_url))
    for rtype in ("Claim", "ExplanationOfBenefit", "Coverage", "Observation", "Encounter"):
        held = requests.get(f"{sekmet.direct}/{rtype}", params={"patient": subject["id"], "_count": 1000},
                            timeout=60).json()
        assert got[rtype] == len(held.get("entry", [])) > 0, rtype
    # CareTeam: not listed by this server, yet CarePlans reference them: read one by one
    everything = requests.get(f"{sekmet.direct}/Patient/{subject['id']}/$everything", timeout=60).json()
    held = collections.Counter(e["resource"]["resourceType"] for e in everything["entry"])
    assert got["CareTeam"] == held["CareTeam"] > 0
    report = view["completeness"]["ehr"]
    assert report["notSearchable"] == [
        {"what": t, "reason": "the server's CapabilityStatement does not list this type"}
        for t in ("CareTeam", "Goal", "SupplyDelivery")]
    assert report["complete"] is False
    assert manifest(bundles)["sources"]["ehr"]["completeness"]["notSearchable"] == report["notSearchable"]
    stack.app.extensions["gateway"].close()


def _origin(item) -> str:
    return item.origin if isinstance(item, RawRecord) else f"{item.kind}:{item.what}"


def test_a_pull_stopped_among_its_reads_resumes_without_loss_or_repeat(tmp_path):
    peer = dangling_peer()
    try:
        full = {_origin(r) for r in pull(peer, tmp_path / "full")}
        work = tmp_path / "crash"
        stored = set()
        with FhirRestConnector("ehr", {"base_url": peer.base_url, **FAST}, work) as conn:
            for item in conn.fetch(QUERY):
                if isinstance(item, RawRecord) and "?read#" in item.origin:
                    break  # the worker dies handing over the first resource read by reference
                stored.add(_origin(item))
        assert any(o.startswith("unresolved:") for o in stored)  # some gaps were reported already
        query = RecordQuery(**{**QUERY.__dict__, "already_fetched": frozenset(stored)})
        rest = [_origin(r) for r in pull(peer, work, query)]
        assert len(rest) == len(set(rest)) and not stored & set(rest)
        assert stored | set(rest) == full
    finally:
        peer.stop()
