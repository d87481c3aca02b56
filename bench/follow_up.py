"""Benchmark: how soon a new result at a FHIR source reaches the center under an open case.

    python bench/follow_up.py [--reports 20] [--burst 10] [--seed 7]

Real peers on loopback (tests/fhir/follow_peers.py): sekmet-fhir loaded with a Synthea
patient, the sending gateway's API on a port (sekmet posts its Subscription
notifications there), a `worker --beat` process on the embedded broker, a receiving
gateway process. The gateway's timing settings are its defaults (`case_tick_s`,
`follow_up_settle_s`, `step_lease_s`, `reconcile_interval_s`, retries, the embedded
broker's polling).

1. An authorization is imported: its case's first transfer delivers the patient's
   records, then the source is subscribed to its DiagnosticReport topic.
2. `--reports` new DiagnosticReports are written at sekmet, one at a time, at random
   intervals of 0.5-3 s. Once the notification of the report in the middle has landed,
   the worker is killed (SIGKILL, by PID) and started again 2 s later.
   Latency of a report = from just before its POST at the source to the moment the
   sending gateway verified the center's signed receipt for the follow-up transfer that
   carried it (the `transfer.receipt.verified` audit event of that transfer; which
   transfer carried it: the one whose mapped records list the report's URL at the source
   among the resources they sent). Median and p95 over the reports.
   Lost = reports the center never received; twice = reports received more than once
   (counted by source URL across every bundle in the center's inbox).
3. A burst: `--burst` reports within 1 s; how many follow-up transfers carried them
   (target at most 2: the settle window makes a burst one follow-up).

The last line is one JSON object: follow_up_median_s, follow_up_p95_s (targets 5 and
10), events_lost (target 0), events_twice, follow_ups (follow-up transfers that delivered
in step 2), follow_ups_empty (follow-ups that found nothing new), burst_follow_ups.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402

from gateway.config import Settings  # noqa: E402
from gateway.storage.models import AuditEvent, Item, Transfer  # noqa: E402
from tests.fhir.fhir_peers import SekmetServer, synthea_patients, wait_until  # noqa: E402
from tests.fhir.follow_peers import FollowCase, report, source_keys  # noqa: E402


def say(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


def carriers(follow: FollowCase, auth_id: str) -> dict[str, tuple[str, float]]:
    """Source URL -> (transfer id, time its receipt was verified) for every resource the
    case's transfers sent and had receipted."""
    out = {}
    with follow.svc.db.session() as s:
        verified = {e.transfer_id: _epoch(e.at) for e in s.scalars(
            select(AuditEvent).where(AuditEvent.type == "transfer.receipt.verified",
                                     AuditEvent.authorization_id == auth_id))}
        rows = s.execute(select(Item.transfer_id, Item.record_meta).join(Transfer, Item.transfer_id == Transfer.id)
                         .where(Transfer.authorization_id == auth_id, Item.state == "mapped")).all()
    for tid, meta in rows:
        if tid in verified:
            for url in (meta or {}).get("sent") or {}:
                out.setdefault(url, (tid, verified[tid]))
    return out


def _epoch(at: datetime) -> float:
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


def received_counts(follow: FollowCase) -> Counter:
    return Counter(k for _, bundle in follow.received() for k in source_keys(bundle, follow.sekmet.base_url))


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def follow_up_transfers(follow: FollowCase, auth_id: str, after: float = 0.0) -> list[Transfer]:
    with follow.svc.db.session() as s:
        runs = s.scalars(select(Transfer).where(Transfer.authorization_id == auth_id)
                         .order_by(Transfer.created_at)).all()
    return [t for t in runs[1:] if _epoch(t.created_at) >= after]


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per notification
    ap = argparse.ArgumentParser()
    ap.add_argument("--reports", type=int, default=20)
    ap.add_argument("--burst", type=int, default=10)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-follow-up-"))
    say(f"working in {work}")
    for sub in ("sekmet", "gateways"):
        (work / sub).mkdir()
    sekmet = SekmetServer(work / "sekmet").start()
    follow = None
    try:
        loaded = sekmet.load(synthea_patients(2, 42)[0])
        patient_id = loaded["id"]
        say("sekmet up with one Synthea patient")
        defaults = Settings()  # the test settings of FollowCase put back to the defaults
        follow = FollowCase(work / "gateways", sekmet, loaded["patient"], step_lease_s=defaults.step_lease_s,
                            reconcile_interval_s=defaults.reconcile_interval_s, retry={})
        settings = follow.svc.settings
        say(f"gateways up: case_tick_s={settings.case_tick_s} follow_up_settle_s={settings.follow_up_settle_s} "
            f"broker={'redis' if settings.redis_url else 'embedded'}")
        started = time.time()
        auth_id, case_id = follow.authorize()
        wait_until(lambda: any(t["receipt"] for t in follow.case(case_id)["transfers"]), 300, 0.2,
                   "the first delivery")
        say(f"first delivery receipted in {time.time() - started:.1f} s")
        wait_until(lambda: [x for x in follow.subscriptions(case_id) if x.status == "active"], 60, 0.2,
                   "the subscription")
        say("subscribed at the source")

        written: dict[str, float] = {}  # source URL -> time just before its POST
        kill_at = args.reports // 2
        phase_start = time.time()
        for n in range(args.reports):
            if n:
                time.sleep(rng.uniform(0.5, 3.0))
            before = len(follow.triggers(case_id))
            at = time.time()
            res = sekmet.post(report(patient_id))
            written[f"{sekmet.base_url}/DiagnosticReport/{res['id']}"] = at
            if n == kill_at:
                wait_until(lambda: len(follow.triggers(case_id)) > before, 30, 0.05, "the notification")
                follow.stack.worker.kill()
                say(f"report {n + 1}: notification landed; worker killed (SIGKILL)")
                time.sleep(2)
                follow.restart_worker()
                say("worker started again")
        say(f"{args.reports} reports written in {time.time() - phase_start:.1f} s; waiting for the center")
        try:
            wait_until(lambda: set(written) <= set(carriers(follow, auth_id)), 180, 0.5, "every report")
        except AssertionError as exc:
            say(str(exc))
        carried = carriers(follow, auth_id)
        for n, (u, w) in enumerate(written.items(), 1):
            if u in carried:
                say(f"report {n}: {carried[u][1] - w:.2f} s, transfer {carried[u][0][:8]}")
        latencies = sorted(carried[u][1] - w for u, w in written.items() if u in carried)
        counts = received_counts(follow)
        keys = {u[len(sekmet.base_url) + 1:] for u in written}
        lost = sum(counts[k] == 0 for k in keys)
        twice = sum(counts[k] > 1 for k in keys)
        runs = follow_up_transfers(follow, auth_id)
        delivering = sum(bool(t.bundle_id) for t in runs)
        say(f"latency over {len(latencies)} reports: median {statistics.median(latencies):.2f} s, "
            f"p95 {p95(latencies):.2f} s, max {latencies[-1]:.2f} s")
        say(f"lost {lost}, received twice {twice}; {delivering} follow-ups delivered, "
            f"{len(runs) - delivering} found nothing new")

        wait_until(lambda: all(t.state in ("completed", "failed", "cancelled")
                               for t in follow_up_transfers(follow, auth_id)), 60, 0.2, "quiet")
        burst_start = time.time()
        burst = []
        for n in range(args.burst):  # evenly within 0.9 s, whatever a POST takes
            time.sleep(max(0.0, burst_start + n * 0.9 / args.burst - time.time()))
            res = sekmet.post(report(patient_id))
            burst.append(f"{sekmet.base_url}/DiagnosticReport/{res['id']}")
        say(f"burst of {args.burst} reports written in {time.time() - burst_start:.2f} s")
        try:
            wait_until(lambda: set(burst) <= set(carriers(follow, auth_id)), 120, 0.3, "the burst")
        except AssertionError as exc:
            say(str(exc))
        carried = carriers(follow, auth_id)
        burst_follow_ups = len({carried[u][0] for u in burst if u in carried})
        burst_lost = sum(u not in carried for u in burst)
        say(f"burst carried by {burst_follow_ups} follow-up(s), {burst_lost} not delivered")
        figures = {
            "follow_up_median_s": round(statistics.median(latencies), 2),
            "follow_up_p95_s": round(p95(latencies), 2),
            "follow_up_max_s": round(latencies[-1], 2),
            "events_lost": lost + burst_lost, "events_twice": twice,
            "follow_ups": delivering, "follow_ups_empty": len(runs) - delivering,
            "burst_follow_ups": burst_follow_ups, "reports": args.reports, "burst": args.burst,
            "case_tick_s": settings.case_tick_s, "follow_up_settle_s": settings.follow_up_settle_s,
        }
    finally:
        if follow is not None:
            follow.stop()
        sekmet.stop()
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
