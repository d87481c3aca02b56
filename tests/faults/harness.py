"""The process harness every fault scenario runs on, built once.

A Cluster is a sending gateway (its API in this process, its workers as real
`records-gateway worker` processes, one of them also running beat) and a receiving
gateway process (`serve --receive`), optionally behind a fault-injecting proxy, all on
free loopback ports. The broker is the embedded one or a Redis URL (a queue of its
own); either database is SQLite or a PostgreSQL URL (tests.helpers.throwaway_database).

Faults: `kill(proc, sig)` and `restart(proc)` by PID group, `wait_until` by polling.
What happened is counted from what the recipient really stored (`recipient()`, read
from the receiver's database and blob store), never from what the sender believes.

It depends on no pytest fixture, so bench/faults.py runs the same code."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.delivery.faultproxy import FaultProxy
from tests.helpers import (
    ISSUER,
    RECEIVER_ORG,
    SENDER_ORG,
    GatewayProcess,
    bearer,
    free_port,
    make_token,
    record_binaries,
    stop_all,
    wait_until,
    write_pdfs,
)

__all__ = ["Cluster", "Proc", "Recipient", "Tally", "wait_until", "TERMINAL", "private_redis_db"]

TERMINAL = {"completed", "failed", "cancelled", "dead_letter"}


class Proc(GatewayProcess):
    """A gateway process that remembers its arguments, so it can be restarted."""

    def __init__(self, config: dict, workdir: Path, name: str, *args: str):
        super().__init__(config, workdir, name)
        self.args = args

    def start(self, *args: str) -> "Proc":
        self.args = args or self.args
        # where this run's lines begin in the log the process appends to
        self.log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        return super().start(*self.args)

    def log_text(self) -> str:
        """What this run of the process logged (not the runs before a restart)."""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_from)
            return f.read().decode(errors="replace")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send `sig` to the process alone (a SIGTERM asks Celery for a warm shutdown)."""
        if self.alive:
            os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def restart(self) -> "Proc":
        self.stop()
        return self.start()


def _cli(config_file: Path, *args: str) -> str:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
           "GATEWAY_CONFIG_FILE": str(config_file)}
    done = subprocess.run([sys.executable, "-m", "gateway", *args], env=env, capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"records-gateway {args[0]} failed: {done.stderr[-1000:]}")
    return done.stdout.strip()


@dataclass
class Tally:
    """Transfers counted against what the recipient holds."""

    transfers: int
    completed: int
    lost: int
    duplicated: int
    problems: list[str] = field(default_factory=list)


@dataclass
class Recipient:
    """What the receiving gateway stored, read from its own database and blob store."""

    bundles: Counter  # accepted bundles per idempotency key
    parts: Counter  # accepted bundles per (submission group, part): >1 is a duplicate
    documents: dict[str, Counter]  # idempotency key -> document sha256 -> times held
    uploads_bound: Counter  # uploaded Binary sha256 bound to a bundle -> rows
    uploads_unbound: int  # uploads no bundle took (yet)
    instances: Counter  # SOP Instance UID -> rows
    instances_unbound: int
    processing: int  # bundles claimed by a receive that never finished

    def tally(self, expected: dict[str, set[str]]) -> Tally:
        """`expected`: transfer id -> sha256 of the documents it carries. Complete: the
        transfer's bundle accepted once with each of its documents once."""
        from gateway.exchange.ids import bundle_id

        t = Tally(len(expected), 0, 0, 0)
        for tid, docs in expected.items():
            key = bundle_id(tid)
            held = self.documents.get(key, Counter())
            dup = self.bundles[key] > 1 or any(n > 1 for n in held.values())
            missing = self.bundles[key] == 0 or set(docs) - set(held)
            if dup:
                t.duplicated += 1
                t.problems.append(f"{tid}: held twice")
            if missing:
                t.lost += 1
                t.problems.append(f"{tid}: {'no bundle' if not self.bundles[key] else 'documents missing'}")
            if not dup and not missing:
                t.completed += 1
        extra = sum(n - 1 for n in self.parts.values() if n > 1)
        if extra:
            t.duplicated += extra
            t.problems.append(f"{extra} bundle part(s) held under a second idempotency key")
        return t


class Cluster:
    """Sender (in-process API + worker processes) and receiver process on loopback.

    broker: None (embedded) or a redis:// URL; database_url / receiver_database_url:
    None (SQLite in the data dir) or a PostgreSQL URL. proxy=True puts a FaultProxy in
    front of the receiver (`cluster.proxy.faults` etc.). `sender` / `receiver` are
    extra settings merged into each side's configuration. beat=False starts no beat
    process (the caller runs one its own way, e.g. `serve` with its embedded worker)."""

    def __init__(self, workdir: Path, *, workers: int = 2, concurrency: int = 2,
                 pool: str = "threads", broker: str | None = None,
                 database_url: str | None = None, receiver_database_url: str | None = None,
                 proxy: bool = False, sender: dict | None = None, receiver: dict | None = None,
                 beat: bool = True):
        from gateway.storage.blobstore import new_master_key
        from gateway.trust.authorizations import new_issuer_key
        from gateway.trust.issuers import trust_document

        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.n_workers, self.worker_args = workers, ("worker", "--pool", pool,
                                                     "--concurrency", str(concurrency))
        self.issuer_key = new_issuer_key(f"fault-esign-{uuid.uuid4().hex[:6]}")
        trust = self.dir / "issuers.json"
        trust.write_text(json.dumps(trust_document({ISSUER: [self.issuer_key]})))
        self.drop = self.dir / "drop"
        self.drop.mkdir(exist_ok=True)
        self.receiver_port, self.public_port = free_port(), free_port()
        self.receiver_url = f"http://127.0.0.1:{self.public_port}"
        self.proxy = FaultProxy(self.public_port, self.receiver_port) if proxy else None
        if self.proxy:  # a client killed mid-answer is the point here, not an error to print
            self.proxy.server.handle_error = lambda request, address: None
        if not proxy:
            self.receiver_port = self.public_port
        sdata = self.dir / "sender"
        sdata.mkdir(exist_ok=True)
        (sdata / "peer-token").write_text("not-yet-issued")
        self.sender_config = {
            "data_dir": str(sdata), "blob_key": new_master_key(), "trust_file": str(trust),
            "organization": SENDER_ORG, "port": free_port(),
            "sources": {"records": {"kind": "pdf-folder", "organization": SENDER_ORG,
                                    "endpoint": str(self.drop), "data_class": "notes",
                                    "options": {"path": str(self.drop)}}},
            "peers": {"center": {"base_url": self.receiver_url, "organization": RECEIVER_ORG,
                                 "token_file": str(sdata / "peer-token")}},
            "retry": {"base_delay_s": 0.2, "max_delay_s": 1.0, "max_attempts": 1000},
            "step_lease_s": 5, "reconcile_interval_s": 1, "checkpoint_interval_s": 5,
            "queue": f"faults-{uuid.uuid4().hex[:8]}",
        }
        if broker:
            self.sender_config["redis_url"] = broker
        if database_url:
            self.sender_config["database_url"] = database_url
        _merge(self.sender_config, sender or {})
        rdata = self.dir / "receiver"
        rdata.mkdir(exist_ok=True)
        self.receiver_config = {
            "data_dir": str(rdata), "blob_key": new_master_key(), "organization": RECEIVER_ORG,
            "mode": "receive", "port": self.receiver_port, "base_url": self.receiver_url,
            "receive_claim_s": 2.0,
            "senders": {"test-hospital": {"organization": SENDER_ORG,
                                          "jwks_file": str(self.dir / "sender-jwks.json")}}}
        if receiver_database_url:
            self.receiver_config["database_url"] = receiver_database_url
        _merge(self.receiver_config, receiver or {})
        self.with_beat = beat
        self.workers: list[Proc] = []
        self.beat: Proc | None = None
        self.receiver: Proc | None = None
        self.app = None
        self.expected: dict[str, set[str]] = {}  # transfer id -> documents' sha256

    # ---- lifecycle ---------------------------------------------------------------
    def start(self, receiver: bool = True) -> "Cluster":
        """Sender app, receiver (initialized, tokens issued; started unless told not to),
        the workers and the beat process."""
        from gateway import create_app

        self.app = create_app(self.sender_config)
        svc = self.app.extensions["gateway"]
        svc.keys.ensure()
        if "fax" in self.sender_config["sources"]:  # `init` makes it; workers need it to ingest
            from gateway.engine.faxes import ensure_cover_key

            ensure_cover_key(svc.settings.keys_dir)
        (self.dir / "sender-jwks.json").write_text(json.dumps(svc.keys.jwks()))
        self.client = self.app.test_client()
        self.operator = bearer(make_token(self.app, "operator"))
        rc = self.dir / "receiver-cli.json"
        rc.write_text(json.dumps(self.receiver_config))
        _cli(rc, "init")
        peer = _cli(rc, "token", "create", "--name", "test-hospital", "--role", "peer")
        (self.dir / "sender" / "peer-token").write_text(peer)
        self.receiver = Proc(self.receiver_config, self.dir, "receiver", "serve", "--receive")
        if self.proxy:
            self.proxy.start()
        if receiver:
            self.start_receiver()
        for n in range(self.n_workers):
            self.workers.append(Proc(self.sender_config, self.dir, f"worker-{n}",
                                     *self.worker_args).start())
        if self.with_beat:
            self.beat = Proc(self.sender_config, self.dir, "beat", "worker", "--beat",
                             "--concurrency", "1").start()
        return self

    def start_receiver(self) -> Proc:
        self.receiver.start().wait_http(60)
        return self.receiver

    def kill(self, proc: Proc, sig: int = signal.SIGKILL) -> float:
        """Kill a process (and its children) by its PID group; returns when it happened."""
        proc.kill(sig)
        return time.monotonic()

    def restart(self, proc: Proc) -> Proc:
        proc.restart()
        if proc is self.receiver:
            proc.wait_http(60)
        return proc

    def stop(self) -> None:
        stop_all([p for p in [*self.workers, self.beat, self.receiver] if p is not None])
        if self.proxy:
            self.proxy.stop()
        if self.app is not None:
            self.app.extensions["gateway"].close()

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- work --------------------------------------------------------------------
    def add_pacs(self, orthanc, scp_port: int, calling_aet: str = "GATEWAY") -> str:
        """A DICOM source "pacs" (an Orthanc of tests/dicom/dicom_peers.py that knows
        `calling_aet` at `scp_port`); the workers start with it. Returns its endpoint."""
        endpoint = f"dicom://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
        self.sender_config["sources"]["pacs"] = {
            "kind": "dicom", "organization": SENDER_ORG, "data_class": "imaging",
            "endpoint": endpoint,
            "options": {"host": "127.0.0.1", "port": orthanc.dicom_port,
                        "ae_title": orthanc.aet, "calling_aet": calling_aet,
                        "scp_port": scp_port, "scp_host": "127.0.0.1", "retrieve": "move"}}
        return endpoint

    def add_fax(self, file_settle_s: float = 0.5) -> Path:
        """A fax source "fax" (connectors.fax: drop folder, store, cover sheets matched
        by QR); the workers start with it. Returns the drop folder."""
        drop, store = self.dir / "fax-drop", self.dir / "fax-store"
        drop.mkdir(exist_ok=True)
        store.mkdir(exist_ok=True)
        self.sender_config["sources"]["fax"] = {
            "kind": "fax-drop", "organization": SENDER_ORG, "endpoint": str(drop),
            "options": {"drop": str(drop), "store": str(store), "settle_seconds": 0,
                        "file_settle_seconds": file_settle_s, "return_fax": "+1 555 0100"}}
        self.sender_config["fax_scan_interval_s"] = 0.5
        return drop

    def quarantined(self) -> list:
        """The fax source's quarantine: what it set aside, each with its reason."""
        from connectors.fax.review import ReviewQueue
        from connectors.fax.store import FaxStore

        store = self.sender_config["sources"]["fax"]["options"]["store"]
        return ReviewQueue(FaxStore(Path(store))).quarantined()

    def authorize(self, endpoints: list[dict] | None = None, **claims) -> str:
        """Import a signed authorization for the PDF folder (or `endpoints`) to the receiver."""
        from gateway.trust.authorizations import example_claims, sign_authorization

        endpoints = endpoints or [{"type": "pdf-folder", "address": str(self.drop)}]
        c = example_claims(
            ISSUER, f"auth-{uuid.uuid4().hex[:12]}",
            disclosers=[{"id": SENDER_ORG, "name": "Test Hospital", "endpoints": endpoints}],
            recipient={"id": RECEIVER_ORG, "name": "Test Center",
                       "endpoint": {"type": "gateway", "address": self.receiver_url}}, **claims)
        r = self.client.post("/authorizations", json={"jws": sign_authorization(c, self.issuer_key)},
                             headers=self.operator)
        assert r.status_code == 201, r.get_json()
        return r.get_json()["id"]

    def transfer(self, auth_id: str, documents: int = 1, source: str = "records") -> str:
        """Start a transfer; from the PDF folder, drop its documents (small PDFs)."""
        r = self.client.post("/transfers", json={"authorization": auth_id, "sources": [source],
                                                 "recipient": "center"}, headers=self.operator)
        assert r.status_code == 202, r.get_json()
        tid = r.get_json()["id"]
        self.expected[tid] = set()
        if source == "records":
            self.expected[tid] = set(write_pdfs(self.drop / tid, count=documents,
                                                patient=_patient(tid)))
        return tid

    def view(self, tid: str) -> dict:
        return self.client.get(f"/transfers/{tid}", headers=self.operator).get_json()

    def states(self) -> Counter:
        """How many of this cluster's transfers are in each state (one query)."""
        from sqlalchemy import select

        from gateway.storage.models import Transfer

        with self.app.extensions["gateway"].db.session() as s:
            rows = s.execute(select(Transfer.id, Transfer.state)).all()
        return Counter(state for tid, state in rows if tid in self.expected)

    def snapshot(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """Each transfer's state and the lease owners of its step and of its sources'
        pulls, in two queries."""
        from sqlalchemy import select

        from gateway.storage.models import Transfer, TransferSource

        with self.app.extensions["gateway"].db.session() as s:
            rows = s.execute(select(Transfer.id, Transfer.state, Transfer.lease_owner)).all()
            pulls = s.execute(select(TransferSource.transfer_id, TransferSource.lease_owner)
                              .where(TransferSource.lease_owner.is_not(None))).all()
        owners: dict[str, list[str]] = {}
        for tid, owner in pulls:
            owners.setdefault(tid, []).append(owner)
        return {tid: (state, tuple(filter(None, [owner, *owners.get(tid, [])])))
                for tid, state, owner in rows if tid in self.expected}

    def held_by(self, proc: Proc) -> dict[str, str]:
        """The transfers whose step or source pull `proc` holds (a lease owner is
        host:PID:claim), by state."""
        return {tid: state for tid, (state, owners) in self.snapshot().items()
                if state not in TERMINAL
                and any(o.split(":")[1:2] == [str(proc.pid)] for o in owners)}

    def busiest_worker(self, within: float) -> tuple[Proc, dict[str, str]]:
        """Within `within` seconds, the first moment a worker holds steps: that worker and
        what it holds (a kill should land on work in hand); else a random worker."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            held = [(w, self.held_by(w)) for w in self.workers]
            w, h = max(held, key=lambda pair: len(pair[1]))
            if h:
                return w, h
            time.sleep(0.02)
        w = random.choice(self.workers)
        return w, self.held_by(w)

    def wait_states(self, states: set[str], timeout: float = 300, tids=None) -> Counter:
        """Wait until every transfer (or those of `tids`) is in one of `states`."""
        from sqlalchemy import select

        from gateway.storage.models import Transfer

        want = set(tids or self.expected)

        def done():
            with self.app.extensions["gateway"].db.session() as s:
                rows = s.execute(select(Transfer.id, Transfer.state)
                                 .where(Transfer.id.in_(want))).all()
            return all(state in states for _, state in rows) and Counter(st for _, st in rows)

        return wait_until(done, timeout, 0.5, f"{len(want)} transfer(s) to reach {sorted(states)}")

    def running_tasks(self) -> set[str]:
        """Ids of the tasks the living sending workers took and have not finished (read
        from their logs: a step that lost its lease may still be running)."""
        import re

        running = set()
        for proc in self._senders():
            if not proc.alive:
                continue
            text = proc.log_text()
            running |= (set(re.findall(r"Task [\w.]+\[([\w-]+)\] received", text))
                        - set(re.findall(r"Task [\w.]+\[([\w-]+)\] (?:succeeded|raised|retry)",
                                         text)))
        return running

    def redelivered(self) -> list[str]:
        """Ids of the tasks the broker handed to the sending workers more than once."""
        import re

        seen = Counter()
        for proc in self._senders():
            if proc.log_path.exists():
                seen.update(re.findall(r"Task [\w.]+\[([\w-]+)\] received",
                                       proc.log_path.read_text(errors="replace")))
        return [task for task, n in seen.items() if n > 1]

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until no sending worker runs a task (counts are final only then)."""
        wait_until(lambda: not self.running_tasks(), timeout, 0.2, "the workers to be idle")

    def bundle_states(self, tid: str) -> list[str]:
        from sqlalchemy import select

        from gateway.storage.models import TransferBundle

        with self.app.extensions["gateway"].db.session() as s:
            return list(s.scalars(select(TransferBundle.state).filter_by(transfer_id=tid)
                                  .order_by(TransferBundle.part)))

    def holder(self, tid: str) -> "Proc | None":
        """The process whose worker holds the transfer's lease (from the owner's PID)."""
        from gateway.storage.models import Transfer

        with self.app.extensions["gateway"].db.session() as s:
            owner = s.get(Transfer, tid).lease_owner
        pid = (owner or "::").split(":")[1]
        return next((p for p in self._senders() if p.alive and str(p.pid) == pid), None)

    def _senders(self) -> list[Proc]:
        """The sending side's worker processes, the beat process among them if any."""
        return [p for p in (*self.workers, self.beat) if p is not None]

    def replay(self, tid: str) -> dict:
        r = self.client.post(f"/transfers/{tid}/replay", headers=self.operator)
        assert r.status_code == 200, r.get_json()
        return r.get_json()

    def unacked(self, tid: str) -> list[str]:
        """Redis broker: the step messages of a transfer delivered to a worker and not
        acknowledged (Celery acks late: these are delivered again)."""
        import redis

        conn = redis.Redis.from_url(self.sender_config["redis_url"])
        out = []
        for raw in conn.hgetall("unacked").values():
            message, _exchange, routing_key = json.loads(raw)
            if routing_key != self.sender_config["queue"]:
                continue
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body).decode()
            args = json.loads(body)[0]
            if args and args[0] == tid:
                out.append(args[1])
        conn.close()
        return out

    def events(self, type_: str, transfer_id: str | None = None) -> list:
        from sqlalchemy import select

        from gateway.storage.models import AuditEvent

        with self.app.extensions["gateway"].db.session() as s:
            q = select(AuditEvent).filter_by(type=type_).order_by(AuditEvent.seq)
            if transfer_id:
                q = q.filter_by(transfer_id=transfer_id)
            return s.scalars(q).all()

    # ---- what the recipient holds ------------------------------------------------
    def recipient(self) -> Recipient:
        """Count what the receiver stored: accepted bundles per idempotency key and per
        (submission group, part), the documents inside each (inline Binaries and bound
        uploads, by sha256), uploads and DICOM instances bound or not."""
        from sqlalchemy import select

        from gateway.config import Settings
        from gateway.exchange import jsontext
        from gateway.storage.blobstore import BlobStore, load_master_key
        from gateway.storage.db import Database
        from gateway.storage.models import ReceivedBinary, ReceivedBundle, ReceivedInstance

        settings = Settings(**self.receiver_config)
        secret = settings.blob_key.get_secret_value() if settings.blob_key else None
        key = load_master_key(secret, settings.blob_key_path)
        db, blobs = Database(settings.db_url, key), BlobStore(settings.blobs_dir, key)
        try:
            with db.session() as s:
                bundles = s.scalars(select(ReceivedBundle)).all()
                uploads = s.scalars(select(ReceivedBinary)).all()
                instances = s.scalars(select(ReceivedInstance)).all()
        finally:
            db.dispose()
        accepted = [b for b in bundles if b.state == "accepted"]
        by_bundle: dict[str, list] = {}
        for u in uploads:
            by_bundle.setdefault(u.bundle_id, []).append(u)
        documents: dict[str, Counter] = {}
        for b in accepted:
            held = documents.setdefault(b.idempotency_key, Counter())
            bundle = jsontext.loads(blobs.read_bytes(b.blob_key))
            for binary in record_binaries(bundle):
                if "data" in binary:
                    held[hashlib.sha256(base64.b64decode(binary["data"])).hexdigest()] += 1
            for u in by_bundle.get(b.id, []):
                held[u.sha256] += 1
        return Recipient(
            bundles=Counter(b.idempotency_key for b in accepted),
            parts=Counter((b.submission_group or b.idempotency_key, b.part) for b in accepted),
            documents=documents,
            uploads_bound=Counter(u.sha256 for u in uploads if u.bundle_id),
            uploads_unbound=sum(1 for u in uploads if not u.bundle_id),
            instances=Counter(i.sop_instance_uid for i in instances),
            instances_unbound=sum(1 for i in instances if not i.bundle_id),
            processing=sum(1 for b in bundles if b.state != "accepted"))

    def receiver_blobs(self):
        """The receiver's blob store (to count or sweep what it left on disk)."""
        from gateway.config import Settings
        from gateway.storage.blobstore import BlobStore, load_master_key

        settings = Settings(**self.receiver_config)
        secret = settings.blob_key.get_secret_value() if settings.blob_key else None
        return BlobStore(settings.blobs_dir, load_master_key(secret, settings.blob_key_path))

    def tally(self) -> Tally:
        return self.recipient().tally(self.expected)


def private_redis_db(url: str) -> str:
    """`url` on a Redis database of its own (8-15). Kombu restores every message of its
    database unacknowledged past *its* visibility timeout, whatever the queue: a short
    timeout on a shared database would redeliver other gateways' running steps."""
    import random

    return f"{url.rstrip('/')}/{random.randint(8, 15)}"


def _patient(tid: str) -> dict:
    """A synthetic patient per transfer, so each transfer's documents differ in bytes."""
    return {"name": {"family": "Testperson", "given": [f"T{tid[:8]}"]}, "birthDate": "1970-01-01"}


def _merge(base: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
