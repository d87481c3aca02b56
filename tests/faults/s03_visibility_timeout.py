"""Scenario 3: a delivery slower than the Redis broker's visibility timeout (and than the
step lease): the broker hands the step's message to a second worker while the first is
still sending. Leases and the idempotency key keep its effects to one: one bundle at the
recipient, one receipt verified."""
from __future__ import annotations

import time
from pathlib import Path

from tests.helpers import REDIS_URL

from .harness import TERMINAL, Cluster, private_redis_db, wait_until
from .result import ScenarioResult, scenario

VISIBILITY_S, SLOW_S = 2.0, 7.0


@scenario(3, "delivery slower than the broker's visibility timeout")
def run(workdir: Path) -> ScenarioResult:
    with Cluster(workdir, workers=2, broker=private_redis_db(REDIS_URL), proxy=True,
                 sender={"broker_visibility_timeout_s": VISIBILITY_S, "step_lease_s": 3}) as c:
        c.proxy.faults.append(f"slow:{SLOW_S}")
        tid = c.transfer(c.authorize(), documents=2)
        wait_until(lambda: not c.proxy.faults, 120, 0.05, "the slow delivery to start")
        at = time.monotonic()
        view = c.wait_states(TERMINAL, 120)
        recovery = time.monotonic() - at
        # the first run may still be sending: count once it and the proxy are done
        wait_until(lambda: c.proxy.posts(f"slow:{SLOW_S}"), 60, 0.1, "the slow POST to end")
        c.wait_idle()
        tally = c.tally()
        bundles = c.bundle_states(tid)
        redelivered = c.redelivered()
        posts = len(c.proxy.posts())
        verified = len(c.events("transfer.receipt.verified", tid))
        sent = len(c.events("transfer.delivery.sent", tid))
    notes = (f"messages the broker redelivered {len(redelivered)}; bundle POSTs seen by the proxy {posts}; delivery.sent {sent}; receipts verified "
             f"{verified}; bundle rows {bundles}; {dict(view)}")
    return ScenarioResult(3, "slower than the visibility timeout", 1, tally.completed, tally.lost,
                          tally.duplicated, round(recovery, 2),
                          tally.completed == 1 and not tally.lost and not tally.duplicated
                          and verified == 1 and sent == 1 and bundles == ["receipted"]
                          and len(redelivered) >= 1, notes)
