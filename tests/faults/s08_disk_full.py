"""Scenario 8: the sender's disk fills up, first under its blob store, then under its
work folder (each a real tmpfs of a few MB mounted by the test: writes fail with the
kernel's ENOSPC). Transfers stop with that reason ("no space left ..."), resume by
themselves once the filler is removed, and the recipient holds each document once, in
its exact bytes: nothing half-written is delivered."""
from __future__ import annotations

import time
from pathlib import Path

from .harness import TERMINAL, Cluster, wait_until
from .result import ScenarioResult, scenario
from .servers import SizeLimitedFolder

PER_FOLDER = 5  # transfers per full folder
DOCUMENTS = 3


def _stopped_for_space(cluster: Cluster, tids: list[str]) -> bool:
    views = [cluster.view(t) for t in tids]
    return all(v["state"] not in TERMINAL and "no space left" in (v["reason"] or "") for v in views)


def _fill_then_free(cluster: Cluster, folder: SizeLimitedFolder, auth: str,
                    notes: list[str]) -> tuple[float, bool]:
    """Start transfers on a full folder, see them stop for it, make room; returns the
    seconds from making room to the first completed, and whether they stopped as said."""
    folder.fill(leave_bytes=0)
    tids = [cluster.transfer(auth, documents=DOCUMENTS) for _ in range(PER_FOLDER)]
    try:
        wait_until(lambda: _stopped_for_space(cluster, tids), 120, 0.3,
                   f"transfers to stop for the full {folder.path.name} folder")
        stopped = True
    except AssertionError:
        stopped = False
        notes.append(f"{folder.path.name}: states {[cluster.view(t)['state'] for t in tids]}, "
                     f"reason {cluster.view(tids[0])['reason']!r}")
    retries = [e for t in tids for e in cluster.events("transfer.step.retry", t)]
    notes.append(f"{folder.path.name} full: {len(retries)} retries")
    folder.make_room()
    freed = time.monotonic()
    wait_until(lambda: any(cluster.view(t)["state"] == "completed" for t in tids), 120, 0.2,
               f"a transfer to complete once {folder.path.name} has room")
    recovery = time.monotonic() - freed
    cluster.wait_states(TERMINAL, 300, tids=tids)
    return recovery, stopped


@scenario(8, "disk full in the blob store or the work folder")
def run(workdir: Path) -> ScenarioResult:
    notes: list[str] = []
    cluster = Cluster(workdir / "cluster", workers=1)
    data = Path(cluster.sender_config["data_dir"])
    blobs = SizeLimitedFolder(data / "blobs", size_mb=4).mount()
    work = SizeLimitedFolder(data / "work", size_mb=4).mount()
    recoveries, stopped_all = [], True
    try:
        cluster.start()
        auth = cluster.authorize()
        for folder in (blobs, work):
            recovery, stopped = _fill_then_free(cluster, folder, auth, notes)
            recoveries.append(recovery)
            stopped_all &= stopped
        final = cluster.states()
        tally = cluster.tally()
        held = cluster.recipient()
        half = sorted(p.name for p in blobs.path.rglob("*.part"))
        if half:
            notes.append(f"{len(half)} .part file(s) left in the blob store")
        total = 2 * PER_FOLDER
        passed = (stopped_all and not half and final == {"completed": total}
                  and tally.completed == total and tally.lost == 0 and tally.duplicated == 0
                  and held.processing == 0)
        if final != {"completed": total}:
            notes.append(f"states: {dict(final)}")
        notes.append(f"{blobs.kind} of {blobs.size_mb} MB each")
    finally:
        cluster.stop()
        blobs.unmount()
        work.unmount()
    return ScenarioResult(8, "disk full", 2 * PER_FOLDER, tally.completed, tally.lost,
                          tally.duplicated, round(max(recoveries, default=0.0), 2), passed,
                          "; ".join(notes + tally.problems[:5]))
