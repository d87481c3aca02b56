"""Scenario 5: the sender's PostgreSQL restarted (an immediate stop: connections cut,
no checkpoint) in the middle of 30 transfers. Workers lose every connection at once;
their pools reconnect, the steps that failed on the way are retried or re-enqueued by
the reconciler, and every transfer finishes once at the recipient.

The database is a private cluster (tests/faults/servers.py), never the shared one."""
from __future__ import annotations

import time
from pathlib import Path

from .harness import TERMINAL, Cluster, wait_until
from .result import ScenarioResult, scenario
from .servers import PostgresCluster

TRANSFERS = 30
DOWN_S = 3  # how long the database stays down


def _settled(cluster: Cluster) -> int:
    return sum(n for state, n in cluster.states().items() if state in TERMINAL)


@scenario(5, "PostgreSQL restarted mid-transfers")
def run(workdir: Path) -> ScenarioResult:
    notes: list[str] = []
    pg = PostgresCluster().start()
    cluster = Cluster(workdir / "cluster", workers=2, database_url=pg.create_database("sender"))
    tally, recovery, passed = None, 0.0, False
    try:
        cluster.start()
        auth = cluster.authorize()
        for _ in range(TRANSFERS):
            cluster.transfer(auth, documents=2)
        wait_until(lambda: _settled(cluster) >= 3, 180, 0.2, "the first transfers to finish")
        before, old_pid = _settled(cluster), pg.pid
        pg.stop("immediate")
        fault_at = time.monotonic()
        time.sleep(DOWN_S)  # the outage itself: workers meet a refused connection meanwhile
        pg.start()
        notes.append(f"stopped at {before}/{TRANSFERS} settled for {DOWN_S} s, "
                     f"postmaster pid {old_pid} -> {pg.pid}")

        def moved():
            try:
                return _settled(cluster) > before
            except Exception:  # noqa: BLE001 - our own pool may still hold a cut connection
                return False

        wait_until(moved, 300, 0.2, "work to move after the restart")
        recovery = time.monotonic() - fault_at
        final = cluster.wait_states(TERMINAL, 600)
        notes.append(f"all settled {time.monotonic() - fault_at:.1f} s after the stop")
        dead = [w.name for w in cluster.workers if not w.alive]
        if dead:
            notes.append(f"worker(s) exited: {dead}")
        tally = cluster.tally()
        passed = (before < TRANSFERS and not dead and final == {"completed": TRANSFERS}
                  and tally.lost == 0 and tally.duplicated == 0 and tally.completed == TRANSFERS)
        if final != {"completed": TRANSFERS}:
            notes.append(f"states: {dict(final)}")
    finally:
        cluster.stop()
        pg.destroy()
    return ScenarioResult(5, "PostgreSQL restart", TRANSFERS, tally.completed, tally.lost,
                          tally.duplicated, round(recovery, 2), passed,
                          "; ".join(notes + tally.problems[:5]))
