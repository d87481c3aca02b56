"""Benchmark: the standard case end to end, on the embedded default and distributed (issue 16).

    python bench/e2e.py [--cases 30] [--instances 300] [--throughput-instances N]
                        [--rows 128] [--rounds 3] [--skip-throughput]

The standard case: one patient with a Synthea record (the generated patient closest to
3,000 resources, on sekmet-fhir), a generated 300-instance CT study in Orthanc (pydicom,
small pixel data), and 10 faxes in the fax drop folder, each the gateway's own cover
sheet and two pages of records (tests/fax/faxgen.py), delivered to a receiving gateway
(the bundle, and the study by STOW-RS) with a verified receipt. Processes and peers are
those of tests/faults/harness.py (a Cluster: the sending gateway's processes, a
receiving gateway process) and tests/{fhir,dicom} (sekmet, Orthanc); the API runs as its
own process (`serve`), and every case goes in through it over HTTP.

1. Latency, authorization in -> verified receipt: the clock starts just before the
   signed authorization is POSTed; the transfer is started for the three sources, its
   cover sheet fetched and the faxes dropped at once; it stops at the sender's
   `transfer.receipt.verified` audit event. Embedded default: one `serve` process (API,
   worker, beat), SQLite, the embedded broker, C-MOVE into the worker's Storage SCP.
   Distributed: Redis, PostgreSQL (both sides), an API process, 2 workers and a beat
   process, C-GET (worker processes cannot share one C-MOVE port). Where the time went
   is printed from the transfer's audit events (each step's start and end).
2. Floors, in the same run, one after another (medians of --rounds): dcmtk `movescu`
   of the study; `storescu` of it to the receiving side's archive (a second Orthanc); a
   bare paging fetch of the FHIR record (patient search, then $everything page by page,
   parsed with orjson); a copy of the 10 fax PDFs (fsync each); a plain POST of the
   delivered bundle's bytes to a sink. latency_ratio = latency / sum of the floors
   (target <= 1.5).
3. Throughput: --cases cases submitted at once (each its own authorization, study and
   faxes) to the distributed setup with 1, then 2 worker processes (plus the beat
   process, which also takes steps): cases per minute from the first submission to
   the last verified receipt; CPU seconds per case = CPU of the worker and beat
   processes (each process group's user + system time, children included, from
   /proc/PID/stat) over the window, divided by the cases completed (target: 2 workers
   within 1.15x of 1 worker); lock waits = PostgreSQL sessions of either side's
   database seen in pg_stat_activity with wait_event_type = 'Lock', sampled every
   0.1 s (seconds = samples x 0.1, by wait event and statement); peak RSS per process
   type (api, worker, beat, receiver) = the largest VmHWM of that type's processes.

Writes bench/results/e2e.json and docs/e2e.md (the table the README shows). The last
line is one JSON object: latency_ratio_embedded, latency_ratio_distributed,
cases_per_min_1w, cases_per_min_2w, cpu_s_per_case_ratio_2w_1w, peak_rss_mb_max, ...
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from bench.e2e_world import FAXES, PACS_SYSTEM, SCP_AET, Probe, World, dump, floors, say  # noqa: E402
from gateway.storage.models import AuditEvent, Item, Transfer  # noqa: E402
from tests.faults.harness import TERMINAL, Cluster, Proc, private_redis_db  # noqa: E402
from tests.helpers import (  # noqa: E402
    ISSUER,
    PG_ADMIN,
    RECEIVER_ORG,
    REDIS_URL,
    SENDER_ORG,
    throwaway_database,
    wait_until,
)

RESULTS = ROOT / "bench" / "results" / "e2e.json"
FLOORS = ("movescu", "storescu", "fhir_fetch", "pdf_copy", "bundle_post")
DOC = ROOT / "docs" / "e2e.md"
README = ROOT / "README.md"


class Setup:
    """A sending and a receiving gateway on loopback, the API as its own process."""

    def __init__(self, world: World, work: Path, kind: str, workers: int = 2):
        self.world, self.kind, self.work = world, kind, work
        self.fax_dir, self.exits = work / "fax-in", ExitStack()
        self.fax_dir.mkdir(parents=True)
        (work / "fax-store").mkdir()
        distributed = kind == "distributed"
        self.sender_db = self.receiver_db = None
        extra = {"sources": self._sources("get" if distributed else "move")}
        if distributed:
            self.sender_db = self.exits.enter_context(throwaway_database("gw_e2e"))
            self.receiver_db = self.exits.enter_context(throwaway_database("gw_e2e"))
        self.cluster = Cluster(work / "cluster", workers=workers if distributed else 0,
                               beat=distributed, sender=extra,
                               broker=private_redis_db(REDIS_URL) if distributed else None,
                               database_url=self.sender_db, receiver_database_url=self.receiver_db)
        # the gateway's own timing defaults (the harness shortens some for fault tests)
        for key in ("retry", "step_lease_s", "reconcile_interval_s", "checkpoint_interval_s"):
            self.cluster.sender_config.pop(key, None)
        self.cluster.receiver_config.pop("receive_claim_s", None)

    def _sources(self, retrieve: str) -> dict:
        w, org = self.world, SENDER_ORG
        return {
            "ehr": {"kind": "fhir-rest", "organization": org, "endpoint": w.sekmet.base_url, "auto": "start",
                    "options": {"base_url": w.sekmet.base_url, "auth": {"type": "none"}}},
            "pacs": {"kind": "dicom", "organization": org, "data_class": "imaging", "auto": "start",
                     "endpoint": self.pacs_endpoint,
                     "options": {"host": "127.0.0.1", "port": w.orthanc.dicom_port,
                                 "ae_title": w.orthanc.aet, "calling_aet": SCP_AET,
                                 "scp_port": w.scp_port, "scp_host": "127.0.0.1",
                                 "retrieve": retrieve, "patient_id_systems": [PACS_SYSTEM]}},
            "fax": {"kind": "fax-drop", "organization": org, "endpoint": str(self.fax_dir), "auto": "start",
                    # the 10 faxes come together: the pull waits 1 s after the last
                    "options": {"drop": str(self.fax_dir), "store": str(self.work / "fax-store"),
                                "settle_seconds": 1, "file_settle_seconds": 0.3,
                                "return_fax": "+1 555 0100"}}}

    @property
    def pacs_endpoint(self) -> str:
        return f"dicom://{self.world.orthanc.aet}@127.0.0.1:{self.world.orthanc.dicom_port}"

    def start(self) -> "Setup":
        from gateway.engine.faxes import ensure_cover_key

        ensure_cover_key(Path(self.cluster.sender_config["data_dir"]) / "keys")
        self.cluster.start()
        stop_on_signals()  # the in-process app may have taken SIGINT
        args = ("serve",) if self.kind == "embedded" else ("serve", "--no-worker")
        self.api = Proc(self.cluster.sender_config, self.cluster.dir, "api", *args).start()
        self.api.wait_http(90)
        if self.kind != "embedded":  # the clock starts once every worker takes tasks (after
            self._wait_workers()     # its warm-up), as in a deployment that is running
        self.url = f"http://127.0.0.1:{self.cluster.sender_config['port']}"
        self.http = requests.Session()
        self.http.headers.update(self.cluster.operator)
        return self

    def _wait_workers(self) -> None:
        from gateway.runtime.celery_app import celery

        want = len(self.cluster.workers) + (self.cluster.beat is not None)
        wait_until(lambda: len(celery.control.ping(timeout=0.5)) >= want, 180, 0.2,
                   f"{want} worker process(es) to answer a ping")
        say(f"{want} worker process(es) take tasks")

    def procs(self) -> dict[str, list]:
        c = self.cluster
        if self.kind == "embedded":  # one process: API, worker and beat
            return {"api+worker+beat": [self.api], "receiver": [c.receiver]}
        return {"api": [self.api], "worker": list(c.workers), "beat": [c.beat],
                "receiver": [c.receiver]}

    def submit(self, case: int) -> tuple[str, float]:
        """One case in through the API: the authorization (its routing rules start the
        case's first transfer, every source being auto = start), then the provider's
        faxes behind that transfer's cover sheet. Returns (authorization id, when it went in)."""
        from gateway.trust.authorizations import example_claims, sign_authorization

        w = self.world
        name = w.patient["name"][0]
        claims = example_claims(
            ISSUER, f"auth-{uuid.uuid4().hex[:12]}",
            patient={"name": {"family": name["family"], "given": name.get("given", ["X"])},
                     "birthDate": w.patient["birthDate"], "identifiers": w.identifiers(case)},
            disclosers=[{"id": SENDER_ORG, "name": "Test Hospital", "endpoints": [
                {"type": "fhir", "address": w.sekmet.base_url},
                {"type": "dicom", "address": self.pacs_endpoint},
                {"type": "fax", "address": str(self.fax_dir)}]}],
            recipient={"id": RECEIVER_ORG, "name": "Test Center",
                       "endpoint": {"type": "gateway", "address": self.cluster.receiver_url}})
        jws = sign_authorization(claims, self.cluster.issuer_key)  # the e-sign service's part
        t0 = time.time()
        r = self.http.post(f"{self.url}/authorizations", json={"jws": jws}, timeout=60)
        assert r.status_code == 201, r.text[:500]
        auth_id = r.json()["id"]
        tid = self._first_transfer(auth_id)
        cover = self.http.get(f"{self.url}/transfers/{tid}/cover-sheet", timeout=60)
        assert cover.status_code == 200, cover.text[:500]
        w.drop_faxes(case, cover.content, self.fax_dir)
        return auth_id, t0

    def _first_transfer(self, auth_id: str) -> str:
        with self.db.session() as s:
            return s.scalars(select(Transfer.id).filter_by(authorization_id=auth_id)
                             .order_by(Transfer.created_at)).first()

    @property
    def db(self):
        return self.cluster.app.extensions["gateway"].db

    def delivered(self, auth_ids: list[str]) -> dict[str, dict]:
        """Per case: its transfers' states, and the faxes and DICOM instances of its
        completed transfers (the first transfer and the follow-ups that took late faxes)."""
        out = {a: {"states": [], "fax": 0, "dicom": 0, "tids": []} for a in auth_ids}
        with self.db.session() as s:
            rows = s.execute(select(Transfer.id, Transfer.authorization_id, Transfer.state)
                             .where(Transfer.authorization_id.in_(auth_ids))).all()
            owner = {tid: auth for tid, auth, _ in rows}
            for tid, auth, state in rows:
                out[auth]["states"].append(state)
                out[auth]["tids"].append(tid)
            done = [tid for tid, _, state in rows if state == "completed"]
            for tid, kind, n in s.execute(
                    select(Item.transfer_id, Item.kind, func.count()).where(
                        Item.transfer_id.in_(done), Item.kind.in_(("fax", "dicom")),
                        Item.state == "mapped").group_by(Item.transfer_id, Item.kind)).all():
                out[owner[tid]][kind] += n
        return out

    def wait(self, cases: dict[str, int], timeout: float) -> dict[str, dict]:
        """Until every case has all its faxes and its study delivered by completed
        transfers and no transfer in flight (or one failed)."""
        def finished(d: dict, case: int) -> bool:
            settled = d["states"] and all(st in TERMINAL for st in d["states"])
            whole = d["fax"] >= len(self.world.faxes[case]) and d["dicom"] >= len(self.world.studies[case].files)
            return settled and (whole or any(st != "completed" for st in d["states"]))

        def done():
            now = self.delivered(list(cases))
            return all(finished(now[a], k) for a, k in cases.items()) and now

        try:
            return wait_until(done, timeout, 1.0, f"{len(cases)} case(s) to be delivered")
        except AssertionError as exc:
            say(str(exc))
            return self.delivered(list(cases))

    def events(self, tids: list[str]) -> list[tuple[str, float, dict]]:
        """The audit events of these transfers: (type, epoch seconds, detail), in log order."""
        with self.db.session() as s:
            return [(e.type, _epoch(e.at), e.detail or {}) for e in s.scalars(
                select(AuditEvent).where(AuditEvent.transfer_id.in_(tids)).order_by(AuditEvent.seq))]

    def check(self, d: dict, case: int) -> list[str]:
        """What is missing from a case (empty: all of it delivered with verified receipts)."""
        problems = [st for st in d["states"] if st != "completed"]
        want = len(self.world.studies[case].files)
        if d["dicom"] != want:
            problems.append(f"{d['dicom']} instances delivered, not {want}")
        if d["fax"] != len(self.world.faxes[case]):
            problems.append(f"{d['fax']} faxes delivered, not {len(self.world.faxes[case])}")
        return problems

    def bundles(self) -> list[bytes]:
        """The bundles the receiver accepted, as stored (for the plain POST floor)."""
        from gateway.config import Settings
        from gateway.storage.blobstore import load_master_key
        from gateway.storage.db import Database
        from gateway.storage.models import ReceivedBundle

        blobs = self.cluster.receiver_blobs()
        settings = Settings(**self.cluster.receiver_config)
        secret = settings.blob_key.get_secret_value() if settings.blob_key else None
        db = Database(settings.db_url, load_master_key(secret, settings.blob_key_path))
        try:
            with db.session() as s:
                keys = s.scalars(select(ReceivedBundle.blob_key)
                                 .where(ReceivedBundle.state == "accepted")).all()
        finally:
            db.dispose()
        return [blobs.read_bytes(k) for k in keys]

    def stop(self) -> None:
        if getattr(self, "api", None) is not None:
            self.api.stop()
        self.cluster.stop()
        self.exits.close()


def stop_on_signals() -> None:
    """SIGINT and SIGTERM end the run through its `finally` blocks, which stop by PID
    every process it started."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def _epoch(at: datetime) -> float:
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


def timeline(events: list[tuple[str, float, dict]], t0: float) -> list[tuple[str, float, float]]:
    """(event type, seconds since the authorization went in, seconds since the previous
    event) for one transfer."""
    out, last = [], t0
    for kind, at, detail in events:
        if detail.get("source") and kind.startswith("transfer.pull"):
            kind = f"{kind} ({detail['source']})"
        out.append((kind, round(at - t0, 2), round(at - last, 2)))
        last = at
    return out


def verified_at(events: list[tuple[str, float, dict]]) -> float | None:
    """When the last receipt of the case was verified."""
    return max((at for kind, at, _ in events if kind == "transfer.receipt.verified"), default=None)


# -- the three parts -----------------------------------------------------------------------
def latency(world: World, root: Path, kind: str, keep_bundle: bool) -> tuple[dict, list[bytes]]:
    setup = Setup(world, root / f"latency-{kind}", kind).start()
    probe = Probe(setup.procs()).start()
    try:
        say(f"{kind}: submitting the standard case")
        auth, t0 = setup.submit(world.latency_case)
        d = setup.wait({auth: world.latency_case}, 900)[auth]
        probe.stop()
        events = setup.events(d["tids"])
        problems = setup.check(d, world.latency_case)
        end = verified_at(events)
        steps = timeline(events, t0)
        for kind_, since, delta in steps:
            say(f"  +{since:7.2f} s  (+{delta:6.2f})  {kind_}")
        say("  where the time went: " + "; ".join(f"{what.strip()} {secs} s" for what, secs in phases(steps)))
        value = round(end - t0, 2) if end and not problems else None
        say(f"{kind}: authorization in -> verified receipt {value} s ({len(d['tids'])} transfer(s))"
            + (f"; PROBLEMS: {problems}" if problems else ""))
        cpu = {k: round(v, 2) for k, v in probe.used().items()}
        say(f"{kind}: CPU seconds by process: " + ", ".join(f"{k} {v}" for k, v in cpu.items()))
        bundles = setup.bundles() if keep_bundle else []
        return {"latency_s": value, "problems": problems, "transfers": len(d["tids"]),
                "steps": steps, "cpu_s": cpu,
                "peak_rss_mb": probe.peak_mb()}, bundles
    finally:
        setup.stop()
        shutil.rmtree(root / f"latency-{kind}", ignore_errors=True)


def throughput(world: World, root: Path, cases: int, workers: int) -> dict:
    setup = Setup(world, root / f"throughput-{workers}w", "distributed", workers).start()
    dbs = [url.rsplit("/", 1)[1] for url in (setup.sender_db, setup.receiver_db)]
    probe = Probe(setup.procs(), dbs, PG_ADMIN).start()
    try:
        say(f"throughput, {workers} worker(s): submitting {cases} cases at once")
        submitted = {}
        for k in range(cases):
            auth, t0 = setup.submit(k)
            submitted[auth] = (k, t0)
        first = min(t0 for _, t0 in submitted.values())
        say(f"  submitted in {time.time() - first:.1f} s; waiting for the receipts")
        state = setup.wait({a: k for a, (k, _) in submitted.items()}, 3600)
        probe.stop()
        events = {a: setup.events(state[a]["tids"]) for a in submitted}
        problems = {a[-8:]: p for a, (k, _) in submitted.items() if (p := setup.check(state[a], k))}
        done = [a for a in submitted if a[-8:] not in problems]
        ends = {a: verified_at(events[a]) for a in done}
        window = max(ends.values()) - first if done else None
        used = probe.used()
        work_cpu = used.get("worker", 0.0) + used.get("beat", 0.0)
        lat = sorted(ends[a] - submitted[a][1] for a in done)
        out = {
            "workers": workers, "cases": cases, "completed": len(done), "problems": problems,
            "transfers": sum(len(state[a]["tids"]) for a in submitted),
            "window_s": round(window, 1) if window else None,
            "cases_per_min": round(len(done) / window * 60, 2) if window else None,
            "cpu_s": {k: round(v, 1) for k, v in used.items()},
            "cpu_s_per_case": round(work_cpu / len(done), 2) if done else None,
            "lock_wait_s": probe.lock_wait_s(), "lock_wait": probe.lock_detail(),
            "peak_rss_mb": probe.peak_mb(),
            "latency_median_s": round(statistics.median(lat), 1) if lat else None,
            "latency_max_s": round(lat[-1], 1) if lat else None,
            "step_medians_s": step_medians([timeline(events[a], submitted[a][1]) for a in done]),
            "fax_ingest": ingest_rate([e for a in submitted for e in events[a]], first),
        }
        say(f"  {len(done)}/{cases} completed in {out['window_s']} s ({out['transfers']} transfers): "
            f"{out['cases_per_min']} cases/min, {out['cpu_s_per_case']} CPU s per case (workers + beat), "
            f"lock waits {out['lock_wait_s']} s, peak RSS {out['peak_rss_mb']}")
        say(f"  CPU s by process type {out['cpu_s']}; faxes ingested {out['fax_ingest']}")
        say(f"  median time before each first event of a case: {out['step_medians_s']}")
        if problems:
            say(f"  PROBLEMS: {problems}")
        return out
    finally:
        setup.stop()
        shutil.rmtree(root / f"throughput-{workers}w", ignore_errors=True)


def ingest_rate(events: list[tuple[str, float, dict]], first: float) -> dict:
    """How the faxes were taken in: matched, from the first submission to the last match."""
    at = sorted(t for kind, t, _ in events if kind == "fax.matched")
    if not at:
        return {"matched": 0}
    return {"matched": len(at), "last_s": round(at[-1] - first, 1),
            "per_min": round(len(at) / max(at[-1] - first, 1e-3) * 60, 1)}


PHASES = (  # (what, the event that starts it, the event that ends it), from the audit log
    ("pull, all sources", "transfer.state.pulling", "transfer.state.mapping"),
    ("  FHIR record", "transfer.pull.started (ehr)", "transfer.pull.finished (ehr)"),
    ("  CT study", "transfer.pull.started (pacs)", "transfer.pull.finished (pacs)"),
    ("mapping", "transfer.state.mapping", "transfer.mapping.finished"),
    ("bundle assembly", "transfer.state.assembling", "transfer.bundle.assembled"),
    ("study by STOW-RS", "transfer.dicom.forward.started", "transfer.dicom.forward.finished"),
    ("bundle delivery (until the receipt comes)", "transfer.delivery.attempt", "transfer.delivery.sent"),
    ("fax intake, cover sheet to the last fax matched", "fax.cover_sheet", "fax.matched*"),
    ("late faxes: first transfer done to the last receipt", "transfer.completed",
     "transfer.receipt.verified*"),
)


def phases(steps: list) -> list[tuple[str, float]]:
    """Seconds of each phase of PHASES in one case's timeline (an end marked * is the
    last of its kind, else the first after the start)."""
    out = []
    for what, start, end in PHASES:
        t0 = next((since for kind, since, _ in steps if kind == start), None)
        if t0 is None:
            continue
        ends = [since for kind, since, _ in steps if kind == end.rstrip("*") and since >= t0]
        if ends:
            out.append((what, round((ends[-1] if end.endswith("*") else ends[0]) - t0, 2)))
    return out


def step_medians(timelines: list[list[tuple[str, float, float]]]) -> dict[str, float]:
    """Median time spent before each kind of event (its first occurrence per transfer)."""
    spent: dict[str, list[float]] = {}
    for steps in timelines:
        seen = set()
        for kind, _, delta in steps:
            if kind not in seen:
                seen.add(kind)
                spent.setdefault(kind, []).append(delta)
    return {k: round(statistics.median(v), 2) for k, v in spent.items()}


# -- output --------------------------------------------------------------------------------
def machine() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                  if ln.startswith("model name")), platform.processor() or "unknown")
    mem = int(next(ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal")))
    return {"cores": os.cpu_count(), "ram_gb": round(mem / 1024 / 1024, 1), "cpu": model,
            "python": platform.python_version()}


def table(r: dict) -> str:
    f, m = r.get("floors_s") or dict.fromkeys(FLOORS, 0.0), r["machine"]
    lines = [
        f"`{r.get('command', 'python bench/e2e.py')}` on {m['cores']} cores, {m['ram_gb']} GB RAM, "
        f"{m['cpu']}; load average "
        f"{r['load_avg_start']} at the start, {r['load_avg_end']} at the end. Case: "
        f"{r['resources']} FHIR resources, {r['instances']}-instance CT study "
        f"({r['rows']}x{r['rows']}), {FAXES} faxes with cover sheets.",
        "",
        "| latency, authorization in -> verified receipt | seconds | x sum of floors (target <= 1.5) |",
        "| --- | --- | --- |",
    ]
    for kind in ("embedded", "distributed"):
        x = r["latency"].get(kind) or {}
        lines.append(f"| {kind} | {x.get('latency_s')} | {r.get(f'latency_ratio_{kind}')} |")
    lines.append(f"| floors: movescu {f['movescu']:.2f} + storescu {f['storescu']:.2f} + FHIR fetch "
                 f"{f['fhir_fetch']:.2f} + PDF copy {f['pdf_copy']:.3f} + bundle POST "
                 f"{f['bundle_post']:.3f} | {r.get('floors_sum_s')} | 1 |")
    lines += ["", "| throughput (distributed) | cases | cases/min | CPU s/case | lock waits s "
              "| peak RSS MB (api / worker / beat / receiver) | median latency s |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for t in r["throughput"]:
        p = t["peak_rss_mb"]
        lines.append(f"| {t['workers']} worker(s) | {t['completed']}/{t['cases']} "
                     f"({r['throughput_instances']} instances, {r['throughput_faxes']} faxes) | "
                     f"{t['cases_per_min']} | "
                     f"{t['cpu_s_per_case']} | {t['lock_wait_s']} | {p.get('api')} / {p.get('worker')} / "
                     f"{p.get('beat')} / {p.get('receiver')} | {t['latency_median_s']} |")
    lines.append("")
    lines.append(f"CPU s per case with 2 workers / with 1: {r.get('cpu_s_per_case_ratio_2w_1w')} "
                 "(target <= 1.15).")
    return "\n".join(lines)


def write_docs(r: dict) -> None:
    emb, dist = (phases((r["latency"].get(k) or {}).get("steps", [])) for k in ("embedded", "distributed"))
    DOC.write_text(
        "# End to end: latency and throughput\n\n"
        "`python bench/e2e.py` (its docstring says what is measured and how). The standard\n"
        "case: one patient's Synthea record on sekmet-fhir, a CT study in Orthanc, 10 faxes\n"
        "with cover sheets in the drop folder, delivered to a receiving gateway (the bundle,\n"
        "the study by STOW-RS) with a verified receipt. Floors are plain tools doing each\n"
        "part alone, one after another, in the same run.\n\n"
        f"Latest run ({r['date']}):\n\n" + table(r) + "\n\n"
        "## Where the time goes\n\n"
        "Phases of the standard case, from the transfers' audit events (they overlap: the\n"
        "sources are pulled side by side, the faxes are taken in while the rest goes on):\n\n"
        "| phase | embedded s | distributed s |\n| --- | --- | --- |\n" + "\n".join(
            f"| {what} | {secs} | {dict(dist).get(what)} |" for what, secs in emb) + "\n\n"
        "The embedded case's audit events (seconds since the authorization went in, and\n"
        "since the event before):\n\n" + "\n".join(
            f"- +{since} (+{delta}) {kind}" for kind, since, delta in
            (r["latency"].get("embedded") or {}).get("steps", [])) + "\n")
    start, end = "<!-- e2e:start -->", "<!-- e2e:end -->"
    text = README.read_text()
    block = (f"{start}\n## End-to-end performance\n\n{table(r)}\n\nFrom `python bench/e2e.py`; "
             f"[docs/e2e.md](docs/e2e.md) has the details.\n{end}")
    if start in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.replace("## Layout", block + "\n\n## Layout", 1)
    README.write_text(text)


def latency_and_floors(world: World, root: Path, rounds: int, result: dict) -> None:
    result["latency"]["embedded"], bundles = latency(world, root, "embedded", True)
    body = b"".join(bundles)
    say(f"floors ({rounds} rounds each, medians; the delivered bundle is {len(body) / 1e6:.1f} MB)")
    fl = floors(world, world.latency_case, body, rounds)
    result["floors_s"] = {k: round(v, 3) for k, v in fl.items()}
    result["floors_sum_s"] = round(sum(fl.values()), 2)
    result["bundle_mb"] = round(len(body) / 1e6, 2)
    say("  " + ", ".join(f"{k} {v:.2f} s" for k, v in fl.items()) + f"; sum {sum(fl.values()):.2f} s")
    result["latency"]["distributed"], _ = latency(world, root, "distributed", False)
    for kind in ("embedded", "distributed"):
        lat = result["latency"][kind]["latency_s"]
        result[f"latency_ratio_{kind}"] = round(lat / sum(fl.values()), 2) if lat else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=30, help="cases in the throughput part")
    ap.add_argument("--instances", type=int, default=300, help="instances of the latency study")
    ap.add_argument("--throughput-instances", type=int, default=60,
                    help="instances per study in the throughput part")
    ap.add_argument("--throughput-faxes", type=int, default=2, help="faxes per throughput case")
    ap.add_argument("--rows", type=int, default=128, help="pixel rows and columns of the CT images")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each floor (median)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-latency", action="store_true", help="(and the floors)")
    ap.add_argument("--no-write", action="store_true", help="do not write the results and docs")
    ap.add_argument("--docs-only", action="store_true",
                    help="write docs/e2e.md and the README's table from bench/results/e2e.json")
    args = ap.parse_args()
    if args.docs_only:
        return write_docs(json.loads(RESULTS.read_text()))
    t_instances = args.throughput_instances
    stop_on_signals()
    root = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    say(f"working in {root}; {shutil.disk_usage(root).free / 1e9:.0f} GB free there")
    started, load_start = time.monotonic(), round(os.getloadavg()[0], 2)
    world = World(root / "world", 0 if args.skip_throughput else args.cases, args.instances,
                  t_instances, args.throughput_faxes, args.rows)
    result: dict = {"machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "instances": args.instances, "throughput_instances": t_instances,
                    "throughput_faxes": args.throughput_faxes,
                    "rows": args.rows, "load_avg_start": load_start, "latency": {}, "throughput": [],
                    "command": " ".join(["python bench/e2e.py", *sys.argv[1:]])}
    try:
        world.start()
        result["resources"] = world.resources
        if not args.skip_latency:
            latency_and_floors(world, root, args.rounds, result)
            if not args.no_write:
                dump(RESULTS, result)  # what is measured so far, should the rest not finish
        if not args.skip_throughput:
            if (t_instances, args.throughput_faxes) != (args.instances, FAXES):
                say(f"throughput cases are smaller than the standard case: {t_instances}-instance "
                    f"studies and {args.throughput_faxes} fax(es) each, so that both runs end in minutes "
                    "(faxes are taken in one at a time, in the beat process; the latency part "
                    "shows how long 10 take)")
            for workers in (1, 2):
                result["throughput"].append(throughput(world, root, args.cases, workers))
                if not args.no_write:
                    dump(RESULTS, result)
    finally:
        world.stop()
        shutil.rmtree(root, ignore_errors=True)
    tp = {t["workers"]: t for t in result["throughput"]}
    c1, c2 = (tp.get(n, {}).get("cpu_s_per_case") for n in (1, 2))
    peaks = [v for run in [*result["latency"].values(), *result["throughput"]]
             for v in run["peak_rss_mb"].values()]
    result.update({
        "cases_per_min_1w": tp.get(1, {}).get("cases_per_min"),
        "cases_per_min_2w": tp.get(2, {}).get("cases_per_min"),
        "cpu_s_per_case_ratio_2w_1w": round(c2 / c1, 3) if c1 and c2 else None,
        "peak_rss_mb_max": max(peaks) if peaks else None,
        "load_avg_end": round(os.getloadavg()[0], 2),
        "elapsed_s": round(time.monotonic() - started),
    })
    if not args.skip_throughput and result["throughput"]:
        say(table(result))
    if not args.no_write and not args.skip_throughput:
        dump(RESULTS, result)
        write_docs(result)  # again from the JSON alone: python bench/e2e.py --docs-only
    keys = ("latency_ratio_embedded", "latency_ratio_distributed", "cases_per_min_1w",
            "cases_per_min_2w", "cpu_s_per_case_ratio_2w_1w", "peak_rss_mb_max")
    last = {k: result.get(k) for k in keys}
    last.update({"latency_embedded_s": result["latency"].get("embedded", {}).get("latency_s"),
                 "latency_distributed_s": result["latency"].get("distributed", {}).get("latency_s"),
                 "floors_sum_s": result.get("floors_sum_s"), "resources": result.get("resources"),
                 "instances": args.instances, "throughput_instances": t_instances,
                 "throughput_faxes": args.throughput_faxes,
                 "cases": args.cases, "elapsed_s": result["elapsed_s"]})
    print(json.dumps(last))


if __name__ == "__main__":
    main()
