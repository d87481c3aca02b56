"""Scenario 1: 100 transfers in flight on 2 worker processes (Redis broker, PostgreSQL);
five times, a moment after the last, the worker holding the most steps (transfer steps
or source pulls) is killed (SIGKILL) and restarted. Every transfer completes, none is
lost, none is delivered twice (counted at the recipient). A kill's recovery is the time
until every step it held was taken over and finished (watched in the background, so the
five kills land while the 100 transfers are still in flight)."""
from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

from tests.helpers import REDIS_URL, throwaway_database

from .harness import TERMINAL, Cluster
from .result import ScenarioResult, scenario

TRANSFERS, KILLS = 100, 5


class Recoveries(threading.Thread):
    """Notes, for each kill, when every transfer it interrupted had left the state it was
    in (its step taken over by another worker and finished)."""

    def __init__(self, cluster: Cluster):
        super().__init__(daemon=True)
        self.cluster, self.kills, self.stopped = cluster, [], threading.Event()

    def add(self, at: float, held: dict[str, str]) -> None:
        self.kills.append({"at": at, "held": held, "moved_at": None if held else at})

    def run(self) -> None:
        while not self.stopped.is_set():
            now = {tid: state for tid, (state, _) in self.cluster.snapshot().items()}
            for k in self.kills:
                if k["moved_at"] is None and all(now.get(t) != s for t, s in k["held"].items()):
                    k["moved_at"] = time.monotonic()
            self.stopped.wait(0.1)

    def seconds(self) -> list[float]:
        return [round(k["moved_at"] - k["at"], 2) for k in self.kills if k["moved_at"] is not None]


@scenario(1, "worker killed (SIGKILL) five times with 100 transfers in flight")
def run(workdir: Path, transfers: int = TRANSFERS, kills: int = KILLS) -> ScenarioResult:
    rng = random.Random()
    with throwaway_database("gw_faults") as db_url, \
            Cluster(workdir, workers=2, broker=REDIS_URL, database_url=db_url) as c:
        auth = c.authorize()
        for _ in range(transfers):
            c.transfer(auth, documents=rng.choice((1, 2)))
        watch = Recoveries(c)
        watch.start()
        for _ in range(kills):
            time.sleep(rng.uniform(0.5, 2.0))  # a random point of whatever is running
            if c.states()["completed"] == transfers:
                break
            victim, held = c.busiest_worker(within=3.0)
            watch.add(c.kill(victim), held)
            c.restart(victim)
        states = c.wait_states(TERMINAL, 600)
        time.sleep(0.3)  # the watcher's last look
        watch.stopped.set()
        watch.join()
        tally = c.tally()
        sent = Counter(e.transfer_id for e in c.events("transfer.delivery.sent"))
    recoveries, hit = watch.seconds(), [len(k["held"]) for k in watch.kills]
    twice = sorted(tid for tid, n in sent.items() if n > 1)
    notes = (f"{len(watch.kills)} kill(s), steps held by the killed worker {hit}, recovered "
             f"in {recoveries} s; states {dict(states)}; transfers the sender logged as sent "
             f"twice {len(twice)}")
    if tally.problems:
        notes += "; " + "; ".join(tally.problems[:5])
    return ScenarioResult(1, "worker kills at load", transfers, tally.completed, tally.lost,
                          tally.duplicated, max(recoveries, default=0.0),
                          tally.completed == transfers and not tally.lost and not tally.duplicated
                          and len(watch.kills) == kills and len(recoveries) == kills
                          and states["completed"] == transfers and not twice
                          and len(sent) == transfers,
                          notes)
