"""Scenario 4: the Redis broker restarted without persistence in the middle of 50
transfers. Every queued message is gone; the reconciler (the beat's
`gateway.transfers.reconcile`) finds the steps in the database and enqueues them again.
Counted at the recipient: all 50 once, none lost.

The broker is a private redis-server (tests/faults/servers.py), never the shared one."""
from __future__ import annotations

import time
from pathlib import Path

from .harness import TERMINAL, Cluster, wait_until
from .result import ScenarioResult, scenario
from .servers import RedisServer

TRANSFERS = 50


def _settled(cluster: Cluster) -> int:
    states = cluster.states()
    return sum(n for state, n in states.items() if state in TERMINAL)


@scenario(4, "Redis restarted without persistence mid-transfers")
def run(workdir: Path) -> ScenarioResult:
    notes: list[str] = []
    redis = RedisServer(workdir / "redis").start()
    cluster = Cluster(workdir / "cluster", workers=2, broker=redis.url)
    try:
        cluster.start()
        auth = cluster.authorize()
        for _ in range(TRANSFERS):
            cluster.transfer(auth, documents=2)
        wait_until(lambda: _settled(cluster) >= 3, 180, 0.2, "the first transfers to finish")
        queued = redis.dbsize()
        before = _settled(cluster)
        old_pid = redis.pid
        redis.restart()  # SIGKILL by PID, started again empty
        fault_at = time.monotonic()
        notes.append(f"restarted at {before}/{TRANSFERS} settled; {queued} key(s) in Redis "
                     f"before, pid {old_pid} -> {redis.pid}")
        # recovery: the first transfer to settle after the restart
        wait_until(lambda: _settled(cluster) > before, 180, 0.2, "work to move after the restart")
        recovery = time.monotonic() - fault_at
        final = cluster.wait_states(TERMINAL, 600)
        notes.append(f"all settled {time.monotonic() - fault_at:.1f} s after the restart")
        tally = cluster.tally()
        mid_flight = before < TRANSFERS
        if not mid_flight:
            notes.append("every transfer had settled before the restart: nothing was in flight")
        passed = (mid_flight and tally.lost == 0 and tally.duplicated == 0
                  and tally.completed == TRANSFERS and final == {"completed": TRANSFERS})
        if final != {"completed": TRANSFERS}:
            notes.append(f"states: {dict(final)}")
    finally:
        cluster.stop()
        redis.stop()
    return ScenarioResult(4, "Redis restart", TRANSFERS, tally.completed, tally.lost,
                          tally.duplicated, round(recovery, 2), passed,
                          "; ".join(notes + tally.problems[:5]))
