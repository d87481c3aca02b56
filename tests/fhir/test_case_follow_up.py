"""A case follows a real FHIR source by its Subscriptions (issue 14): the first transfer
delivers the patient's records; a new DiagnosticReport at the source is delivered by a
follow-up, alone; reports announced while the worker is killed are all delivered, each
once; revoking the authorization closes the case and deletes the Subscription at the
source. Real peers throughout: sekmet, a `worker --beat` process, a receiving gateway."""
from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter

import pytest
import requests

from tests.fhir.fhir_peers import SekmetServer, wait_until
from tests.fhir.follow_peers import FollowCase, report, source_keys
from tests.helpers import throwaway_database


@pytest.fixture(scope="module")
def hospital(tmp_path_factory, synthea_files):
    """Its own sekmet (its subscriptions stay out of other tests' server), one patient."""
    server = SekmetServer(tmp_path_factory.mktemp("sekmet-follow")).start()
    server.patients = [server.load(synthea_files[0])]
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def follow(request, tmp_path, hospital):
    """The sending gateway on SQLite or PostgreSQL (two passes over a case lock differently)."""
    with contextlib.ExitStack() as stack:
        database = stack.enter_context(throwaway_database()) if request.param == "postgresql" else None
        case = FollowCase(tmp_path, hospital, hospital.patients[0]["patient"], case_tick_s=1,
                          database_url=database)
        yield case
        case.stop()


def _digest(resource: dict) -> str:
    return hashlib.sha256(json.dumps(resource, sort_keys=True).encode()).hexdigest()


def _delivered(follow: FollowCase) -> list[tuple[dict, dict[str, str]]]:
    """(inbox row, {source "Type/id": sha256 of the delivered resource}) per bundle."""
    base = follow.sekmet.base_url
    out = []
    for row, bundle in follow.received():
        keys = source_keys(bundle, base)
        by_key = {}
        for e in bundle["entry"]:
            src = (e["resource"].get("meta") or {}).get("source") or ""
            if src.startswith(base + "/"):
                by_key[src[len(base) + 1:]] = _digest(e["resource"])
        assert len(by_key) == len(keys), "a resource twice in one bundle"
        out.append((row, by_key))
    return out


def _receipted(follow: FollowCase, case_id: str, count: int) -> list[dict]:
    """The case's transfers once `count` have a verified receipt (and none is running)."""
    def ready():
        view = follow.case(case_id)
        done = [t for t in view["transfers"] if t["receipt"]]
        running = [t for t in view["transfers"] if t["state"] not in ("completed", "cancelled", "failed")]
        return done if len(done) >= count and not running else None

    return wait_until(ready, 180, 0.3, f"{count} receipted transfers")


def _check_receipt(follow: FollowCase, transfer_id: str, inbox_row: dict) -> None:
    view = follow.stack.view(transfer_id)
    assert view["state"] == "completed" and view["receipt"]["status"] == "accepted"
    assert view["receipt"]["sha256"] == view["bundle"]["sha256"] == inbox_row["sha256"]
    assert all(b["signedReceipt"] for b in view["bundles"])


def test_new_reports_follow_the_first_delivery_once_each(follow, hospital):
    patient_id = hospital.patients[0]["id"]
    auth_id, case_id = follow.authorize()

    # 1. the case's first transfer delivers the patient's records
    [first] = _receipted(follow, case_id, 1)
    [(row, initial)] = _delivered(follow)
    _check_receipt(follow, first["id"], row)
    assert len(initial) > 50 and any(k.startswith("DiagnosticReport/") for k in initial)
    # ... and the source is subscribed for the patient (the handshake made it active)
    [sub] = wait_until(lambda: [s for s in follow.subscriptions(case_id) if s.status == "active"],
                       60, 0.2, "the subscription's handshake")
    assert sub.patient_ref == patient_id and sub.remote_id

    # 2. a new report at the source: a follow-up delivers exactly it
    new = hospital.post(report(patient_id))
    transfers = _receipted(follow, case_id, 2)
    delivered = _delivered(follow)
    assert len(delivered) == 2
    row, follow_up = delivered[1]
    assert list(follow_up) == [f"DiagnosticReport/{new['id']}"]
    assert not set(follow_up) & set(initial) and not set(follow_up.values()) & set(initial.values())
    assert follow_up[f"DiagnosticReport/{new['id']}"] not in set(initial.values())
    _check_receipt(follow, transfers[1]["id"], row)
    [bundle] = [b for r, b in follow.received() if r["id"] == row["id"]]
    [got] = [e["resource"] for e in bundle["entry"]
             if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert got["code"] == new["code"] and got["status"] == "final"
    # the pull's Provenance names only what this bundle carries
    full_urls = {e["fullUrl"] for e in bundle["entry"]}
    pulled = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance"
              and not (e["resource"].get("meta") or {}).get("source")]
    assert pulled and all(t["reference"] in full_urls for p in pulled for t in p["target"])

    # 3. three reports; the worker is killed (SIGKILL) once the first is announced
    before = len(follow.triggers(case_id))
    reports = [hospital.post(report(patient_id))]
    wait_until(lambda: len(follow.triggers(case_id)) > before, 30, 0.05, "the first notification")
    follow.stack.worker.kill()
    reports += [hospital.post(report(patient_id)) for _ in range(2)]
    wait_until(lambda: len(follow.triggers(case_id)) >= before + 3, 30, 0.1,
               "the notifications taken while the worker is down")
    follow.restart_worker()
    wanted = {f"DiagnosticReport/{r['id']}" for r in reports}

    def all_three():
        held = {k for _, keys in _delivered(follow) for k in keys}
        return wanted <= held

    wait_until(all_three, 180, 0.5, "the three reports at the center")
    _receipted(follow, case_id, 3)
    delivered = _delivered(follow)
    counts = Counter(k for _, keys in delivered for k in keys)
    assert {k: counts[k] for k in wanted} == dict.fromkeys(wanted, 1)  # none lost, none twice
    assert counts[f"DiagnosticReport/{new['id']}"] == 1
    assert set(counts.values()) == {1}  # nothing of the first delivery went again either
    with follow.svc.db.session() as s:
        from gateway.engine.subscriptions import pending_triggers

        assert pending_triggers(s, case_id) == []
    view = follow.case(case_id)
    for t in view["transfers"]:
        assert t["state"] == "completed", t
    receipted = [t for t in view["transfers"] if t["receipt"]]
    assert len(receipted) == len(delivered)
    by_sha = {r["sha256"]: r for r, _ in delivered}
    for t in receipted:
        _check_receipt(follow, t["id"], by_sha[follow.stack.view(t["id"])["bundle"]["sha256"]])

    # 4. revocation closes the case and deletes the Subscription at the source
    r = follow.stack.client.post(f"/authorizations/{auth_id}/revoke", json={"reason": "patient asked"},
                                 headers=follow.stack.operator)
    assert r.status_code == 200, r.get_json()
    view = follow.case(case_id)
    assert view["state"] == "closed" and view["closedReason"] == "authorization revoked"
    [sub] = follow.subscriptions(case_id)
    assert sub.status == "off" and sub.closed_at is not None
    gone = requests.get(f"{hospital.direct}/Subscription/{sub.remote_id}", timeout=10)
    assert gone.status_code in (404, 410) or gone.json().get("status") == "off"
