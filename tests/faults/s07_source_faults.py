"""Scenario 7, source faults, each source its own fault, all in one cluster at once:

- FHIR: servers that cut pages mid-body (they promise the whole page, send half and hang
  up) and answer 503 to another, while 5 transfers pull 40 observations each, 10 a page.
  Each cut page is fetched again, and only that page: the source's request log shows
  every other page asked once. Counted at the recipient: every observation, once.
  Each transfer's source is its own fault-injecting FHIR peer (tests/fhir/fault_peer.py),
  a real HTTP server in this process that the worker processes pull from; one patient a
  server (the peer's `$everything` answers with every resource it holds).
- PACS: a real Orthanc behind a fault-injecting DICOM proxy (tests/faults/dicom_proxy.py)
  that sends an A-ABORT mid C-GET, once 8 of the study's 24 instances went over one
  association. The proxy counts every instance the PACS hands over: each exactly once
  (the ones received before the abort are not asked for again); the recipient holds
  each instance once.
- Fax: the provider's fax (cover sheet + 2 pages) written into the drop folder under its
  final name, a chunk every 1.2 s, longer than the ingest's settle time (0.5 s): it is
  not taken half-written (the writer holds it open), then taken once complete: one
  outcome for the file, matched, nothing quarantined, the whole file's bytes taken."""
from __future__ import annotations

import io
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import requests
from sqlalchemy import select

from tests.dicom.dicom_peers import Modality, Orthanc
from tests.dicom.dicom_studies import make_study
from tests.fhir.fault_peer import FaultPeer, observation, patient
from tests.helpers import ISSUER, RECEIVER_ORG, SENDER_ORG

from .dicom_proxy import DicomFaultProxy
from .harness import TERMINAL, Cluster, _cli
from .result import ScenarioResult, scenario

TRANSFERS, OBSERVATIONS, PAGE = 5, 40, 10
INSTANCES, ABORT_AFTER = 24, 8
MRN = "urn:oid:2.16.840.1.113883.19.5"
FAX_CHUNKS, FAX_PAUSE_S, FAX_SETTLE_S = 6, 1.2, 0.5


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


def _observations_held(cluster: Cluster, base_urls: list[str]) -> Counter:
    """"<base url>/Observation/<id>" at the sources -> times the recipient holds it (its inbox)."""
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
            for base_url in base_urls:
                if source.startswith(base_url + "/Observation/"):
                    held[source[len(base_url) + 1:]] += 1
    return held


def _pacs_part(cluster: Cluster, pacs: Orthanc, proxy: DicomFaultProxy, study) -> str:
    endpoint = f"dicom://{pacs.aet}@127.0.0.1:{proxy.port}"
    auth = cluster.authorize(endpoints=[{"type": "dicom", "address": endpoint}],
                             patient={"name": {"family": "Doe", "given": ["Jane"]},
                                      "birthDate": "1970-01-01",
                                      "identifiers": [{"system": MRN, "value": study.patient_id}]})
    return cluster.transfer(auth, source="pacs")


def _pacs_source(pacs: Orthanc, proxy: DicomFaultProxy) -> dict:
    return {"kind": "dicom", "organization": SENDER_ORG, "data_class": "imaging",
            "endpoint": f"dicom://{pacs.aet}@127.0.0.1:{proxy.port}",
            "options": {"host": "127.0.0.1", "port": proxy.port, "ae_title": pacs.aet,
                        "calling_aet": "GATEWAY", "retrieve": "get"}}


def _fax_pdf(cover: bytes, workdir: Path) -> bytes:
    from pypdf import PdfReader, PdfWriter

    from gateway.cli.demo import make_pdf

    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(cover)))
    for n in range(2):
        page = workdir / f"records-{n}.pdf"
        make_pdf(page, f"Outside records page {n}", ["synthetic"],
                 {"name": {"family": "Nobody", "given": ["No"]}, "birthDate": "1900-01-01"})
        writer.append(str(page))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _write_slowly(path: Path, data: bytes) -> None:
    """As a fax server writing page by page: under the final name, held open, pausing
    longer than the ingest's settle time between chunks."""
    step = -(-len(data) // FAX_CHUNKS)
    with open(path, "wb") as out:
        for at in range(0, len(data), step):
            out.write(data[at:at + step])
            out.flush()
            time.sleep(FAX_PAUSE_S)


def _fax_item(cluster: Cluster, tid: str):
    from gateway.storage.models import Item

    with cluster.app.extensions["gateway"].db.session() as s:
        return s.scalars(select(Item).filter_by(transfer_id=tid, kind="fax")).all()


@scenario(7, "source faults: PACS abort mid C-GET, FHIR pages cut mid-body, fax still being written")
def run(workdir: Path) -> ScenarioResult:
    from gateway.exchange.ids import bundle_id

    notes: list[str] = []
    recovery = 0.0
    peers = [FaultPeer().start() for _ in range(TRANSFERS)]
    for n, peer in enumerate(peers):
        peer.add(patient(f"p{n}", f"mrn-{n}"))
        peer.add(*[observation(f"o{n}-{i}", f"p{n}") for i in range(OBSERVATIONS)])
        # the third page cut mid-body, the second answered 503 once
        peer.fault("_offset=20", "truncate")
        peer.fault("_offset=10", "status", status=503)
    study = make_study(workdir / "study", INSTANCES, 1, patient_id="PAT-S07", rows=64, cols=64)
    pacs = Orthanc(workdir / "orthanc", [Modality("GATEWAY", 1)], dicomweb=False).start()
    proxy = DicomFaultProxy(pacs.dicom_port, abort_after=ABORT_AFTER).start()
    sources = {f"ehr{n}": {
        "kind": "fhir-rest", "organization": SENDER_ORG, "endpoint": peer.base_url,
        "options": {"base_url": peer.base_url, "auth": {"type": "none"}, "page_size": PAGE,
                    "retrieval": "everything", "backoff": 0.1, "backoff_max": 0.5}}
        for n, peer in enumerate(peers)}
    sources["pacs"] = _pacs_source(pacs, proxy)
    cluster = Cluster(workdir / "cluster", workers=2, sender={"sources": sources})
    fax_drop = cluster.add_fax(file_settle_s=FAX_SETTLE_S)
    try:
        pacs.upload(study.files)
        cluster.start()
        tids = []
        for n, peer in enumerate(peers):
            auth = _authorize(cluster, peer, f"mrn-{n}")
            r = cluster.client.post("/transfers", headers=cluster.operator, json={
                "authorization": auth, "sources": [f"ehr{n}"], "recipient": "center"})
            assert r.status_code == 202, r.get_json()
            tids.append(r.get_json()["id"])
        pacs_tid = _pacs_part(cluster, pacs, proxy, study)
        fax_tid = cluster.transfer(cluster.authorize(
            endpoints=[{"type": "fax", "address": str(fax_drop)}]), source="fax")
        cover = cluster.client.get(f"/transfers/{fax_tid}/cover-sheet", headers=cluster.operator)
        assert cover.status_code == 200, cover.get_json()
        fax = _fax_pdf(cover.data, workdir)
        _write_slowly(fax_drop / "fax-0001.pdf", fax)
        written = datetime.now(timezone.utc)
        final = cluster.wait_states(TERMINAL, 300, tids=[*tids, pacs_tid, fax_tid])
        held = _observations_held(cluster, [peer.base_url for peer in peers])
        pages: Counter = Counter()
        for n, peer in enumerate(peers):
            pages.update(f"{n}:{r['params'].get('_offset', '0')}" for r in peer.requests
                         if r["path"].endswith("$everything"))
        fired = sum(1 for peer in peers for f in peer.faults if f.times == 0)
        # recovery: from a faulty answer to the same page asked again
        recovery = max((b - a for peer in peers for offset in ("10", "20")
                        for a, b in [[r["time"] for r in peer.requests
                                      if r["path"].endswith("$everything")
                                      and r["params"].get("_offset") == offset][:2]]), default=0.0)
        recipient = cluster.recipient()
        states = {tid: cluster.view(tid)["state"] for tid in [pacs_tid, fax_tid]}
        fax_outcomes = Counter(e.type for e in cluster.events("fax.matched")
                               + cluster.events("fax.review") + cluster.events("fax.quarantine"))
        fax_items = _fax_item(cluster, fax_tid)
        quarantined = cluster.quarantined()
        after_abort = [t for t in proxy.sent_at if proxy.fault_at and t > proxy.fault_at]
        if after_abort:  # from the PACS's abort to its next instance (the retry)
            recovery = max(recovery, after_abort[0] - proxy.fault_at)
        matched_at = [e.at.replace(tzinfo=e.at.tzinfo or timezone.utc)
                      for e in cluster.events("fax.matched")]
    finally:
        cluster.stop()
        proxy.stop()
        pacs.stop()
        for peer in peers:
            peer.stop()
    # FHIR
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
    fhir_ok = (not lost_obs and not dup_obs and only_missing and fired == 2 * TRANSFERS
               and completed == TRANSFERS)
    notes.append(f"FHIR: {fired} faults fired; {sum(pages.values())} page requests for "
                 f"{len(pages)} pages, {len(refetched)} asked twice; "
                 f"{sum(held.values())} of {len(want)} observations held")
    # PACS
    instances = {uid: recipient.instances[uid] for uid in study.sop_uids}
    sent = proxy.counts
    pacs_lost = any(n == 0 for n in instances.values())
    pacs_dup = any(n > 1 for n in instances.values())
    pacs_ok = (states[pacs_tid] == "completed" and not pacs_lost and not pacs_dup
               and recipient.instances_unbound == 0 and proxy.aborted == 1
               and sent == Counter({uid: 1 for uid in study.sop_uids}))
    lost += pacs_lost
    duplicated += pacs_dup
    completed += states[pacs_tid] == "completed" and not pacs_lost and not pacs_dup
    notes.append(f"PACS: aborted {proxy.aborted} association after {ABORT_AFTER} instances; "
                 f"the PACS sent {sum(sent.values())} instances for {INSTANCES} "
                 f"({sum(1 for n in sent.values() if n > 1)} twice) over {proxy.associations} "
                 f"associations; the recipient holds {sum(1 for n in instances.values() if n)} "
                 f"of {INSTANCES}, {sum(1 for n in instances.values() if n > 1)} twice")
    # fax
    docs = recipient.documents.get(bundle_id(fax_tid), Counter())
    whole = [i for i in fax_items if (i.record_meta or {}).get("original_size") == len(fax)
             and (i.record_meta or {}).get("pages") == 2]
    fax_held = [docs[i.sha256] for i in fax_items]
    after_write = [round((at - written).total_seconds(), 1) for at in matched_at]
    fax_ok = (states[fax_tid] == "completed" and fax_outcomes == Counter({"fax.matched": 1})
              and all(gap >= 0 for gap in after_write)
              and len(fax_items) == 1 and len(whole) == 1 and fax_held == [1] and not quarantined)
    lost += states[fax_tid] != "completed" or not fax_held or 0 in fax_held
    duplicated += any(n > 1 for n in fax_held)
    completed += fax_ok
    notes.append(f"fax: written in {FAX_CHUNKS} chunks {FAX_PAUSE_S} s apart (settle "
                 f"{FAX_SETTLE_S} s); matched {after_write} s after its last byte; outcomes "
                 f"{dict(fax_outcomes)}; quarantined {len(quarantined)}; "
                 f"taken whole {len(whole)} of {len(fax_items)}; held {fax_held}")
    all_states = dict(final)
    if all_states != {"completed": TRANSFERS + 2}:
        notes.append(f"states: {all_states}")
    passed = all_states == {"completed": TRANSFERS + 2} and fhir_ok and pacs_ok and fax_ok
    return ScenarioResult(7, "source faults", TRANSFERS + 2, completed, lost, duplicated,
                          round(recovery, 2), passed, "; ".join(notes))
