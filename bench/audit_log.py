"""Benchmark of the tamper-evident audit log (issue 7), on the local PostgreSQL.

    python bench/audit_log.py

Creates throwaway databases on 127.0.0.1:5432 (dropped at the end) and measures:
- append rate through `gateway.audit.record()`, one event per transaction, with one and
  with two concurrent writers, against a plain INSERT per transaction as the reference;
- the log grown to 1,000,000 entries (bulk appends), signed checkpoints at 500,000 and
  1,000,000;
- inclusion-proof time at 1,000,000 entries (read from the stored subtree hashes, then
  verified), against rehashing the whole log as the reference;
- time to verify the consistency proof between the two checkpoints;
- the seven tamper cases of the issue, each run on its own database: detected of total.
The last line is one JSON object with the figures.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "audit"))

from gateway import audit  # noqa: E402
from gateway.audit import checkpoints, log, merkle  # noqa: E402
from gateway.storage.models import AuditEvent, Base  # noqa: E402

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/"
TOTAL = 1_000_000
BATCH = 10_000
SINGLE_APPENDS = 3000


def say(msg: str) -> None:
    print(msg, flush=True)


class Databases:
    def __init__(self):
        self.admin = create_engine(PG + "postgres", isolation_level="AUTOCOMMIT")
        self.made: list[tuple[str, object]] = []

    def new(self, **kw):
        name = f"audit_bench_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        engine = create_engine(PG + name, **kw)
        self.made.append((name, engine))
        return engine

    def drop_all(self):
        for name, engine in self.made:
            engine.dispose()
            with self.admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


def event_kwargs(i: int) -> dict:
    return dict(actor="worker", transfer_id=f"{i // 8:032x}", authorization_id=f"auth-{i // 64}",
                patient_key=f"{i % 9973:064x}", items=i % 50, bytes=i * 17, sha256=f"{i:064x}")


def _writer(url: str, w: int, n: int, start) -> None:
    engine = create_engine(url, pool_size=1)
    start.wait()
    for i in range(n):
        with Session(engine) as s:
            audit.record(s, "pull.finished", **event_kwargs(w * n + i))
            s.commit()
    engine.dispose()


def append_rate(url: str, writers: int, per_writer: int) -> float:
    """Events per second through record(), one per transaction, `writers` processes."""
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(url, w, per_writer, start)) for w in range(writers)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let the writers connect; the clock starts when they are released
    t0 = time.perf_counter()
    start.set()
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"writer process failed with exit code {p.exitcode}")
    return writers * per_writer / (time.perf_counter() - t0)


PLAIN_INSERT = text(
    "INSERT INTO plain_events (seq, at, type, actor, outcome, transfer_id, authorization_id, "
    "patient_key, detail, leaf_hash) VALUES (nextval('plain_seq'), now(), 'pull.finished', :actor, "
    "'success', :t, :a, :p, :d, '')")


def interleaved_rates(engine, rounds: int, per_round: int) -> tuple[float, float]:
    """record() appends and, as the reference, plain INSERTs of the same row (no hashing,
    no lock), one per transaction each, alternating in rounds so that a change in the
    machine's load hits both alike. Returns (appends/s, plain inserts/s)."""
    with engine.begin() as c:
        c.execute(text("CREATE TABLE plain_events (LIKE audit_events INCLUDING DEFAULTS)"))
        c.execute(text("CREATE SEQUENCE plain_seq"))
    t_append = t_plain = 0.0
    for r in range(rounds):
        t0 = time.perf_counter()
        for i in range(r * per_round, (r + 1) * per_round):
            with Session(engine) as s:
                audit.record(s, "pull.finished", **event_kwargs(i))
                s.commit()
        t1 = time.perf_counter()
        for i in range(r * per_round, (r + 1) * per_round):
            kw = event_kwargs(i)
            with Session(engine) as s:
                s.execute(PLAIN_INSERT, {"actor": kw["actor"], "t": kw["transfer_id"],
                                         "a": kw["authorization_id"], "p": kw["patient_key"],
                                         "d": json.dumps({"items": kw["items"]})})
                s.commit()
        t_append += t1 - t0
        t_plain += time.perf_counter() - t1
    n = rounds * per_round
    return n / t_append, n / t_plain


def grow(engine, key, target: int) -> tuple[float, dict]:
    """Bulk-append up to `target` entries; checkpoint at half and at the end."""
    with Session(engine) as s:
        size = log.tree_size(s)
    cps = {}
    t0 = time.perf_counter()
    n0 = size
    while size < target:
        step = min(BATCH, target - size, (target // 2 - size) if size < target // 2 else BATCH)
        before = size
        with Session(engine) as s:
            log.append_many(s, [{"type": "pull.finished", **{k: v for k, v in event_kwargs(size + j).items()
                                                              if k in ("actor", "transfer_id", "authorization_id",
                                                                       "patient_key")},
                                 "detail": {"items": (size + j) % 50, "sha256": f"{size + j:064x}"}}
                                for j in range(step)])
            s.commit()
            size += step
            if size in (target // 2, target):
                cps[size] = checkpoints.create_checkpoint(s, key, origin="bench.example/audit")
                s.commit()
        if size // 100_000 != before // 100_000:
            say(f"  grown to {size:,} entries ({(size - n0) / (time.perf_counter() - t0):,.0f}/s)")
    return (size - n0) / (time.perf_counter() - t0), cps


def main() -> None:
    dbs = Databases()
    key = Ed25519PrivateKey.generate()
    out: dict = {}
    try:
        engine = dbs.new(pool_size=4)
        Base.metadata.create_all(engine)

        url = engine.url.render_as_string(hide_password=False)
        say(f"append: {SINGLE_APPENDS} events through record(), one per transaction, 1 writer, "
            f"alternating with as many plain INSERTs (the reference) in 10 rounds")
        appends, plain = interleaved_rates(engine, 10, SINGLE_APPENDS // 10)
        out["append_per_s"] = round(appends, 1)
        out["plain_insert_per_s"] = round(plain, 1)
        out["append_vs_plain_insert"] = round(appends / plain, 3)
        say(f"  {out['append_per_s']}/s; plain INSERT {out['plain_insert_per_s']}/s "
            f"(append/plain = {out['append_vs_plain_insert']})")
        say(f"append: {SINGLE_APPENDS} events, 2 concurrent writer processes")
        out["append_per_s_2_writers"] = round(append_rate(url, 2, SINGLE_APPENDS // 2), 1)
        say(f"  {out['append_per_s_2_writers']}/s")

        say(f"grow the log to {TOTAL:,} entries in batches of {BATCH:,} (append_many)")
        rate, cps = grow(engine, key, TOTAL)
        out["bulk_append_per_s"] = round(rate, 1)
        half, full = cps[TOTAL // 2], cps[TOTAL]
        keys = checkpoints.load_public_keys({"keys": [checkpoints.public_jwk(key.public_key())]})
        assert checkpoints.signature_problem(full, keys) is None

        say("inclusion proofs at 1,000,000 entries: 200 random events, each read and verified")
        root = bytes.fromhex(full["root_hash"])
        rng = random.Random(7)
        times = []
        with Session(engine) as s:
            for seq in [rng.randint(1, TOTAL) for _ in range(200)]:
                t0 = time.perf_counter()
                p = log.inclusion_proof(s, seq, TOTAL)
                times.append((time.perf_counter() - t0) * 1000)
                assert merkle.verify_inclusion(bytes.fromhex(p["leaf_hash"]), seq - 1, TOTAL,
                                               [bytes.fromhex(h) for h in p["path"]], root)
            out["inclusion_proof_ms"] = round(statistics.median(times), 3)
            out["inclusion_proof_p95_ms"] = round(sorted(times)[189], 3)
            say(f"  median {out['inclusion_proof_ms']} ms, p95 {out['inclusion_proof_p95_ms']} ms")
            say("reference: rehash the whole log from its stored leaf hashes (what a proof costs "
                "without stored subtrees)")
            t0 = time.perf_counter()
            leaves = [bytes.fromhex(h) for (h,) in s.execute(
                select(AuditEvent.leaf_hash).order_by(AuditEvent.seq)).yield_per(50_000)]
            assert merkle.root_from_leaf_hashes(leaves) == root
            out["rehash_log_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            out["inclusion_vs_rehash"] = round(out["inclusion_proof_ms"] / out["rehash_log_ms"], 6)
            say(f"  {out['rehash_log_ms']} ms (proof/rehash = {out['inclusion_vs_rehash']})")
            del leaves

            say("consistency proof between the checkpoints at 500,000 and 1,000,000")
            t0 = time.perf_counter()
            proof = log.consistency_proof(s, TOTAL // 2, TOTAL)
            out["consistency_proof_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        path = [bytes.fromhex(h) for h in proof["path"]]
        r1 = bytes.fromhex(half["root_hash"])
        vt, st = [], []
        for _ in range(200):
            t0 = time.perf_counter()
            assert merkle.verify_consistency(TOTAL // 2, TOTAL, r1, root, path)
            vt.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            assert checkpoints.signature_problem(half, keys) is None
            assert checkpoints.signature_problem(full, keys) is None
            assert merkle.verify_consistency(TOTAL // 2, TOTAL, r1, root, path)
            st.append((time.perf_counter() - t0) * 1000)
        out["consistency_verify_ms"] = round(statistics.median(vt), 4)
        out["consistency_verify_with_signatures_ms"] = round(statistics.median(st), 4)
        out["consistency_proof_hashes"] = len(path)
        say(f"  proof read {out['consistency_proof_ms']} ms ({len(path)} hashes); verify "
            f"{out['consistency_verify_ms']} ms, with both signatures {out['consistency_verify_with_signatures_ms']} ms")
        engine.dispose()

        from audit_tamper import CASES, detected as reported, run_case
        say(f"tamper cases ({len(CASES)}), each on its own PostgreSQL database")
        detected = 0
        with tempfile.TemporaryDirectory() as tmp:
            for name in CASES:
                problems = run_case(name, dbs.new(), key, Path(tmp) / name)
                hit = reported(name, problems)
                detected += hit
                say(f"  {name}: {'detected' if hit else 'NOT DETECTED'} ({len(problems)} problem lines)"
                    + (f", e.g. {problems[0][:100]}" if problems else ""))
            clean = run_case(None, dbs.new(), key, Path(tmp) / "clean")
            say(f"  honest log: {len(clean)} problems")
        out["tamper_detected"] = detected
        out["tamper_cases"] = len(CASES)
        out["honest_log_problems"] = len(clean)
        out["entries"] = TOTAL
        out["load_avg_1m"] = round(os.getloadavg()[0], 2)  # the machine may be shared
    finally:
        say("dropping the throwaway databases")
        dbs.drop_all()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
