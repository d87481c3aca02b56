"""Prometheus metrics, read from the database and the broker at scrape time.

Workers are separate processes, often on other hosts, so no figure is counted in a
process's memory: the database already holds every transfer, source, case and
notification, and the audit log holds every step with its duration (`duration_s`,
written by engine/transfers.run_step), every retry and every dead letter. Gauges are
`GROUP BY` counts; the histograms and counters come from the audit log, read
incrementally (each scrape reads only the events after the last one it read), so every
API process computes the same figures and a scrape through any of them is correct.
No metric carries an id, a name or a record.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry
from sqlalchemy import func, or_, select

from gateway.config import Settings
from gateway.storage.models import AuditEvent, Case, Notification, Transfer, TransferSource

log = logging.getLogger(__name__)

PREFIX = "records_gateway"
# seconds: a step is a fraction of a second to an hour-long DICOM pull; a delivery
# (created -> receipt verified) seconds to days when a source answers late
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
LATENCY_BUCKETS = (1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400, 3 * 86400, 7 * 86400)
STEP_EVENTS = ("transfer.state.", "transfer.completed", "transfer.failed",
               "transfer.step.retry", "transfer.dead_letter")
BATCH = 5000


class Histogram:
    """Cumulative bucket counts and a sum, as the exposition format wants them."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def buckets(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts):
            total += count
            out.append((bound, total))
        return out


@dataclass
class AuditFigures:
    """What the audit log has told so far, and how far it has been read."""

    last_seq: int = 0
    steps: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    retries: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0

    def take(self, seq: int, type_: str, detail: dict, created_at, completed_at,
             bundle_id) -> None:
        self.last_seq = seq
        step, duration = detail.get("step"), detail.get("duration_s")
        if type_ == "transfer.step.retry" and step:
            self.retries[step] = self.retries.get(step, 0) + 1
        if type_ == "transfer.dead_letter":
            self.dead_letters += 1
        if step and isinstance(duration, (int, float)):
            outcome = "ok" if type_.startswith("transfer.state.") or \
                type_ == "transfer.completed" else "error"
            self.steps.setdefault((step, outcome), Histogram(STEP_BUCKETS)).observe(duration)
        if type_ == "transfer.completed" and bundle_id and created_at and completed_at:
            self.latency.observe(max((completed_at - created_at).total_seconds(), 0.0))


def queue_depth(settings: Settings) -> int:
    """Messages waiting in the Celery queue: Redis lists (one per priority step, as kombu
    keeps them) or the embedded broker's message files."""
    if settings.redis_url:
        import redis

        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3,
                                      socket_timeout=3)
        try:
            names = [settings.queue] + [f"{settings.queue}\x06\x16{p}" for p in (3, 6, 9)]
            return sum(client.llen(name) for name in names)
        finally:
            client.close()
    folder = settings.broker_dir / "queue"
    suffix = f".{settings.queue}.msg"
    try:
        return sum(1 for entry in folder.iterdir() if entry.name.endswith(suffix))
    except FileNotFoundError:
        return 0


class GatewayCollector:
    """A prometheus_client collector over one deployment's database and broker.

    `transfer_states` and `case_states` are every state there is, so a state with no
    rows reads 0 rather than vanishing."""

    def __init__(self, svc, transfer_states: Iterable[str], case_states: Iterable[str]):
        self.svc = svc
        self.transfer_states = tuple(transfer_states)
        self.case_states = tuple(case_states)
        self._figures = AuditFigures()
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        settings = self.svc.settings
        with self.svc.db.session() as s:
            transfers = dict(s.execute(select(Transfer.state, func.count())
                                       .group_by(Transfer.state)).all())
            sources = s.execute(select(TransferSource.name, func.sum(TransferSource.items),
                                       func.sum(TransferSource.bytes))
                                .group_by(TransferSource.name)).all()
            cases = dict(s.execute(select(Case.state, func.count()).group_by(Case.state)).all())
            notes = dict(s.execute(select(Notification.state, func.count())
                                   .group_by(Notification.state)).all())
            figures = self._read_audit(s)
        yield _by_label(GaugeMetricFamily, "transfers", "Transfers by state", "state",
                        {state: transfers.get(state, 0) for state in
                         dict.fromkeys(self.transfer_states + tuple(transfers))})
        yield GaugeMetricFamily(f"{PREFIX}_dead_letters", "Transfers in dead_letter now "
                                "(deliveries that exhausted their retries)",
                                value=transfers.get("dead_letter", 0))
        items: dict[str, float] = {}
        size: dict[str, float] = {}
        for name, count, total in sources:
            cfg = settings.sources.get(name)
            kind = cfg.kind if cfg else "unconfigured"
            items[kind] = items.get(kind, 0) + (count or 0)
            size[kind] = size.get(kind, 0) + (total or 0)
        yield _by_label(CounterMetricFamily, "items", "Records pulled, by source kind",
                        "source_kind", items)
        yield _by_label(CounterMetricFamily, "item_bytes", "Bytes of records pulled, by "
                        "source kind", "source_kind", size)
        yield _by_label(GaugeMetricFamily, "cases", "Cases by state", "state",
                        {state: cases.get(state, 0) for state in
                         dict.fromkeys(self.case_states + tuple(cases))})
        yield _by_label(GaugeMetricFamily, "notifications", "Notifications by state "
                        "(pending: to send or retry; dead: given up)", "state",
                        {state: notes.get(state, 0) for state in
                         dict.fromkeys(("pending", "sent", "dead") + tuple(notes))})
        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Messages waiting in the task "
                                  "queue (no sample while the broker does not answer)",
                                  labels=["queue"])
        try:
            depth.add_metric([settings.queue], queue_depth(settings))
        except Exception as exc:  # the other figures still count; /ready names the broker
            log.warning("metrics: queue depth unknown: %s", type(exc).__name__)
        yield depth
        steps = HistogramMetricFamily(f"{PREFIX}_step_duration_seconds", "Duration of "
                                      "transfer steps, by step and outcome",
                                      labels=["step", "outcome"])
        for (step, outcome), hist in sorted(figures.steps.items()):
            steps.add_metric([step, outcome], hist.buckets(), hist.sum)
        yield steps
        latency = HistogramMetricFamily(f"{PREFIX}_delivery_latency_seconds", "From a "
                                        "transfer's creation to its verified receipt")
        latency.add_metric([], figures.latency.buckets(), figures.latency.sum)
        yield latency
        yield _by_label(CounterMetricFamily, "step_retries", "Transfer steps retried after "
                        "a transient error, by step", "step", figures.retries)
        yield CounterMetricFamily(f"{PREFIX}_dead_lettered", "Deliveries moved to "
                                  "dead_letter, ever", value=figures.dead_letters)

    def _read_audit(self, session) -> AuditFigures:
        """Fold the audit events written since the last scrape into the figures."""
        kinds = [AuditEvent.type.startswith(t) if t.endswith(".") else AuditEvent.type == t
                 for t in STEP_EVENTS]
        with self._lock:
            figures = self._figures
            while True:
                rows = session.execute(
                    select(AuditEvent.seq, AuditEvent.type, AuditEvent.detail,
                           Transfer.created_at, Transfer.completed_at, Transfer.bundle_id)
                    .outerjoin(Transfer, Transfer.id == AuditEvent.transfer_id)
                    .where(AuditEvent.seq > figures.last_seq, or_(*kinds))
                    .order_by(AuditEvent.seq).limit(BATCH)).all()
                for row in rows:
                    figures.take(*row)
                if len(rows) < BATCH:
                    return figures


def _by_label(family, name: str, doc: str, label: str, values: dict) -> Metric:
    metric = family(f"{PREFIX}_{name}", doc, labels=[label])
    for key, value in sorted(values.items()):
        metric.add_metric([key], value)
    return metric


def registry(svc, transfer_states: Iterable[str], case_states: Iterable[str]) -> CollectorRegistry:
    """A registry holding the gateway's collector only (no process metrics: they would
    describe one API process, not the deployment)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(GatewayCollector(svc, transfer_states, case_states))
    return reg
