"""Scenario 9: the receiving gateway is killed (SIGKILL) in the middle of receiving a
document upload (`PUT Binary/{id}`), a bundle, and DICOM instances by STOW-RS (a study
pulled from a real Orthanc), one transfer each: the fault proxy passes on half the
request and holds it while the receiver dies. The receiver comes back, the sender's
retry completes each transfer, and the center holds each document and each instance
once; nothing half-received is left unbound."""
from __future__ import annotations

import time
from pathlib import Path

from tests.dicom.dicom_peers import Modality, Orthanc, free_port
from tests.dicom.dicom_studies import make_study

from .harness import TERMINAL, Cluster, wait_until

MRN = "urn:oid:2.16.840.1.113883.19.5"
INSTANCES = 6
from .result import ScenarioResult, scenario


def _killed_mid_request(c: Cluster, queue, documents: int = 0, auth: str | None = None,
                        source: str = "records") -> tuple[str, float]:
    """Start a transfer whose next request of `queue` stalls halfway; kill the receiver
    then, let the sender's connection drop, restart the receiver. Returns the transfer
    and how long from the receiver's restart to the transfer's end."""
    c.proxy.stalled.clear()
    c.proxy.release.clear()
    queue.append("stall")
    tid = c.transfer(auth or c.authorize(), documents=documents, source=source)
    wait_until(c.proxy.stalled.is_set, 120, 0.05, "the request to reach the receiver halfway")
    c.kill(c.receiver)
    c.proxy.release.set()  # the sender's connection drops: a transient failure, retried
    c.restart(c.receiver)
    at = time.monotonic()
    c.wait_states(TERMINAL, 180, tids=[tid])
    return tid, time.monotonic() - at


@scenario(9, "receiving gateway killed mid-receive (upload, bundle, STOW-RS)")
def run(workdir: Path) -> ScenarioResult:
    scp_port = free_port()
    study = make_study(workdir / "study", INSTANCES, 1, patient_id=f"PAT-F{scp_port}",
                       rows=64, cols=64)
    with Orthanc(workdir / "orthanc", [Modality("GATEWAY", scp_port)]) as pacs:
        pacs.upload(study.files)
        # every document goes as an upload before its bundle
        c = Cluster(workdir / "cluster", workers=1, proxy=True,
                    sender={"attachment_inline_max_bytes": 512})
        endpoint = c.add_pacs(pacs, scp_port)
        with c:
            upload, upload_s = _killed_mid_request(c, c.proxy.put_faults, documents=2)
            bundle, bundle_s = _killed_mid_request(c, c.proxy.faults, documents=2)
            auth = c.authorize(endpoints=[{"type": "dicom", "address": endpoint}],
                               patient={"name": {"family": "Doe", "given": ["Jane"]},
                                        "birthDate": "1970-01-01",
                                        "identifiers": [{"system": MRN, "value": study.patient_id}]})
            # the first POST of a study's transfer is STOW-RS: instances go before the bundle
            stow, stow_s = _killed_mid_request(c, c.proxy.faults, auth=auth, source="pacs")
            stalled = [e[0].split("?")[0] for e in c.proxy.log if e[1] == "stall"]
            states = {tid: c.view(tid)["state"] for tid in (upload, bundle, stow)}
            held = c.recipient()
            tally = held.tally(c.expected)
            # what the kills left half-written, then the hourly sweep's pass over it
            blobs = c.receiver_blobs()
            partial = len(list(blobs.backend.root.glob("*/*.part")))
            blobs.remove_abandoned(0)
            partial_after = len(list(blobs.backend.root.glob("*/*.part")))
    instances_ok = (sorted(held.instances) == sorted(study.sop_uids)
                    and set(held.instances.values()) == {1} and held.instances_unbound == 0)
    notes = (f"stalled {stalled}; states {sorted(states.values())}; uploads bound "
             f"{sum(held.uploads_bound.values())}, unbound {held.uploads_unbound}; instances "
             f"{sum(held.instances.values())} of {INSTANCES}, unbound {held.instances_unbound}; "
             f"bundles left processing {held.processing}; half-written blobs {partial}, "
             f"after the sweep {partial_after}")
    if tally.problems:
        notes += "; " + "; ".join(tally.problems[:5])
    # the study's transfer counts as complete only with every instance held once
    missing = not set(study.sop_uids) <= set(held.instances)
    twice = any(n > 1 for n in held.instances.values())
    lost = tally.lost + (missing and stow not in _failed(tally))
    duplicated = tally.duplicated + (twice and stow not in _failed(tally))
    completed = tally.completed - (not instances_ok and stow not in _failed(tally))
    return ScenarioResult(9, "receiver killed mid-receive", 3, completed, lost,
                          duplicated, round(max(upload_s, bundle_s, stow_s), 2),
                          completed == 3 and not lost and not duplicated
                          and held.uploads_unbound == 0 and instances_ok
                          and all(n == 1 for n in held.uploads_bound.values())
                          and "POST /dicomweb/studies" in stalled and partial_after == 0, notes)


def _failed(tally) -> set[str]:
    """Transfers the tally already counted as lost or duplicated."""
    return {p.split(":", 1)[0] for p in tally.problems}
