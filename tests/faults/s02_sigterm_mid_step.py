"""Scenario 2: a worker gets SIGTERM in the middle of a delivery step (the recipient's
answer is held up by the fault proxy), then SIGKILL when the grace runs out. Celery acks
late: the message of the task running the step stays unacknowledged (a worker goes on
from step to step, so that may be the message of the pull that finished the last
source) and the broker delivers it again (after its visibility timeout); the step is
taken over, runs to its end once, the redelivered message is acknowledged, and the
recipient holds the bundle once."""
from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.helpers import REDIS_URL

from .harness import TERMINAL, Cluster, private_redis_db, wait_until
from .result import ScenarioResult, scenario

GRACE_S, HOLD_S, VISIBILITY_S = 1.0, 6.0, 3.0


@scenario(2, "SIGTERM then SIGKILL of a worker in the middle of a step")
def run(workdir: Path) -> ScenarioResult:
    with Cluster(workdir, workers=1, broker=private_redis_db(REDIS_URL), proxy=True,
                 sender={"broker_visibility_timeout_s": VISIBILITY_S}) as c:
        c.kill(c.beat)  # one worker alone takes the step: the one we signal
        c.proxy.faults.append(f"slow:{HOLD_S}")  # the bundle's POST is held up
        tid = c.transfer(c.authorize(), documents=2)
        wait_until(lambda: not c.proxy.faults and c.view(tid)["state"] == "delivering"
                   and c.holder(tid), 120, 0.05, "the delivery to be under way")
        worker = c.holder(tid)
        worker.signal(signal.SIGTERM)  # warm shutdown: Celery waits for the running step
        exited = worker.wait_exit(GRACE_S)
        at = c.kill(worker)  # the grace ran out
        unacked = c.unacked(tid)  # the interrupted step, not acknowledged
        state_at_kill = c.view(tid)["state"]
        c.restart(worker)
        c.beat.start()  # the reconciler: the dead worker's lease is freed at once
        view = c.wait_states(TERMINAL, 120)
        recovery = time.monotonic() - at
        tally = c.tally()
        # the broker delivers the interrupted message again; it is then acknowledged
        wait_until(lambda: not c.unacked(tid), 60, 0.2, "the interrupted step's message to be redelivered")
        c.wait_idle()
        attempts = len(c.events("transfer.delivery.attempt", tid))
        verified = len(c.events("transfer.receipt.verified", tid))
    notes = (f"exited within grace: {exited}; state at kill {state_at_kill}; unacked at kill "
             f"{unacked}; delivery attempts {attempts}; receipts verified {verified}; {dict(view)}")
    return ScenarioResult(2, "SIGTERM then SIGKILL mid-step", 1, tally.completed, tally.lost,
                          tally.duplicated, round(recovery, 2),
                          tally.completed == 1 and not tally.lost and not tally.duplicated
                          and not exited and state_at_kill == "delivering" and bool(unacked)
                          and verified == 1, notes)
