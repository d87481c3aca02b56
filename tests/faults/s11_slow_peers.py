"""Scenario 11: a recipient that takes each bundle at 10 KB/s, longer than a step's
lease (5 s here): the transfer is making progress, so no timeout and no takeover may
end it: each bundle is POSTed once. Then a recipient that stalls mid-body (takes 16 KB,
then nothing): the sender's read timeout ends that attempt and the retry delivers it.

The slow recipient is a throttling TCP relay in front of the real receiving gateway: it
reads at 10 KB/s through a small receive window. A bundle takes longer than the sender's
read timeout to go through: loopback send buffers grow to megabytes, so unless the
sender's writes follow the relay's reads (gateway/outbound/sockets.py), the kernel takes
the whole bundle at once and the read timeout ends a delivery still making progress.

Slow PACS: a real Orthanc behind a DICOM proxy (tests/faults/dicom_proxy.py) that hands
over one instance a second, two studies of 12 instances pulled by C-GET with a stall
timeout of 3 s and a lease of 5 s: the steady one is pulled in one attempt, each
instance once; the other PACS goes silent after 4 instances on its first association:
the stall timeout aborts it and only the 8 missing instances are asked for again."""
from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from pathlib import Path

from tests.dicom.dicom_peers import Modality, Orthanc
from tests.dicom.dicom_studies import make_study
from tests.helpers import SENDER_ORG, free_port

from .dicom_proxy import DicomFaultProxy
from .harness import TERMINAL, Cluster
from .result import ScenarioResult, scenario

RATE = 10 * 1024  # bytes a second, each way
STALL_AFTER = 16 * 1024
TRANSFERS, DOCUMENTS = 3, 40  # ~170 KB bundles: ~17 s each at 10 KB/s, three leases
# shorter than a bundle takes: the sender's writes must follow the relay's reads (a
# kernel that took the whole bundle at once would leave the read timeout to cover it)
LEASE_S, READ_TIMEOUT_S = 5, 10
INSTANCES, PACS_STALL_S, PACS_STALL_AFTER = 12, 3, 4
MRN = "urn:oid:2.16.840.1.113883.19.5"


class ThrottledRelay:
    """TCP relay on 127.0.0.1:`port` to `upstream`, RATE bytes/s each way. The first
    `stalls` bundle POSTs take STALL_AFTER bytes of the request, then hang until the
    client gives up."""

    def __init__(self, port: int, upstream: int, stalls: int = 0):
        self.upstream, self.stalls = upstream, stalls
        self.connections = 0
        self.stalled = 0
        self.lock = threading.Lock()
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
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            for src, dst, may_stall in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(src, dst, may_stall), daemon=True).start()

    def _should_stall(self, head: bytes) -> bool:
        """Only a bundle's POST stalls (an upload or a STOW-RS goes on), the first `stalls`."""
        with self.lock:
            if self.stalled < self.stalls and head.startswith(b"POST /fhir HTTP/"):
                self.stalled += 1
                return True
        return False

    def _pipe(self, src: socket.socket, dst: socket.socket, may_stall: bool) -> None:
        sent, began, head = 0, time.monotonic(), b""
        try:
            while True:
                if may_stall and sent >= STALL_AFTER:
                    may_stall = False
                    if self._should_stall(head):
                        src.recv(1, socket.MSG_PEEK)  # hold: return when the client hangs up
                        break
                data = src.recv(1024)
                if not data:
                    break
                head = head or data
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


def _pacs(cluster: Cluster, name: str, pacs: Orthanc, proxy: DicomFaultProxy, patient_id: str):
    """A DICOM source `name` reached through `proxy`, and the authorization for its patient."""
    endpoint = f"dicom://{pacs.aet}@127.0.0.1:{proxy.port}"
    cluster.sender_config["sources"][name] = {
        "kind": "dicom", "organization": SENDER_ORG, "data_class": "imaging",
        "endpoint": endpoint,
        "options": {"host": "127.0.0.1", "port": proxy.port, "ae_title": pacs.aet,
                    "calling_aet": "GATEWAY", "retrieve": "get",
                    "stall_timeout": PACS_STALL_S, "start_timeout": 30}}
    return endpoint


@scenario(11, "slow peers: a recipient at 10 KB/s, one that stalls; a PACS at one instance a second, one that stalls")
def run(workdir: Path) -> ScenarioResult:
    notes: list[str] = []
    recovery = 0.0
    cluster = Cluster(workdir / "cluster", workers=2, sender={"http_timeout_s": READ_TIMEOUT_S,
                                                               "step_lease_s": LEASE_S},
                      receiver={"port": free_port()})
    relay = ThrottledRelay(cluster.public_port, cluster.receiver_config["port"], stalls=1)
    studies = {name: make_study(workdir / name, INSTANCES, 1, patient_id=f"PAT-{name.upper()}",
                                rows=32, cols=32) for name in ("steady", "stalling")}
    pacs = Orthanc(workdir / "orthanc", [Modality("GATEWAY", 1)], dicomweb=False).start()
    proxies = {"steady": DicomFaultProxy(pacs.dicom_port, interval=1.0).start(),
               "stalling": DicomFaultProxy(pacs.dicom_port, interval=1.0,
                                           stall_after=PACS_STALL_AFTER).start()}
    endpoints = {name: _pacs(cluster, f"pacs-{name}", pacs, proxy, studies[name].patient_id)
                 for name, proxy in proxies.items()}
    try:
        for study in studies.values():
            pacs.upload(study.files)
        cluster.start()
        auth = cluster.authorize()
        # the first bundle POSTed meets the stalling connection, the others a slow, steady one
        tids = [cluster.transfer(auth, documents=DOCUMENTS) for _ in range(TRANSFERS)]
        imaging = {name: cluster.transfer(cluster.authorize(
            endpoints=[{"type": "dicom", "address": endpoints[name]}],
            patient={"name": {"family": "Doe", "given": ["Jane"]}, "birthDate": "1970-01-01",
                     "identifiers": [{"system": MRN, "value": studies[name].patient_id}]}),
            source=f"pacs-{name}") for name in proxies}
        began = time.monotonic()
        final = cluster.wait_states(TERMINAL, 240)
        took = time.monotonic() - began
        every = [*tids, *imaging.values()]  # whichever bundle met the stall
        attempts = {t: len(cluster.events("transfer.delivery.attempt", t)) for t in every}
        retries = {t: [e.detail.get("error", "") for e in cluster.events("transfer.step.retry", t)
                       if e.detail.get("step") == "delivering"] for t in every}
        sizes = [b["size"] for t in tids for b in [cluster.view(t)["bundle"] or {}] if b]
        pulls = {name: (len(cluster.events("transfer.pull.started", tid)),
                        len(cluster.events("transfer.pull.retry", tid)))
                 for name, tid in imaging.items()}
        pull_s = {name: (cluster.events("transfer.pull.finished", tid)[-1].at
                         - cluster.events("transfer.pull.started", tid)[0].at).total_seconds()
                  for name, tid in imaging.items() if cluster.events("transfer.pull.finished", tid)}
        held = cluster.recipient()
        tally = held.tally(cluster.expected)
        retried = sum(1 for t in every if retries[t])
        # recovery: from the stalled attempt's retry to that bundle delivered
        recovery = max([(cluster.events("transfer.delivery.sent", t)[-1].at
                         - cluster.events("transfer.step.retry", t)[0].at).total_seconds()
                        for t in every if retries[t] and cluster.events("transfer.delivery.sent", t)],
                       default=0.0)
        stalled = proxies["stalling"]
        if stalled.fault_at is not None:  # from the PACS going silent to its next instance
            after = [t for t in stalled.sent_at if t > stalled.fault_at]
            recovery = max(recovery, (after[0] - stalled.fault_at) if after else 0.0)
        # the stalled attempt is retried once; every other bundle goes in one attempt
        steady = sum(attempts.values()) == len(every) + relay.stalled and retried == relay.stalled
        notes.append(f"bundles {min(sizes, default=0) // 1024}-{max(sizes, default=0) // 1024} KB at "
                     f"{RATE // 1024} KB/s (lease {LEASE_S} s, read timeout {READ_TIMEOUT_S} s); "
                     f"{relay.connections} connections, {relay.stalled} stalled; delivery attempts "
                     f"{sorted(attempts.values())}; all done in {took:.0f} s")
        if not steady:
            notes.append(f"retries: {[r[:1] for r in retries.values()]}")
        once = {name: proxy.counts == Counter({uid: 1 for uid in studies[name].sop_uids})
                for name, proxy in proxies.items()}
        at_recipient = {name: sum(1 for uid in studies[name].sop_uids if held.instances[uid] == 1)
                        for name in proxies}
        pacs_ok = (all(once.values()) and pulls == {name: (1, 0) for name in proxies}
                   and stalled.stalled == 1 and proxies["steady"].stalled == 0
                   and at_recipient == {name: INSTANCES for name in proxies}
                   and all(t > LEASE_S for t in pull_s.values()))
        notes.append(f"PACS at 1 instance/s (stall timeout {PACS_STALL_S} s): pull attempts and "
                     f"retries {pulls}, pulled in {({n: round(t) for n, t in pull_s.items()})} s; "
                     f"the silent association aborted {stalled.stalled}; each instance sent once "
                     f"{once}; held once at the recipient {at_recipient}")
        passed = (steady and relay.stalled == 1 and final == {"completed": TRANSFERS + 2}
                  and tally.completed == TRANSFERS + 2 and tally.lost == 0
                  and tally.duplicated == 0 and pacs_ok)
        if final != {"completed": TRANSFERS + 2}:
            notes.append(f"states: {dict(final)}")
    finally:
        cluster.stop()
        relay.stop()
        for proxy in proxies.values():
            proxy.stop()
        pacs.stop()
    return ScenarioResult(11, "slow peers", TRANSFERS + 2, tally.completed, tally.lost,
                          tally.duplicated, round(recovery, 2), passed,
                          "; ".join(notes + tally.problems[:5]))
