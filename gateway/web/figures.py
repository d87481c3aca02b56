"""The figures behind the operator's and auditor's charts, read from the database.

Counts and durations only (no ids, no names of people), grouped in Python so the same
code runs on SQLite and PostgreSQL. Latency buckets are the ones /metrics publishes, so
the page and the Prometheus histogram agree.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from statistics import median

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.runtime.metrics import LATENCY_BUCKETS
from gateway.storage.models import AuditEvent, Transfer

from . import charts

OUTCOMES = ("completed", "failed", "cancelled", "in progress")


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _outcome(state: str) -> str:
    return state if state in ("completed", "failed", "cancelled") else "in progress"


def transfers_per_day(session: Session, days: int = 14, today: date | None = None) -> charts.Chart:
    """Transfers started on each of the last `days` days (UTC), by how they ended."""
    today = today or datetime.now(timezone.utc).date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), timezone.utc)
    labels = [(first + timedelta(days=i)).isoformat() for i in range(days)]
    series = {o: [0] * days for o in OUTCOMES}
    for created, state in session.execute(select(Transfer.created_at, Transfer.state)
                                          .where(Transfer.created_at >= since)):
        i = (_utc(created).date() - first).days
        if 0 <= i < days:
            series[_outcome(state)][i] += 1
    return charts.stacked_bars("Transfers per day by outcome", labels, series, "transfers")


def _bucket_label(bound: float | None) -> str:
    return f"> {charts.duration(LATENCY_BUCKETS[-1])}" if bound is None \
        else f"≤ {charts.duration(bound)}"


def delivery_latency(session: Session, days: int = 30, now: datetime | None = None) -> charts.Chart:
    """How long completed transfers took from creation to the verified receipt."""
    since = (now or datetime.now(timezone.utc)) - timedelta(days=days)
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    for created, completed in session.execute(
            select(Transfer.created_at, Transfer.completed_at)
            .where(Transfer.state == "completed", Transfer.completed_at.is_not(None),
                   Transfer.bundle_id.is_not(None), Transfer.completed_at >= since)):
        seconds = max((_utc(completed) - _utc(created)).total_seconds(), 0.0)
        counts[next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), -1)] += 1
    labels = [_bucket_label(b) for b in LATENCY_BUCKETS] + [_bucket_label(None)]
    # trim empty buckets at both ends so the bars that matter are wide enough to read
    used = [i for i, c in enumerate(counts) if c]
    lo, hi = (used[0], used[-1] + 1) if used else (0, 0)
    return charts.histogram("Delivery latency", list(zip(labels[lo:hi], counts[lo:hi])),
                            "from start to verified receipt", "transfers")


def time_to_records(session: Session, days: int = 30, now: datetime | None = None) -> charts.Chart:
    """Per source: the median time from a transfer's start to that source's last record
    (its `transfer.pull.finished` event), over the transfers of the last `days` days."""
    since = (now or datetime.now(timezone.utc)) - timedelta(days=days)
    waits: dict[str, list[float]] = {}
    rows = session.execute(
        select(AuditEvent.at, AuditEvent.detail, Transfer.created_at)
        .join(Transfer, Transfer.id == AuditEvent.transfer_id)
        .where(AuditEvent.type == "transfer.pull.finished", AuditEvent.at >= since))
    for at, detail, created in rows:
        source = (detail or {}).get("source")
        if isinstance(source, str):
            waits.setdefault(source, []).append(max((_utc(at) - _utc(created)).total_seconds(), 0.0))
    bars = [(name, median(v), f"{len(v)} pull{'s' if len(v) != 1 else ''}")
            for name, v in waits.items()]
    return charts.horizontal_bars("Sources by time to records", bars, "median time to records",
                                  charts.duration)
