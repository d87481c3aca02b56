"""Scenario 1: 100 transfers in flight on 2 worker processes (Redis broker, PostgreSQL);
a random worker is killed (SIGKILL) at a random moment five times and restarted. Every
transfer completes, none is lost, none is delivered twice (counted at the recipient)."""
from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

from tests.helpers import REDIS_URL, throwaway_database

from .harness import TERMINAL, Cluster
from .result import ScenarioResult, scenario

TRANSFERS, KILLS = 100, 5


@scenario(1, "worker killed (SIGKILL) five times with 100 transfers in flight")
def run(workdir: Path, transfers: int = TRANSFERS, kills: int = KILLS) -> ScenarioResult:
    rng = random.Random()
    recoveries, hit = [], []  # per kill: seconds until work moved again, steps it held
    with throwaway_database("gw_faults") as db_url, \
            Cluster(workdir, workers=2, broker=REDIS_URL, database_url=db_url) as c:
        auth = c.authorize()
        for _ in range(transfers):
            c.transfer(auth, documents=rng.choice((1, 2)))
        for _ in range(kills):
            time.sleep(rng.uniform(0.5, 3.0))  # a random point of whatever is running
            if c.states()["completed"] == transfers:
                break
            victim, held = c.busiest_worker(within=5.0)
            at = c.kill(victim)
            c.restart(victim)
            c.wait_moved(held)  # the steps it held were taken over and finished
            recoveries.append(time.monotonic() - at)
            hit.append(len(held))
        states = c.wait_states(TERMINAL, 600)
        tally = c.tally()
        sent = Counter(e.transfer_id for e in c.events("transfer.delivery.sent"))
    twice = sorted(tid for tid, n in sent.items() if n > 1)
    notes = (f"{len(recoveries)} kill(s), steps held by the killed worker {hit}; states "
             f"{dict(states)}; transfers the sender logged as sent twice {len(twice)}")
    if tally.problems:
        notes += "; " + "; ".join(tally.problems[:5])
    return ScenarioResult(1, "worker kills at load", transfers, tally.completed, tally.lost,
                          tally.duplicated, round(max(recoveries, default=0.0), 2),
                          tally.completed == transfers and not tally.lost and not tally.duplicated
                          and len(recoveries) == kills and states["completed"] == transfers
                          and not twice and len(sent) == transfers,
                          notes)
