"""What a real server will not do on demand, from the fault-injecting peer."""
from __future__ import annotations

import time

import pytest

from connectors.base import (PatientIdentifier, RawRecord, RecordQuery, RejectedRecord, SourceRejected,
                             SourceUnavailable)
from connectors.fhir.http import OutsideBase, RetryLater
from connectors.fhir.connector import FhirRestConnector
from mappings import MappingContext, MappingFailed, map_record
from tests.fhir.fault_peer import FaultPeer, observation, patient

QUERY = RecordQuery("a", "t", identifiers=(PatientIdentifier("urn:mrn", "42"),))
FAST = {"backoff": 0.05, "backoff_max": 0.2, "max_retries": 4, "timeout": [2, 2]}


def seed(peer: FaultPeer, n: int = 25) -> None:
    peer.add(patient("p1", "42"))
    peer.add(*[observation(f"o{i}", "p1") for i in range(n)])


def pull(peer, tmp_path, **options):
    with FhirRestConnector("ehr", {"base_url": peer.base_url, "page_size": 10, **FAST, **options}, tmp_path) as conn:
        records = list(conn.fetch(QUERY))
    return records, conn


def keys(records):
    import orjson
    out = []
    for r in records:
        if isinstance(r, RawRecord) and r.kind == "fhir-json":
            with open(r.path, "rb") as fh:
                out += [orjson.loads(line)["resource"]["id"] for line in fh]
    return out


def data_requests(peer):
    return [r for r in peer.requests if r["path"] not in ("metadata", "Patient")]


def test_429_retry_after_is_honoured(fault_peer, tmp_path):
    seed(fault_peer)
    fault_peer.fault("_offset=10", "status", status=429, headers={"Retry-After": "1"})
    start = time.monotonic()
    records, conn = pull(fault_peer, tmp_path)
    assert sorted(keys(records)) == sorted(["p1"] + [f"o{i}" for i in range(25)])
    second = [r["time"] for r in fault_peer.requests if r["params"].get("_offset") == "10"]
    assert len(second) == 2 and second[1] - second[0] >= 0.95  # waited as asked
    assert time.monotonic() - start >= 1


def test_503_burst_backs_off_with_jitter(fault_peer, tmp_path):
    seed(fault_peer)
    fault_peer.fault("$everything", "status", status=503, times=3)
    records, _ = pull(fault_peer, tmp_path)
    assert len(keys(records)) == 26
    everything = [r["time"] for r in fault_peer.requests if r["path"].endswith("$everything")
                  and "_offset" not in r["params"]]
    assert len(everything) == 4
    gaps = [b - a for a, b in zip(everything, everything[1:])]
    assert all(g < 1.0 for g in gaps)  # backoff 0.05 doubling, capped at 0.2, jittered


def test_endless_503_gives_up_as_transient(fault_peer, tmp_path):
    seed(fault_peer)
    fault_peer.fault("$everything", "status", status=503, times=100)
    with pytest.raises(SourceUnavailable, match="gave up after 5 attempts") as err:
        pull(fault_peer, tmp_path)
    assert err.value.transient


def test_long_retry_after_hands_back_to_the_scheduler(fault_peer, tmp_path):
    seed(fault_peer)
    fault_peer.fault("$everything", "status", status=503, headers={"Retry-After": "3600"})
    with pytest.raises(RetryLater) as err:
        pull(fault_peer, tmp_path)
    assert err.value.transient and err.value.retry_after == 3600


@pytest.mark.parametrize("kind", ["truncate", "garbage", "drop"])
def test_broken_pages_are_fetched_again(fault_peer, tmp_path, kind):
    seed(fault_peer)
    fault_peer.fault("_offset=10", kind)
    records, _ = pull(fault_peer, tmp_path)
    assert sorted(keys(records)) == sorted(["p1"] + [f"o{i}" for i in range(25)])


def test_slow_answers_time_out_and_are_retried(fault_peer, tmp_path):
    seed(fault_peer)
    fault_peer.fault("_offset=20", "slow", delay=3.0)  # read timeout is 2 s
    records, _ = pull(fault_peer, tmp_path)
    assert len(keys(records)) == 26
    assert len([r for r in fault_peer.requests if r["params"].get("_offset") == "20"]) == 2


def test_next_link_to_another_host_is_refused(fault_peer, tmp_path):
    elsewhere = FaultPeer().start()
    try:
        seed(fault_peer)
        fault_peer.next_base = elsewhere.base_url
        got = []
        with FhirRestConnector("ehr", {"base_url": fault_peer.base_url, "page_size": 10, **FAST}, tmp_path) as conn:
            with pytest.raises(OutsideBase, match="next link of Patient/\\$everything outside the server base"):
                for rec in conn.fetch(QUERY):
                    got.append(rec)
        assert len(keys(got)) == 10  # the first page is kept
        assert elsewhere.requests == []  # and nothing went to the other host
        with FhirRestConnector("ehr", {"base_url": fault_peer.base_url, **FAST}, tmp_path) as conn:
            with pytest.raises(OutsideBase):  # a resumed pull stops the same way
                list(conn.fetch(RecordQuery(**{**QUERY.__dict__, "already_fetched": frozenset(r.origin for r in got)})))
    finally:
        elsewhere.stop()


def test_resources_seen_twice_while_paging_are_yielded_once(fault_peer, tmp_path):
    seed(fault_peer)
    inserted = []

    def shift(path, offset):  # a new resource arrives at the front after the first page
        if offset == 10 and not inserted:
            fault_peer.resources["Observation"].insert(0, observation("new", "p1"))
            inserted.append(1)

    fault_peer.on_page = shift
    records, conn = pull(fault_peer, tmp_path)
    ids = keys(records)
    assert len(ids) == len(set(ids))
    assert conn.stats["duplicates"] == 1
    # "new" landed before the page we were on: an incremental pull picks it up later
    assert set(ids) == {"p1"} | {f"o{i}" for i in range(25)}


def test_attachments_binary_as_fhir_json_and_foreign_urls(fault_peer, tmp_path):
    elsewhere = FaultPeer().start()
    try:
        fault_peer.add(patient("p1", "42"))
        fault_peer.binaries["b1"] = ("image/png", b"\x89PNG\r\n" + bytes(range(256)) * 50)
        fault_peer.binary_as_json = True
        fault_peer.add({"resourceType": "DiagnosticReport", "id": "dr1", "status": "final",
                        "code": {"text": "x-ray"}, "subject": {"reference": "Patient/p1"},
                        "presentedForm": [{"contentType": "image/png", "url": f"{fault_peer.base_url}/Binary/b1"},
                                          {"contentType": "image/png", "url": f"{elsewhere.base_url}/Binary/b1"},
                                          {"contentType": "image/png", "url": "Binary/missing"}]})
        records, conn = pull(fault_peer, tmp_path)
        rejected = {r.origin: r.reason for r in records if isinstance(r, RejectedRecord)}
        records = [r for r in records if isinstance(r, RawRecord)]
        (att,) = [r for r in records if r.kind == "fhir-attachment"]
        assert att.path.read_bytes() == fault_peer.binaries["b1"][1] and att.media_type == "image/png"
        assert set(rejected) == {f"refused attachment {elsewhere.base_url}/Binary/b1 of DiagnosticReport/dr1",
                                 "refused attachment Binary/missing of DiagnosticReport/dr1"}
        assert "404" in rejected["refused attachment Binary/missing of DiagnosticReport/dr1"]
        page = next(r for r in records if r.kind == "fhir-json")
        reasons = {r["url"]: r["reason"] for r in page.metadata["refused"]}
        assert "outside the server base" in reasons[f"{elsewhere.base_url}/Binary/b1"]
        assert "404" in reasons["Binary/missing"]
        assert elsewhere.requests == []
        binary_request = next(r for r in fault_peer.requests if r["path"] == "Binary/b1")
        assert binary_request["accept"].startswith("image/png")
    finally:
        elsewhere.stop()


@pytest.mark.parametrize("version", ["3.0.2", "5.0.0"])
def test_stu3_and_r5_servers_stop_with_a_clear_error(tmp_path, version):
    peer = FaultPeer(fhir_version=version).start()
    try:
        seed(peer)
        with pytest.raises(SourceRejected, match=f"FHIR {version}.*R4"):
            pull(peer, tmp_path)
        assert data_requests(peer) == []  # nothing pulled
    finally:
        peer.stop()


def test_per_type_search_when_everything_is_not_offered(tmp_path):
    peer = FaultPeer(everything=False).start()
    try:
        seed(peer, 12)
        records, _ = pull(peer, tmp_path)
        assert not any(r["path"].endswith("$everything") for r in peer.requests)
        obs = [r for r in peer.requests if r["path"] == "Observation"]
        assert obs and all(r["params"]["patient"] == "p1" for r in obs)
        assert sorted(keys(records)) == sorted(f"o{i}" for i in range(12))
    finally:
        peer.stop()


def test_bad_credentials_are_terminal(fault_peer, tmp_path):
    seed(fault_peer)
    fault_peer.fault("Patient?identifier", "status", status=401)
    with pytest.raises(SourceRejected, match="401") as err:
        pull(fault_peer, tmp_path, auth={"type": "bearer", "token": "t0ken"})
    assert not err.value.transient
    assert all(r["auth"] == "Bearer t0ken" for r in fault_peer.requests)


def test_mapping_refuses_records_of_another_version(fault_peer, tmp_path):
    seed(fault_peer, 1)
    records, _ = pull(fault_peer, tmp_path)
    rec = records[0]
    rec.metadata["fhir_version"] = "5.0.0"
    with pytest.raises(MappingFailed, match="5.0.0"):
        map_record(rec, MappingContext("urn:uuid:00000000-0000-4000-8000-000000000000"))


def test_refused_everything_falls_back_to_searches(fault_peer, tmp_path):
    seed(fault_peer, 12)
    fault_peer.fault("$everything", "status", status=403)
    records, _ = pull(fault_peer, tmp_path)
    assert sorted(keys(records)) == sorted(f"o{i}" for i in range(12))
    assert any(r["path"] == "Observation" for r in fault_peer.requests)


def test_a_refused_type_search_is_reported_and_the_others_go_on(tmp_path):
    peer = FaultPeer(everything=False).start()
    try:
        seed(peer, 12)
        peer.add({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}})
        peer.fault("Observation?", "status", status=400)
        records, _ = pull(peer, tmp_path)
        rejected = [r for r in records if isinstance(r, RejectedRecord)]
        assert [r.origin for r in rejected] == ["refused search Observation"]
        assert "HTTP 400" in rejected[0].reason
        assert keys(records) == ["c1"]
    finally:
        peer.stop()
