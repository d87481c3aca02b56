"""Delivery with real processes: the sender's API and worker, a second gateway in receive
mode behind a fault-injecting proxy, and sekmet-fhir as a plain FHIR recipient.

Every bundle ends delivered exactly once with a verified receipt, whatever the network
or a killed process did; tampered receipts and untrusted keys are refused."""
from __future__ import annotations

import json

import requests

from gateway.trust.keys import SigningKeys



from tests.delivery.delivery_fixtures import PLAIN_ORG
from tests.delivery.delivery_support import (TERMINAL, claims_to, manifest_of,
                                             record_binaries, start_from_two_sources)
from tests.helpers import wait_until, write_pdfs


def start(stack, auth_id: str, recipient: str = "center") -> str:
    r = stack.client.post("/transfers", json={"authorization": auth_id, "sources": ["records"],
                                              "recipient": recipient}, headers=stack.operator)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def wait_end(stack, tid: str, timeout: float = 150) -> dict:
    return stack.wait_state(tid, TERMINAL, timeout)


def received(stack) -> list[dict]:
    return [stack.received_bundle(r["id"]) for r in sorted(stack.inbox(), key=lambda r: r["part"])]


def test_network_faults_still_deliver_exactly_once(dstack, claims_for, sign, drop_dir):
    dstack.start_receiver()
    dstack.proxy.faults.extend(["drop", "503", "cut_request", "cut_response", "slow:0.5"])
    tid = start(dstack, dstack.authorize(claims_for(), sign))
    sent = write_pdfs(drop_dir / tid, count=2)
    view = wait_end(dstack, tid)
    assert view["state"] == "completed", view["reason"]
    posts = [fault for _, fault, _ in dstack.proxy.posts()]
    assert posts[:5] == ["drop", "503", "cut_request", "cut_response", "slow:0.5"]
    # the answer cut short was a stored bundle: the retry got the original answer back
    [part] = view["bundles"]
    assert part["state"] == "receipted" and part["signedReceipt"]
    [inbox] = dstack.inbox()
    assert inbox["sha256"] == part["sha256"] == view["receipt"]["sha256"]
    bundles = received(dstack)
    assert record_binaries(bundles) == sorted(sent)
    entry_urls = {e["fullUrl"] for e in bundles[0]["entry"]}
    assert set(view["receipt"]["entryHashes"]) == entry_urls
    assert len(dstack.events("transfer.delivery.sent")) == 1
    assert len(dstack.events("transfer.receipt.verified")) == 1


def test_split_bundles_and_a_killed_worker_deliver_every_part_once(dstack, claims_for, sign,
                                                                   drop_dir, sender_config):
    dstack.worker.stop()
    sender_config["bundle_max_bytes"] = 2500  # about one PDF a bundle
    dstack.worker = dstack.start_worker()
    dstack.start_receiver()
    dstack.proxy.faults.extend(["pass", "slow:4"])
    tid = start(dstack, dstack.authorize(claims_for(), sign))
    sent = write_pdfs(drop_dir / tid, count=3)
    wait_until(lambda: not dstack.proxy.faults and len(dstack.proxy.posts()) >= 1, 60, 0.05,
               "the second bundle to be on its way")
    dstack.worker.kill()  # mid-delivery of part 2 (held 4 s in the proxy)
    dstack.worker = dstack.start_worker()
    view = wait_end(dstack, tid, 120)
    assert view["state"] == "completed", view["reason"]
    parts = view["bundles"]
    assert len(parts) >= 3 and all(p["state"] == "receipted" for p in parts)
    inbox = dstack.inbox()
    assert sorted(r["part"] for r in inbox) == list(range(1, len(parts) + 1))  # each once
    assert len({r["submissionGroup"] for r in inbox}) == 1
    assert {r["sha256"] for r in inbox} == {p["sha256"] for p in parts}
    bundles = received(dstack)
    assert record_binaries(bundles) == sorted(sent)
    # chronological inside each part, the summary and manifest only in the first
    assert sum(1 for b in bundles for e in b["entry"]
               if e["resource"]["resourceType"] == "Composition") == 1
    manifest_doc = [e for e in bundles[0]["entry"] if e["resource"]["resourceType"] == "DocumentReference"
                    and e["resource"]["type"]["coding"][0]["code"] == "completeness-manifest"]
    assert manifest_doc


def test_receiver_killed_mid_request_then_taken_over(dstack, claims_for, sign, drop_dir):
    dstack.start_receiver()
    dstack.proxy.faults.append("stall")
    tid = start(dstack, dstack.authorize(claims_for(), sign))
    sent = write_pdfs(drop_dir / tid, count=1)
    wait_until(dstack.proxy.stalled.is_set, 60, 0.05, "a request stalled mid-body")
    dstack.receiver.kill()  # SIGKILL while it holds the Idempotency-Key claim
    dstack.proxy.release.set()
    dstack.start_receiver()
    view = wait_end(dstack, tid)
    assert view["state"] == "completed", view["reason"]
    [inbox] = dstack.inbox()
    assert inbox["sha256"] == view["bundle"]["sha256"]
    assert record_binaries(received(dstack)) == sorted(sent)


def test_tampered_receipt_is_an_error(dstack, claims_for, sign, drop_dir):
    dstack.start_receiver()
    dstack.proxy.faults.append("tamper")
    tid = start(dstack, dstack.authorize(claims_for(), sign))
    write_pdfs(drop_dir / tid, count=1)
    view = wait_end(dstack, tid)
    assert view["state"] == "failed"
    assert "signature does not verify" in view["reason"]
    assert view["bundles"][0]["state"] == "assembled"  # sent, but no proof: not delivered
    assert view["receipt"] is None
    assert dstack.events("transfer.receipt.refused")
    # a retry asks again; the receiver answers with its original receipt, which verifies
    r = dstack.client.post(f"/transfers/{tid}/retry", headers=dstack.operator)
    assert r.status_code == 200, r.get_json()
    view = wait_end(dstack, tid)
    assert view["state"] == "completed", view["reason"]
    assert view["bundles"][0]["signedReceipt"]
    assert len(dstack.inbox()) == 1


def test_untrusted_sender_key_is_refused(dstack, claims_for, sign, drop_dir, tmp_path):
    stranger = SigningKeys(tmp_path / "stranger")
    stranger.ensure()
    (tmp_path / "sender-jwks.json").write_text(json.dumps(stranger.jwks()))
    dstack.start_receiver()
    tid = start(dstack, dstack.authorize(claims_for(), sign))
    write_pdfs(drop_dir / tid, count=1)
    view = wait_end(dstack, tid)
    assert view["state"] == "failed"
    assert "HTTP 403" in view["reason"] and "does not verify" in view["reason"]
    assert "signed rejection receipt verified" in view["reason"]
    assert dstack.inbox() == []


def test_plain_fhir_recipient_and_dead_letter_replay(dstack, sign, drop_dir, sender_config,
                                                     plain_peer, plain_proxy, sekmet, receiver_url):
    from tests.test_transfer_flow import cli

    dstack.worker.stop()
    sender_config["retry"]["max_attempts"] = 3
    dstack.worker = dstack.start_worker()
    # the gateway recipient is down: its transfer dead-letters ...
    stuck = start(dstack, dstack.authorize(claims_to("org-test-center", receiver_url, drop_dir), sign))
    write_pdfs(drop_dir / stuck, count=1)
    # ... while a transfer to the plain FHIR server goes through
    # (its first answer is cut short: the repeat overwrites, PUT with stable ids)
    plain_proxy.faults.append("cut_response")
    plain = start(dstack, dstack.authorize(claims_to(PLAIN_ORG, plain_peer, drop_dir), sign), "plain")
    sent = write_pdfs(drop_dir / plain, count=2)
    view = wait_end(dstack, plain)
    assert view["state"] == "completed", view["reason"]
    ack = view["receipt"]
    assert ack["kind"] == "unsigned-acknowledgment" and ack["signed"] is False
    assert view["bundles"][0]["state"] == "acknowledged"
    assert ack["entries"] == len(ack["locations"])
    locations = [loc.removeprefix(sekmet + "/").split("/_history")[0] for loc in ack["locations"]]
    docs = [loc for loc in locations if loc.startswith("DocumentReference/")]
    assert len(docs) == 4  # two PDFs, the summary PDF, the manifest
    stored = requests.get(f"{sekmet}/{docs[0]}", timeout=10).json()
    assert stored["resourceType"] == "DocumentReference"
    import base64
    import hashlib
    binaries = [requests.get(f"{sekmet}/{loc}", headers={"Accept": "application/fhir+json"},
                             timeout=10).json()
                for loc in locations if loc.startswith("Binary/")]
    got = {hashlib.sha256(base64.b64decode(b["data"])).hexdigest() for b in binaries}
    assert set(sent) <= got
    assert [f for _, f, _ in plain_proxy.posts()][:2] == ["cut_response", "pass"]
    for sha in sent:  # stored once, though delivered twice
        found = requests.get(f"{sekmet}/DocumentReference",
                             params={"identifier": f"urn:records-gateway:sha256|{sha}"}, timeout=10).json()
        assert len(found.get("entry", [])) == 1
    assert dstack.events("transfer.receipt.acknowledged")

    dead = wait_end(dstack, stuck)
    assert dead["state"] == "dead_letter"
    assert "gave up after 3 attempts" in dead["reason"] and "HTTP 502" in dead["reason"]
    dstack.start_receiver()
    out = cli(dstack.worker.config_file, "transfer", "replay", stuck)
    assert "resumes at delivering" in out
    view = wait_end(dstack, stuck)
    assert view["state"] == "completed", view["reason"]
    assert view["bundles"][0]["signedReceipt"]
    assert len(dstack.inbox()) == 1


def test_same_record_from_two_sources_goes_once_with_provenance_of_both(
        two_sources, dstack, sign, drop_dir, receiver_url):
    import shutil

    copies = two_sources
    tid = start_from_two_sources(dstack, sign, drop_dir, copies, receiver_url)
    staging = drop_dir.parent / "copies-staging"
    sent = write_pdfs(staging, count=2)
    shared = sorted(staging.iterdir())[0]
    (staging.parent / "one").mkdir()
    shutil.copy(shared, staging.parent / "one" / shared.name)
    (staging.parent / "one").rename(copies / tid)  # the second place holds one of them
    staging.rename(drop_dir / tid)
    view = wait_end(dstack, tid)
    assert view["state"] == "completed", view["reason"]
    [bundle] = received(dstack)
    assert record_binaries([bundle]) == sorted(sent)  # two records, not three
    resources = [e["resource"] for e in bundle["entry"]]
    provenance = [p for p in resources if p["resourceType"] == "Provenance"]
    by_source = {p["entity"][0]["what"]["identifier"]["system"].rsplit(":", 1)[-1]:
                 {t["reference"] for t in p["target"]} for p in provenance}
    assert len(provenance) == 2
    assert set(by_source) == {"records", "copies"}
    assert len(by_source["records"]) == 2 and len(by_source["copies"]) == 1
    assert by_source["copies"] <= by_source["records"]  # the shared one, recorded twice
    docs = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference"
            and e["resource"]["type"]["coding"][0]["code"] == "11506-3"]
    assert len(docs) == 2
    dates = [d["resource"]["date"] for d in docs]
    assert dates == sorted(dates)  # chronological
    manifest = manifest_of(bundle)
    assert manifest["sources"]["records"]["items"] == 2
    assert manifest["sources"]["copies"]["items"] == 1
    assert {d["sha256"] for d in manifest["sources"]["copies"]["delivered"]} <= set(sent)
    composition = next(r for r in resources if r["resourceType"] == "Composition")
    assert [s["title"] for s in composition["section"]] == ["Clinical notes"]
    assert len(composition["section"][0]["entry"]) == 2
