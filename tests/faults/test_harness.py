"""The harness itself: a Cluster told to start no beat process runs its workers alone
(bench/e2e.py runs the embedded default's `serve` that way, beat inside it)."""
from __future__ import annotations

from tests.faults.harness import TERMINAL, Cluster


def test_cluster_without_beat_delivers_through_its_workers(tmp_path):
    cluster = Cluster(tmp_path, workers=1, beat=False)
    with cluster:
        assert cluster.beat is None
        assert [p.name for p in cluster._senders()] == ["worker-0"]
        tid = cluster.transfer(cluster.authorize(), documents=2)
        states = cluster.wait_states(TERMINAL, timeout=180)
        assert states == {"completed": 1}, cluster.view(tid)
        cluster.wait_idle()
        assert cluster.redelivered() == []
        tally = cluster.tally()
    assert (tally.completed, tally.lost, tally.duplicated) == (1, 0, 0), tally.problems
