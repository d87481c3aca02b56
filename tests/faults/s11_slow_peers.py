"""Scenario 11: a recipient that takes each bundle at 10 KB/s, longer than a step's
lease (5 s here): the transfer is making progress, so no timeout and no takeover may
end it: each bundle is POSTed once. Then a recipient that stalls mid-body (takes 16 KB,
then nothing): the sender's read timeout ends that attempt and the retry delivers it.

The slow recipient is a throttling TCP relay in front of the real receiving gateway
(its receive window kept small, so the sender really waits on it, not on kernel
buffers). Not covered here: a PACS sending one instance a second (needs the DICOM
fixtures; left for the DICOM retrieve path)."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from tests.helpers import free_port

from .harness import TERMINAL, Cluster
from .result import ScenarioResult, scenario

RATE = 10 * 1024  # bytes a second, each way
STALL_AFTER = 16 * 1024
TRANSFERS, DOCUMENTS = 3, 40  # ~100 KB bundles: ~10 s each at 10 KB/s, twice the lease
# the sender's read timeout counts from the last byte it handed to the kernel, and the
# kernel holds a whole ~100 KB bundle: the wait for the answer includes the drain
LEASE_S, READ_TIMEOUT_S = 5, 20


class ThrottledRelay:
    """TCP relay on 127.0.0.1:`port` to `upstream`, RATE bytes/s each way. The first
    `stalls` connections take STALL_AFTER bytes of the request, then hang until the
    client gives up."""

    def __init__(self, port: int, upstream: int, stalls: int = 0):
        self.upstream, self.stalls = upstream, stalls
        self.connections = 0
        self.stalled = 0
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(64)
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            stall = self.stalled < self.stalls
            self.stalled += stall
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            for src, dst, limit in ((client, upstream, STALL_AFTER if stall else None),
                                    (upstream, client, None)):
                threading.Thread(target=self._pipe, args=(src, dst, limit), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent, began = 0, time.monotonic()
        try:
            while True:
                if limit is not None and sent >= limit:
                    src.recv(1, socket.MSG_PEEK)  # hold: return when the client hangs up
                    break
                data = src.recv(1024)
                if not data:
                    break
                dst.sendall(data)
                sent += len(data)
                ahead = began + sent / RATE - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self.closed.set()
        self.listener.close()


@scenario(11, "slow peers: a recipient at 10 KB/s, one that stalls")
def run(workdir: Path) -> ScenarioResult:
    notes: list[str] = []
    recovery = 0.0
    cluster = Cluster(workdir / "cluster", workers=2, sender={"http_timeout_s": READ_TIMEOUT_S,
                                                               "step_lease_s": LEASE_S},
                      receiver={"port": free_port()})
    relay = ThrottledRelay(cluster.public_port, cluster.receiver_config["port"], stalls=1)
    try:
        cluster.start()
        auth = cluster.authorize()
        # the first transfer meets the stalling connection, the others a slow but steady one
        tids = [cluster.transfer(auth, documents=DOCUMENTS) for _ in range(TRANSFERS)]
        began = time.monotonic()
        final = cluster.wait_states(TERMINAL, 180)
        took = time.monotonic() - began
        attempts = {t: len(cluster.events("transfer.delivery.attempt", t)) for t in tids}
        retries = {t: [e.detail.get("error", "") for e in cluster.events("transfer.step.retry", t)
                       if e.detail.get("step") == "delivering"] for t in tids}
        sizes = [b["size"] for t in tids for b in [cluster.view(t)["bundle"] or {}] if b]
        tally = cluster.tally()
        retried = sum(1 for t in tids if retries[t])
        # recovery: from the stalled attempt's retry to that bundle delivered
        recovery = max([(cluster.events("transfer.delivery.sent", t)[-1].at
                         - cluster.events("transfer.step.retry", t)[0].at).total_seconds()
                        for t in tids if retries[t] and cluster.events("transfer.delivery.sent", t)],
                       default=0.0)
        # the stalled attempt is retried once; every other bundle goes in one attempt
        steady = sum(attempts.values()) == TRANSFERS + relay.stalled and retried == relay.stalled
        notes.append(f"bundles {min(sizes, default=0) // 1024}-{max(sizes, default=0) // 1024} KB at "
                     f"{RATE // 1024} KB/s (lease {LEASE_S} s, read timeout {READ_TIMEOUT_S} s); "
                     f"{relay.connections} connections, {relay.stalled} stalled; delivery attempts "
                     f"{sorted(attempts.values())}; all done in {took:.0f} s")
        if not steady:
            notes.append(f"retries: {[r[:1] for r in retries.values()]}")
        passed = (steady and relay.stalled == 1 and final == {"completed": TRANSFERS}
                  and tally.completed == TRANSFERS and tally.lost == 0 and tally.duplicated == 0)
        if final != {"completed": TRANSFERS}:
            notes.append(f"states: {dict(final)}")
    finally:
        cluster.stop()
        relay.stop()
    return ScenarioResult(11, "slow peers", TRANSFERS, tally.completed, tally.lost,
                          tally.duplicated, round(recovery, 2), passed,
                          "; ".join(notes + tally.problems[:5]))
