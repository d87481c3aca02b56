"""Scenario 9: the receiving gateway is killed (SIGKILL) in the middle of receiving a
document upload (`PUT Binary/{id}`) and, in a second transfer, a bundle: the fault proxy
passes on half the request and holds it while the receiver dies. The receiver comes
back, the sender's retry completes each transfer, and the center holds each document
once; the half-received upload is never bound to a bundle."""
from __future__ import annotations

import time
from pathlib import Path

from .harness import TERMINAL, Cluster, wait_until
from .result import ScenarioResult, scenario


def _killed_mid_request(c: Cluster, queue, documents: int) -> tuple[str, float]:
    """Start a transfer whose next request of `queue` stalls halfway; kill the receiver
    then, let the sender's connection drop, restart the receiver. Returns the transfer
    and how long from the receiver's restart to the transfer's end."""
    c.proxy.stalled.clear()
    c.proxy.release.clear()
    queue.append("stall")
    tid = c.transfer(c.authorize(), documents=documents)
    wait_until(c.proxy.stalled.is_set, 120, 0.05, "the request to reach the receiver halfway")
    c.kill(c.receiver)
    c.proxy.release.set()  # the sender's connection drops: a transient failure, retried
    c.restart(c.receiver)
    at = time.monotonic()
    c.wait_states(TERMINAL, 180, tids=[tid])
    return tid, time.monotonic() - at


@scenario(9, "receiving gateway killed mid-receive (upload, bundle)")
def run(workdir: Path) -> ScenarioResult:
    # every document goes as an upload before its bundle
    with Cluster(workdir, workers=1, proxy=True,
                 sender={"attachment_inline_max_bytes": 512}) as c:
        upload, upload_s = _killed_mid_request(c, c.proxy.put_faults, documents=2)
        bundle, bundle_s = _killed_mid_request(c, c.proxy.faults, documents=2)
        states = {tid: c.view(tid)["state"] for tid in (upload, bundle)}
        held = c.recipient()
        tally = held.tally(c.expected)
    notes = (f"states {states}; uploads bound {sum(held.uploads_bound.values())}, unbound "
             f"{held.uploads_unbound}; bundles left processing {held.processing}")
    if tally.problems:
        notes += "; " + "; ".join(tally.problems[:5])
    return ScenarioResult(9, "receiver killed mid-receive", 2, tally.completed, tally.lost,
                          tally.duplicated, round(max(upload_s, bundle_s), 2),
                          tally.completed == 2 and not tally.lost and not tally.duplicated
                          and held.uploads_unbound == 0
                          and all(n == 1 for n in held.uploads_bound.values()), notes)
