"""Scenario 2: a worker gets SIGTERM in the middle of a delivery step (the recipient's
answer is held up by the fault proxy), then SIGKILL when the grace runs out. Celery acks
late: the step's message stays unacknowledged (it will be delivered again); the step is
taken over, runs to its end once, and the recipient holds the bundle once."""
from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.helpers import REDIS_URL

from .harness import TERMINAL, Cluster, wait_until
from .result import ScenarioResult, scenario

GRACE_S, HOLD_S = 1.0, 6.0


@scenario(2, "SIGTERM then SIGKILL of a worker in the middle of a step")
def run(workdir: Path) -> ScenarioResult:
    with Cluster(workdir, workers=1, broker=REDIS_URL, proxy=True) as c:
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
        attempts = len(c.events("transfer.delivery.attempt", tid))
        verified = len(c.events("transfer.receipt.verified", tid))
    notes = (f"exited within grace: {exited}; state at kill {state_at_kill}; unacked at kill "
             f"{unacked}; delivery attempts {attempts}; receipts verified {verified}; {dict(view)}")
    return ScenarioResult(2, "SIGTERM then SIGKILL mid-step", 1, tally.completed, tally.lost,
                          tally.duplicated, round(recovery, 2),
                          tally.completed == 1 and not tally.lost and not tally.duplicated
                          and not exited and "delivering" in unacked and verified == 1, notes)
