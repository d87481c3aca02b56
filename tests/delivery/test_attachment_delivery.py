"""Documents over `attachment_inline_max_bytes` go before their bundle as Binary/{id},
with real processes: to a receiving gateway behind the fault proxy, and to sekmet-fhir.
The bytes at the recipient equal the source's, the bundle stays small, an upload the
recipient holds is not sent again after a crash, one changed in transit is sent again."""
from __future__ import annotations

import base64
import hashlib

import pytest
import requests

from gateway.cli.demo import make_pdf

from tests.delivery.delivery_fixtures import PLAIN_ORG
from tests.delivery.delivery_support import TERMINAL, claims_to, write_large_pdf
from tests.helpers import wait_until

INLINE_MAX = 512 * 1024
SMALL_BUNDLE = 100_000  # the bundle without the scan: summary PDF, manifest, one small PDF


@pytest.fixture
def small_inline(sender_config):
    sender_config["attachment_inline_max_bytes"] = INLINE_MAX


def records(drop_dir, tid: str) -> tuple[str, str]:
    """One small PDF (inline) and a ~2 MB scan (uploaded) in the transfer's folder."""
    staging = drop_dir.parent / f"staging-{tid}"
    staging.mkdir()
    # titled by the transfer: sekmet is shared by the session, its documents must differ
    make_pdf(staging / "note.pdf", f"Synthetic note {tid}", ["synthetic"],
             {"name": {"family": "Testperson", "given": ["Avery"]}, "birthDate": "1970-01-01"})
    small = hashlib.sha256((staging / "note.pdf").read_bytes()).hexdigest()
    big = write_large_pdf(staging / "scan.pdf", 2)
    staging.rename(drop_dir / tid)
    return small, big


def start(stack, auth_id: str, recipient: str = "center") -> str:
    r = stack.client.post("/transfers", json={"authorization": auth_id, "sources": ["records"],
                                              "recipient": recipient}, headers=stack.operator)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def inbox_documents(stack) -> dict[str, bytes]:
    """sha256 -> bytes of every record document the receiver serves from its inbox."""
    base, headers = stack.receiver_config["base_url"], stack.inbox_headers
    out = {}
    for item in stack.inbox():
        docs = requests.get(f"{base}/inbox/{item['id']}/documents", headers=headers, timeout=10).json()
        for doc in docs["documents"]:
            if doc["type"] == "Progress note":
                data = requests.get(base + doc["content"], headers=headers, timeout=30).content
                assert len(data) == doc["size"]
                out[hashlib.sha256(data).hexdigest()] = data
    return out


def test_large_document_goes_before_its_bundle_to_a_gateway(small_inline, dstack, claims_for, sign,
                                                            drop_dir):
    dstack.start_receiver()
    dstack.proxy.faults.append("503")  # the bundle's first POST fails after the upload landed
    tid = start(dstack, dstack.authorize(claims_for(), sign))
    small, big = records(drop_dir, tid)
    view = dstack.wait_state(tid, TERMINAL, 150)
    assert view["state"] == "completed", view["reason"]
    [put] = dstack.proxy.posts(method="PUT")  # once: the retried POST did not upload again
    assert [f for _, f, _ in dstack.proxy.posts()] == ["503", "pass"]
    assert len(dstack.proxy.posts(method="HEAD")) == 1  # the retry knew: not even asked again
    [part] = view["bundles"]
    ref = put[0].split("/fhir/", 1)[1]
    size = (drop_dir / tid / "scan.pdf").stat().st_size
    assert part["attachments"] == {ref: {"sha256": big, "size": size}}
    assert view["receipt"]["attachments"] == part["attachments"]  # the receiver says it holds them
    assert view["uploads"] == {"uploaded": 1}
    assert set(inbox_documents(dstack)) == {small, big}
    [item] = dstack.inbox()
    assert item["size"] == part["size"] < SMALL_BUNDLE < size
    bundle = dstack.received_bundle(item["id"])
    [doc] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference"
             and e["resource"]["content"][0]["attachment"].get("url") == ref]
    assert doc["identifier"][0]["value"] == big
    assert len(dstack.events("transfer.attachment.uploaded")) == 1


def test_resumed_delivery_skips_the_upload_the_recipient_holds(small_inline, dstack, claims_for,
                                                               sign, drop_dir):
    dstack.start_receiver()
    dstack.proxy.put_faults.append("late:6")  # the upload lands; its answer is held back
    tid = start(dstack, dstack.authorize(claims_for(), sign))
    _, big = records(drop_dir, tid)
    wait_until(lambda: dstack.proxy.posts(method="PUT"), 90, 0.05, "the upload to land")
    dstack.worker.kill()  # before it hears the answer: its progress says "not sent"
    dstack.worker = dstack.start_worker()
    view = dstack.wait_state(tid, TERMINAL, 150)
    assert view["state"] == "completed", view["reason"]
    assert len(dstack.proxy.posts(method="PUT")) == 1  # asked with HEAD instead of sending again
    assert dstack.proxy.posts(method="HEAD")
    [held] = dstack.events("transfer.attachment.held")
    assert held.detail["sha256"] == big
    assert not dstack.events("transfer.attachment.uploaded")
    assert big in inbox_documents(dstack)


def test_upload_changed_in_transit_is_sent_again(small_inline, dstack, claims_for, sign, drop_dir):
    dstack.start_receiver()
    dstack.proxy.put_faults.append("flip_byte")
    tid = start(dstack, dstack.authorize(claims_for(), sign))
    _, big = records(drop_dir, tid)
    view = dstack.wait_state(tid, TERMINAL, 150)
    assert view["state"] == "completed", view["reason"]
    assert [f for _, f, _ in dstack.proxy.posts(method="PUT")] == ["flip_byte", "pass"]
    retries = [e.detail["error"] for e in dstack.events("transfer.step.retry")]
    assert any("sha256 differs" in e for e in retries)
    assert big in inbox_documents(dstack)


def test_large_document_to_a_plain_fhir_server(small_inline, dstack, sign, drop_dir, plain_peer,
                                              plain_proxy, sekmet):
    tid = start(dstack, dstack.authorize(claims_to(PLAIN_ORG, plain_peer, drop_dir), sign), "plain")
    small, big = records(drop_dir, tid)
    view = dstack.wait_state(tid, TERMINAL, 150)
    assert view["state"] == "completed", view["reason"]
    [put] = plain_proxy.posts(method="PUT")
    ref = put[0].split("/fhir/", 1)[1]
    [part] = view["bundles"]
    assert part["state"] == "acknowledged" and part["size"] < SMALL_BUNDLE
    assert view["receipt"]["attachments"] == {ref: {"sha256": big, "size": part["attachments"][ref]["size"]}}
    stored = requests.get(f"{sekmet}/{ref}", headers={"Accept": "application/fhir+json"}, timeout=30).json()
    assert stored["contentType"] == "application/pdf"
    assert hashlib.sha256(base64.b64decode(stored["data"])).hexdigest() == big
    found = requests.get(f"{sekmet}/DocumentReference",
                         params={"identifier": f"urn:records-gateway:sha256|{big}"}, timeout=10).json()
    [doc] = [e["resource"] for e in found["entry"]]
    assert doc["content"][0]["attachment"]["url"].endswith(ref)


def test_upload_over_the_receivers_cap_is_refused_for_good(small_inline, dstack, claims_for, sign,
                                                           drop_dir):
    dstack.receiver_config["max_binary_bytes"] = 1_000_000
    dstack.start_receiver()
    tid = start(dstack, dstack.authorize(claims_for(), sign))
    records(drop_dir, tid)
    view = dstack.wait_state(tid, TERMINAL, 150)
    assert view["state"] == "failed"
    assert "HTTP 413" in view["reason"] and "1000000 byte limit" in view["reason"]
    assert len(dstack.proxy.posts(method="PUT")) == 1 and dstack.proxy.posts() == []  # no bundle sent
    assert view["uploads"] == {"pending": 1} and dstack.inbox() == []


@pytest.fixture
def ehr_source(sender_config, sekmet, inline_max):
    """sekmet-fhir as a FHIR source too (source "ehr"), and the inline limit of the test."""
    from tests.helpers import SENDER_ORG

    sender_config["attachment_inline_max_bytes"] = inline_max
    sender_config["sources"]["ehr"] = {"kind": "fhir-rest", "organization": SENDER_ORG, "endpoint": sekmet,
                                       "options": {"base_url": sekmet, "auth": {"type": "none"},
                                                   "retrieval": "search"}}


@pytest.mark.parametrize("inline_max", [INLINE_MAX, 4 * 1024 * 1024])
def test_attachment_from_a_fhir_source_by_upload_or_inline(inline_max, sender_config, ehr_source, dstack,
                                                          sign, sekmet, receiver_url):
    """A FHIR source's DocumentReference -> Binary: over the limit the Binary goes before
    the bundle and the DocumentReference (the source's own) points at the upload; under
    it, the Binary travels inline. Either way the center is served the same bytes."""
    import os
    import uuid

    from gateway.trust.authorizations import example_claims
    from tests.helpers import ISSUER, RECEIVER_ORG, SENDER_ORG

    mrn = uuid.uuid4().hex[:10]
    patient = requests.post(f"{sekmet}/Patient", json={
        "resourceType": "Patient", "identifier": [{"system": "urn:test:mrn", "value": mrn}],
        "name": [{"family": "Testperson", "given": ["Avery"]}], "birthDate": "1970-01-01"},
        headers={"Content-Type": "application/fhir+json"}, timeout=10).json()
    scan = b"%PDF-1.4\n" + os.urandom(900_000)
    binary = requests.post(f"{sekmet}/Binary", json={
        "resourceType": "Binary", "contentType": "application/pdf", "data": base64.b64encode(scan).decode()},
        headers={"Content-Type": "application/fhir+json"}, timeout=30).json()
    requests.post(f"{sekmet}/DocumentReference", json={
        "resourceType": "DocumentReference", "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11526-1"}]},
        "subject": {"reference": f"Patient/{patient['id']}"}, "date": "2024-04-05T00:00:00Z",
        "content": [{"attachment": {"contentType": "application/pdf", "url": f"Binary/{binary['id']}"}}]},
        headers={"Content-Type": "application/fhir+json"}, timeout=10).raise_for_status()
    dstack.start_receiver()
    claims = example_claims(
        ISSUER, f"auth-{uuid.uuid4().hex[:12]}",
        patient={"name": {"family": "Testperson", "given": ["Avery"]}, "birthDate": "1970-01-01",
                 "identifiers": [{"system": "urn:test:mrn", "value": mrn}]},
        disclosers=[{"id": SENDER_ORG, "name": "Test Hospital", "endpoints": [{"type": "fhir", "address": sekmet}]}],
        recipient={"id": RECEIVER_ORG, "name": "Test Center", "endpoint": {"type": "gateway", "address": receiver_url}})
    r = dstack.client.post("/transfers", json={"authorization": dstack.authorize(claims, sign),
                                               "sources": ["ehr"], "recipient": "center"},
                           headers=dstack.operator)
    assert r.status_code == 202, r.get_json()
    view = dstack.wait_state(r.get_json()["id"], TERMINAL, 150)
    assert view["state"] == "completed", view["reason"]
    [item] = dstack.inbox()
    bundle = dstack.received_bundle(item["id"])
    inline = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Binary"
              and e["resource"].get("contentType") == "application/pdf"
              and len(e["resource"].get("data", "")) > len(scan)]
    if inline_max < len(scan):
        [put] = dstack.proxy.posts(method="PUT")
        ref = put[0].split("/fhir/", 1)[1]
        assert view["receipt"]["attachments"] == {ref: {"sha256": hashlib.sha256(scan).hexdigest(),
                                                        "size": len(scan)}}
        assert not inline and item["size"] < SMALL_BUNDLE
    else:
        assert not dstack.proxy.posts(method="PUT") and view["receipt"]["attachments"] == {}
        [binary_entry] = inline
        ref = binary_entry["fullUrl"]
    [doc] = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference"
             and e["resource"]["content"][0]["attachment"].get("url") == ref]
    served = requests.get(f"{dstack.receiver_config['base_url']}/inbox/{item['id']}/documents/"
                          f"{doc['fullUrl'].rsplit(':', 1)[-1]}", headers=dstack.inbox_headers, timeout=30)
    assert served.content == scan
