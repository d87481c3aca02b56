"""Scenario 7, source faults (the FHIR part): a FHIR server that cuts pages mid-body
(it promises the whole page, sends half and hangs up) and answers 503 to another, while
5 transfers pull 40 observations each, 10 a page. Each cut page is fetched again, and
only that page: the source's request log shows every other page asked once. Counted at
the recipient: every observation of every transfer, once.

Each transfer's source is its own fault-injecting FHIR peer (tests/fhir/fault_peer.py),
a real HTTP server in this process that the worker processes pull from. One patient a
server: the peer's `$everything` answers with every resource it holds. Not covered here: a PACS
aborting the association mid C-MOVE, and a fax file still being written (they need
the DICOM and fax sources in the harness)."""
from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import requests

from tests.fhir.fault_peer import FaultPeer, observation, patient
from tests.helpers import ISSUER, RECEIVER_ORG, SENDER_ORG

from .harness import TERMINAL, Cluster, _cli
from .result import ScenarioResult, scenario

TRANSFERS, OBSERVATIONS, PAGE = 5, 40, 10


def _authorize(cluster: Cluster, peer: FaultPeer, mrn: str) -> str:
    from gateway.trust.authorizations import example_claims, sign_authorization

    claims = example_claims(
        ISSUER, f"auth-{uuid.uuid4().hex[:12]}",
        patient={"name": {"family": "Doe", "given": ["Jan"]}, "birthDate": "1970-01-01",
                 "identifiers": [{"system": "urn:mrn", "value": mrn}]},
        disclosers=[{"id": SENDER_ORG, "name": "Test Hospital",
                     "endpoints": [{"type": "fhir", "address": peer.base_url}]}],
        recipient={"id": RECEIVER_ORG, "name": "Test Center",
                   "endpoint": {"type": "gateway", "address": cluster.receiver_url}},
        data_classes=("all",))
    r = cluster.client.post("/authorizations", headers=cluster.operator,
                            json={"jws": sign_authorization(claims, cluster.issuer_key)})
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"]


def _observations_held(cluster: Cluster, base_url: str) -> Counter:
    """"Observation/<id>" at the source -> times the recipient holds it (its inbox)."""
    staff = _cli(cluster.dir / "receiver-cli.json", "token", "create", "--name", "staff",
                 "--role", "recipient")
    headers = {"Authorization": f"Bearer {staff}"}
    inbox = requests.get(f"{cluster.receiver_url}/inbox", headers=headers, timeout=30).json()
    held: Counter = Counter()
    for row in inbox["received"]:
        bundle = requests.get(f"{cluster.receiver_url}/inbox/{row['id']}/bundle", headers=headers,
                              timeout=30).json()
        for entry in bundle["entry"]:
            source = (entry["resource"].get("meta") or {}).get("source") or ""
            if source.startswith(base_url + "/Observation/"):
                held[source[len(base_url) + 1:]] += 1
    return held


@scenario(7, "source faults: FHIR pages cut mid-body")
def run(workdir: Path) -> ScenarioResult:
    notes: list[str] = []
    recovery = 0.0
    peers = [FaultPeer().start() for _ in range(TRANSFERS)]
    for n, peer in enumerate(peers):
        peer.add(patient(f"p{n}", f"mrn-{n}"))
        peer.add(*[observation(f"o{n}-{i}", f"p{n}") for i in range(OBSERVATIONS)])
        # the third page cut mid-body, the second answered 503 once
        peer.fault("_offset=20", "truncate")
        peer.fault("_offset=10", "status", status=503)
    cluster = Cluster(workdir / "cluster", workers=2, sender={"sources": {f"ehr{n}": {
        "kind": "fhir-rest", "organization": SENDER_ORG, "endpoint": peer.base_url,
        "options": {"base_url": peer.base_url, "auth": {"type": "none"}, "page_size": PAGE,
                    "retrieval": "everything", "backoff": 0.1, "backoff_max": 0.5}}
        for n, peer in enumerate(peers)}})
    try:
        cluster.start()
        tids = []
        for n, peer in enumerate(peers):
            auth = _authorize(cluster, peer, f"mrn-{n}")
            r = cluster.client.post("/transfers", headers=cluster.operator, json={
                "authorization": auth, "sources": [f"ehr{n}"], "recipient": "center"})
            assert r.status_code == 202, r.get_json()
            tids.append(r.get_json()["id"])
        final = cluster.wait_states(TERMINAL, 300, tids=tids)
        held: Counter = Counter()
        pages: Counter = Counter()
        for n, peer in enumerate(peers):
            held.update(_observations_held(cluster, peer.base_url))
            pages.update(f"{n}:{r['params'].get('_offset', '0')}" for r in peer.requests
                         if r["path"].endswith("$everything"))
        fired = sum(1 for peer in peers for f in peer.faults if f.times == 0)
        # recovery: from a faulty answer to the same page asked again
        recovery = max((b - a for peer in peers for offset in ("10", "20")
                        for a, b in [[r["time"] for r in peer.requests
                                      if r["path"].endswith("$everything")
                                      and r["params"].get("_offset") == offset][:2]]), default=0.0)
    finally:
        cluster.stop()
        for peer in peers:
            peer.stop()
    want = {f"Observation/o{n}-{i}" for n in range(TRANSFERS) for i in range(OBSERVATIONS)}
    lost_obs = want - set(held)
    dup_obs = {k for k, v in held.items() if v > 1}
    lost = len({k.split("-")[0] for k in lost_obs})
    duplicated = len({k.split("-")[0] for k in dup_obs})
    refetched = sorted(n for n in pages.values() if n > 1)
    # each patient: 5 pages (the last empty or short) asked once, the 2 faulty ones twice
    only_missing = all(n <= 2 for n in pages.values()) and len(refetched) == 2 * TRANSFERS
    completed = sum(1 for n in range(TRANSFERS)
                    if {f"Observation/o{n}-{i}" for i in range(OBSERVATIONS)} <= set(held)
                    and not any(k.startswith(f"Observation/o{n}-") for k in dup_obs))
    notes.append(f"{fired} faults fired; {sum(pages.values())} page requests for "
                 f"{len(pages)} pages, {len(refetched)} asked twice; "
                 f"{sum(held.values())} of {len(want)} observations held")
    if final != {"completed": TRANSFERS}:
        notes.append(f"states: {dict(final)}")
    passed = (final == {"completed": TRANSFERS} and not lost_obs and not dup_obs
              and only_missing and fired == 2 * TRANSFERS and completed == TRANSFERS)
    return ScenarioResult(7, "source faults", TRANSFERS, completed, lost, duplicated,
                          round(recovery, 2), passed,
                          "; ".join(notes))
