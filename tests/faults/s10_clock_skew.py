"""Scenario 10: the receiver's clock 5 minutes behind, then 5 minutes ahead of the
sender's and the issuer's; an issuer 5 minutes ahead of the sender. Within the stated
tolerance (gateway/exchange/clock.py: 5 minutes) authorizations, bundle signatures and
receipts verify and every transfer completes once; beyond it (7 minutes) the
authorization is refused at import and the delivery is refused with a reason that
names the clocks, and the recipient holds nothing of it.

The receiver's clock is really moved: its process runs under libfaketime (LD_PRELOAD,
Debian's `faketime` package), monotonic time left alone so its timeouts still work."""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from gateway.exchange.clock import CLOCK_SKEW

from .harness import Cluster
from .result import ScenarioResult, scenario

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
WITHIN, BEYOND = 300, 420  # seconds of skew
PER_CASE = 3  # transfers per clock setting


def skew_receiver(cluster: Cluster, offset_s: int) -> float:
    """(Re)start the receiver with its clock `offset_s` seconds off; returns the seconds
    until it answered again."""
    if not LIBFAKETIME.exists():
        raise AssertionError(f"{LIBFAKETIME} is missing: apt-get install faketime "
                             "(tests/apt-packages.txt)")
    began = time.monotonic()
    if cluster.receiver.alive:
        cluster.receiver.stop()
    cluster.receiver.env.update(LD_PRELOAD=str(LIBFAKETIME), FAKETIME=f"{offset_s:+d}",
                                FAKETIME_DONT_FAKE_MONOTONIC="1", FAKETIME_NO_CACHE="1")
    cluster.start_receiver()
    return time.monotonic() - began


def receiver_clock_offset(cluster: Cluster) -> float:
    """The receiver's clock minus ours, from its HTTP Date header (whole seconds)."""
    from email.utils import parsedate_to_datetime

    import requests

    answer = requests.get(f"{cluster.receiver_url}/health", timeout=5)
    theirs = parsedate_to_datetime(answer.headers["Date"])
    return (theirs - datetime.now(timezone.utc)).total_seconds()


@scenario(10, "clock skew of +-5 minutes between sender and receiver")
def run(workdir: Path) -> ScenarioResult:
    notes: list[str] = []
    ok = True
    recovery = 0.0
    refused_tids: list[str] = []
    cluster = Cluster(workdir, workers=1).start(receiver=False)
    try:
        for offset in (-WITHIN, +WITHIN):
            recovery = max(recovery, skew_receiver(cluster, offset))
            measured = receiver_clock_offset(cluster)
            if abs(measured - offset) > 5:
                ok = False
                notes.append(f"receiver clock off by {measured:.0f} s, wanted {offset} s")
            auth = cluster.authorize()
            for _ in range(PER_CASE):
                cluster.transfer(auth)
        # an issuer whose clock runs 5 minutes ahead of the sender's
        ahead = cluster.authorize(now=datetime.now(timezone.utc) + timedelta(seconds=WITHIN))
        for _ in range(PER_CASE):
            cluster.transfer(ahead)
        within = cluster.wait_states({"completed", "failed", "dead_letter", "cancelled"}, 300)
        if within != {"completed": 3 * PER_CASE}:
            ok = False
            notes.append(f"within the tolerance: {dict(within)}")

        # beyond the tolerance: the issuer 7 minutes ahead is refused at import ...
        from gateway.trust.authorizations import example_claims, sign_authorization
        from tests.helpers import ISSUER, RECEIVER_ORG, SENDER_ORG

        claims = example_claims(
            ISSUER, f"auth-{uuid.uuid4().hex[:12]}",
            disclosers=[{"id": SENDER_ORG, "name": "Test Hospital",
                         "endpoints": [{"type": "pdf-folder", "address": str(cluster.drop)}]}],
            recipient={"id": RECEIVER_ORG, "name": "Test Center",
                       "endpoint": {"type": "gateway", "address": cluster.receiver_url}},
            now=datetime.now(timezone.utc) + timedelta(seconds=BEYOND))
        r = cluster.client.post("/authorizations", headers=cluster.operator,
                                json={"jws": sign_authorization(claims, cluster.issuer_key)})
        text = str(r.get_json())
        if r.status_code < 400 or "not valid before" not in text or "tolerance" not in text:
            ok = False
            notes.append(f"an issuer {BEYOND} s ahead: HTTP {r.status_code}")
        # ... and a receiver 7 minutes behind refuses the delivery, saying why
        recovery = max(recovery, skew_receiver(cluster, -BEYOND))
        auth = cluster.authorize()
        refused_tids = [cluster.transfer(auth) for _ in range(PER_CASE)]
        beyond = cluster.wait_states({"completed", "failed", "dead_letter", "cancelled"}, 300,
                                     tids=refused_tids)
        reasons = {cluster.view(t)["reason"] or "" for t in refused_tids}
        if beyond != {"failed": PER_CASE} or not all("tolerance" in r and "clocks" in r
                                                     for r in reasons):
            ok = False
            notes.append(f"beyond the tolerance: {dict(beyond)} {sorted(reasons)[:1]}")
        held = cluster.recipient()
        for tid in refused_tids:
            cluster.expected.pop(tid)  # meant to be refused: counted apart below
        tally = held.tally(cluster.expected)
        from gateway.exchange.ids import bundle_id

        leaked = sum(held.bundles[bundle_id(t)] for t in refused_tids)
        if leaked:
            ok = False
            notes.append(f"{leaked} bundle(s) accepted beyond the tolerance")
    finally:
        cluster.stop()
    notes.append(f"tolerance {CLOCK_SKEW.total_seconds():.0f} s; receiver at -{WITHIN}/+{WITHIN} s "
                 f"and issuer at +{WITHIN} s: {tally.completed} of {tally.transfers} completed; "
                 f"receiver at -{BEYOND} s: {len(refused_tids)} refused with the reason, "
                 f"issuer at +{BEYOND} s: refused at import")
    passed = ok and tally.lost == 0 and tally.duplicated == 0 and tally.completed == tally.transfers
    return ScenarioResult(10, "clock skew", tally.transfers + len(refused_tids), tally.completed,
                          tally.lost, tally.duplicated, round(recovery, 2), passed,
                          "; ".join(notes + tally.problems[:5]))
