"""A transfer's sources pulled side by side: one Celery task per source.

The `pulling` step (steps.py) starts `gateway.transfers.pull_source` for each source not
finished, so a FHIR pull, a DICOM retrieve and a fax wait run at once on different
workers. Each task claims its source's row (lease.claim_source: a duplicate message finds
it held or finished and does nothing), pulls with the connector, stores each record in
the blob store as an Item (unique per origin: a pull taken over after a crash stores
nothing twice, and the connector is told what it already produced), and marks the source
done or failed. A source that is not ready (a fax not arrived, a server down) retries on
its own schedule with backoff and holds up no other source.

The task that finishes the last source moves the transfer to mapping once: a conditional
update on the transfer row (still pulling), whichever finishing task gets there first,
each having committed its own source before looking at the others; that task then runs
the mapping step itself (transfers.step goes on from there). A source failed for
good sends the transfer back to its `pulling` step, which fails it naming every source's
reason. Lost messages and killed workers: the reconciler runs `pulling` again, which
starts the pulls that are due and not held (a lease of a process gone is freed at once).

This module never imports transfers.py (which runs the steps, which start these tasks):
it names the step task by its name.
"""
from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from connectors import connector_class
from connectors.base import ConnectorError, Gap, Outcome, RejectedRecord, SkippedRecord
from gateway import audit
from gateway.errors import (
    AuthorizationDenied,
    GatewayError,
    ProviderUnavailable,
    StorageFull,
    no_space,
)
from gateway.outbound import imaging
from gateway.runtime.celery_app import celery
from gateway.runtime.services import Services, services
from gateway.storage.models import (
    AuditEvent,
    DicomArrival,
    Item,
    Transfer,
    TransferSource,
    utcnow,
)

from . import dicom_sink, follow_ups, policy, sources
from .lease import Lease, Superseded, backoff, claim_source, new_owner
from .mapping import Mapper

log = logging.getLogger(__name__)

STEP_TASK = "gateway.transfers.step"  # transfers.step, named: no import circle
FINISHED = ("done", "failed")
INSERT_BATCH = 100


def survey(svc: Services, transfer_id: str) -> tuple[list[str], bool, list[tuple[str, str]]]:
    """(sources due to be pulled now and not held, whether any is unfinished, the failed
    ones with their reasons)."""
    now = utcnow()
    with svc.db.session() as s:
        rows = s.scalars(select(TransferSource).filter_by(transfer_id=transfer_id)
                         .order_by(TransferSource.position)).all()
        due = [r.name for r in rows if r.state not in FINISHED
               and (r.lease_until is None or r.lease_until < now)
               and (r.next_attempt_at is None or r.next_attempt_at <= now)]
        return (due, any(r.state not in FINISHED for r in rows),
                [(r.name, r.error or "") for r in rows if r.state == "failed"])


def enqueue(transfer_id: str, source: str, countdown: float | None = None) -> None:
    pull_source.apply_async((transfer_id, source), countdown=countdown)


@celery.task(name="gateway.transfers.pull_source", acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def pull_source(transfer_id: str, source: str) -> None:
    svc = services()
    run_pull(svc, transfer_id, source)
    with svc.db.session() as s:
        mapping = s.scalar(select(Transfer.state).filter_by(id=transfer_id)) == "mapping"
    if mapping:  # the last source is done: map, assemble and deliver here, at once
        celery.tasks[STEP_TASK](transfer_id, "mapping")  # (its message went too: transfers.step)


def run_pull(svc: Services, transfer_id: str, source: str) -> str | None:
    """Pull one source of a transfer; return its state after (None: it did not run here)."""
    owner = new_owner()
    if not claim_source(svc, transfer_id, source, owner):
        return None
    try:
        with svc.db.session() as s:
            t = s.get(Transfer, transfer_id)
            _ = t.authorization
        policy.check_active(t.authorization)
        _pull_source(svc, t, source, owner)
    except Superseded:
        return None
    except AuthorizationDenied:  # the step re-checks the authorization and cancels
        _release(svc, transfer_id, source, owner)
        celery.send_task(STEP_TASK, (transfer_id, "pulling"))
        return None
    except GatewayError as exc:
        return _failed(svc, transfer_id, source, owner, exc, exc.transient)
    except Exception as exc:  # a bug or an unforeseen fault: retried, logged with its type
        if no_space(exc):  # a full work folder: retried like a full blob store, said plainly
            full = StorageFull("no space left on the disk of this gateway's data folder "
                               "(work folder or blob store): free space there; transfers "
                               "resume by themselves")
            return _failed(svc, transfer_id, source, owner, full, True)
        log.exception("pull of source %s of transfer %s raised %s", source, transfer_id,
                      type(exc).__name__)
        return _failed(svc, transfer_id, source, owner, exc, True)
    state = _release(svc, transfer_id, source, owner)
    finish_if_last(svc, transfer_id)
    return state


def _release(svc: Services, transfer_id: str, source: str, owner: str) -> str:
    with svc.db.session() as s:
        row = s.scalars(select(TransferSource).filter_by(transfer_id=transfer_id, name=source)).one()
        if row.lease_owner == owner:
            row.lease_owner = row.lease_until = None
        return row.state


def _failed(svc: Services, transfer_id: str, source: str, owner: str, exc: Exception,
            transient: bool) -> str | None:
    """A source not ready retries by itself with backoff (never sooner than a Retry-After);
    out of attempts, or refused for good, it fails."""
    message = str(exc) if isinstance(exc, GatewayError) else f"internal error ({type(exc).__name__})"
    retry = svc.settings.retry
    delay = None
    with svc.db.session() as s:
        row = s.scalars(select(TransferSource).filter_by(transfer_id=transfer_id, name=source)).one()
        if row.lease_owner != owner:
            return None  # taken over meanwhile: the new owner goes on
        row.attempts += 1
        row.lease_owner = row.lease_until = None
        auth_id = row.transfer.authorization_id
        if transient and row.attempts < retry.max_attempts:
            asked = exc.details.get("retry_after") if isinstance(exc, GatewayError) else None
            asked_s = min(float(asked), retry.max_retry_after_s) if asked is not None else 0.0
            delay = max(backoff(retry, row.attempts), asked_s)
            # woken while it ran (what it waits for may have come just after it looked):
            # no backoff, or the wake would be lost until the next attempt. A wake clears
            # next_attempt_at (faxes.wake); the backoff is written only if it is still
            # set, in one statement, so a wake since this session read the row counts too
            if not _schedule(s, row.id, delay, unless_woken=True):
                delay = asked_s
                _schedule(s, row.id, delay)
            row.error = f"waiting (attempt {row.attempts}): {message}"
            audit.record(s, "transfer.pull.retry", actor="worker", transfer_id=transfer_id,
                         authorization_id=auth_id, outcome="failure", source=source,
                         attempt=row.attempts, error=message, delay_s=round(delay, 2))
        else:
            row.state, row.error = "failed", message
            audit.record(s, "transfer.pull.failed", actor="worker", transfer_id=transfer_id,
                         authorization_id=auth_id, outcome="failure", source=source, error=message)
    if delay is not None:
        enqueue(transfer_id, source, countdown=delay)
        return "waiting"
    finish_if_last(svc, transfer_id)
    return "failed"


def _schedule(s, row_id: int, delay: float, unless_woken: bool = False) -> bool:
    """Set a source's next attempt `delay` seconds from now (`unless_woken`: only if its
    next_attempt_at was not cleared by a wake); whether it was set."""
    where = [TransferSource.id == row_id]
    if unless_woken:
        where.append(TransferSource.next_attempt_at.is_not(None))
    return s.execute(update(TransferSource).where(*where)
                     .values(next_attempt_at=utcnow() + timedelta(seconds=delay))
                     .execution_options(synchronize_session=False)).rowcount == 1


def finish_if_last(svc: Services, transfer_id: str) -> None:
    """Every source finished: move the transfer to mapping (once, by a conditional update),
    or, some failed, hand it to its `pulling` step, which fails it with their reasons."""
    moved = failed = False
    with svc.db.session() as s:
        states = s.scalars(select(TransferSource.state).filter_by(transfer_id=transfer_id)).all()
        if any(state not in FINISHED for state in states):
            return
        failed = "failed" in states
        if not failed:
            moved = s.execute(
                update(Transfer).where(Transfer.id == transfer_id, Transfer.state == "pulling")
                .values(state="mapping", attempts=0, next_attempt_at=None, reason=None,
                        lease_owner=None, lease_until=None)
                .execution_options(synchronize_session=False)).rowcount == 1
            if moved:
                auth_id = s.scalars(select(Transfer.authorization_id).filter_by(id=transfer_id)).one()
                began = s.scalars(select(AuditEvent.at).where(
                    AuditEvent.transfer_id == transfer_id, AuditEvent.type == "transfer.state.pulling")
                    .order_by(AuditEvent.seq.desc()).limit(1)).first()
                # the pulling step's duration (for the metrics): from its start to the last source
                audit.record(s, "transfer.state.mapping", actor="worker", transfer_id=transfer_id,
                             authorization_id=auth_id, step="pulling",
                             duration_s=round((utcnow() - began).total_seconds(), 3) if began else None)
    if failed:
        celery.send_task(STEP_TASK, (transfer_id, "pulling"))
    elif moved:
        log.info("transfer %s: pulling -> mapping (last source done)", transfer_id)
        celery.send_task(STEP_TASK, (transfer_id, "mapping"))


def _pull_source(svc: Services, t: Transfer, name: str, owner: str) -> None:
    cfg = svc.settings.sources[name]
    auth = t.authorization
    with svc.db.session() as s:
        src = s.scalars(select(TransferSource).filter_by(transfer_id=t.id, name=name)).one()
        src.state = "pulling"  # its last reason to wait stays shown until it is done
        done = set(s.scalars(select(Item.origin).filter_by(transfer_id=t.id, source=name)))
        follow_up = follow_ups.delivered_earlier(s, t)
        earlier = frozenset(s.scalars(select(Transfer.id).where(
            Transfer.authorization_id == t.authorization_id, Transfer.id != t.id,
            Transfer.state == "completed")))
        audit.record(s, "transfer.pull.started", actor="worker", transfer_id=t.id,
                     authorization_id=t.authorization_id, source=name, kind=cfg.kind,
                     already_fetched=len(done))
    query = policy.record_query(auth, t.id, frozenset(done), since=_since(svc, t, name),
                                earlier_transfers=earlier)
    workdir = svc.settings.work_dir / t.id / name
    lease = Lease(svc, t.id, owner, source=name)
    mapper = Mapper(svc, t)

    def on_progress(p) -> None:
        if p.total is not None and lease.due():
            with svc.db.session() as s:
                row = s.scalars(select(TransferSource).filter_by(transfer_id=t.id, name=name)).one()
                row.total = p.total
        lease.renew_if_due()

    try:
        options = sources.connector_options(svc, cfg, name)
        cursor = None
        with connector_class(cfg.kind)(name, options, workdir, on_progress) as conn:
            instances: list[Item] = []  # a study's hundreds: stored a batch a transaction
            try:
                for record in conn.fetch(query):
                    item = _item_for(svc, t, name, cfg.data_class, record, follow_up)
                    started = getattr(record, "metadata", {}).get("pull_started")
                    cursor = started if started and (cursor is None or started < cursor) else cursor
                    lease.renew_if_due()
                    if item is None:
                        continue
                    if item.kind == imaging.INSTANCE:  # mapped with their study's manifest
                        instances.append(item)
                        if len(instances) >= INSERT_BATCH:
                            _save(svc, t, name, instances)
                            instances = []
                        continue
                    for saved in _save(svc, t, name, [*instances, item]):
                        if saved.state == "pulled" and saved.kind != imaging.INSTANCE:
                            _map_now(mapper, saved.id)  # beside the other sources' pulls
                    instances = []
            finally:
                _save(svc, t, name, instances)
    except ConnectorError as exc:
        if exc.transient:
            raise ProviderUnavailable(f"source {name}: {exc}") from None
        with svc.db.session() as s:
            row = s.scalars(select(TransferSource).filter_by(transfer_id=t.id, name=name)).one()
            row.state, row.error = "failed", str(exc)
            row.lease_owner = row.lease_until = None
            audit.record(s, "transfer.pull.failed", actor="worker", transfer_id=t.id,
                         authorization_id=t.authorization_id, outcome="failure", source=name,
                         error=str(exc))
        return
    _forward_early(svc, t, name, lease)
    with svc.db.session() as s:
        row = s.scalars(select(TransferSource).filter_by(transfer_id=t.id, name=name)).one()
        rows = sorted(s.scalars(select(Item).filter_by(transfer_id=t.id, source=name)),
                      key=lambda i: i.origin)  # origins are sealed at rest: sorted once read
        items = [i for i in rows if i.kind != "gap"]  # gaps are reported, not records
        if row.lease_owner != owner:
            raise Superseded()  # taken over (this worker stalled past its lease): the new owner ends it
        row.state, row.error, row.attempts, row.next_attempt_at = "done", None, 0, None
        row.lease_owner = row.lease_until = None
        row.cursor = cursor or row.cursor
        row.items = len(items)
        row.bytes = sum(i.size for i in items)
        row.total = row.items
        digest = hashlib.sha256("".join(i.sha256 for i in items).encode()).hexdigest()
        audit.record(s, "transfer.pull.finished", actor="worker", transfer_id=t.id,
                     authorization_id=t.authorization_id, source=name, items=row.items,
                     bytes=row.bytes, rejected=sum(i.state == "failed" for i in items),
                     skipped=sum(i.kind == "skipped" for i in items),
                     gaps=len(rows) - len(items),
                     items_sha256=digest)


def _forward_early(svc: Services, t: Transfer, name: str, lease: Lease) -> None:
    """While other sources are still pulled, the instances of this source's studies (mapped
    as it was pulled) go to the recipient now, before the source is marked done: they go
    before the bundle in any case (outbound/imaging.py). The last source leaves them to
    the assembling step, which sends them while it assembles; what does not go now, that
    step and `delivering` send and report."""
    with svc.db.session() as s:
        others = s.scalars(select(TransferSource.state).where(
            TransferSource.transfer_id == t.id, TransferSource.name != name)).all()
    if all(state in FINISHED for state in others) or not imaging.settle_instances(svc, t, name):
        return
    try:
        with lease.held_while_blocked():  # a recipient slow to answer is not a dead worker
            imaging.forward(svc, t, lease.renew_if_due)
    except Exception as exc:  # noqa: BLE001 - sent again and reported on delivery
        log.info("transfer %s: images of source %s left for delivery (%s)", t.id, name,
                 type(exc).__name__)


def _map_now(mapper: Mapper, item_id: int) -> None:
    """Map a record just stored; one that cannot be mapped now (a full disk, a fault)
    stays "pulled" for the mapping step, which maps it again and reports what fails."""
    try:
        mapper.map(item_id)
    except Exception as exc:
        log.warning("transfer %s: item %d left for the mapping step (%s)", mapper.t.id,
                    item_id, type(exc).__name__)


def _since(svc: Services, t: Transfer, name: str):
    """The cursor of the newest earlier complete pull of this authorization from this source."""

    with svc.db.session() as s:
        cursor = s.scalars(
            select(TransferSource.cursor).join(Transfer)
            .where(Transfer.authorization_id == t.authorization_id, Transfer.id != t.id,
                   Transfer.state == "completed", TransferSource.name == name,
                   TransferSource.cursor.is_not(None))
            .order_by(Transfer.completed_at.desc()).limit(1)).first()
    try:
        return datetime.fromisoformat(cursor) if cursor else None
    except ValueError:
        return None


def _item_for(svc: Services, t: Transfer, source: str, data_class: str, record: Outcome,
              follow_up: bool) -> Item | None:
    """The Item for one outcome of the connector, its bytes in the blob store (None: a
    follow-up's record delivered before, dropped)."""
    if isinstance(record, RejectedRecord):  # holds the transfer up until an operator acts
        return _noted(t, source, record.origin, "rejected", "failed",
                      f"refused at the source: {record.reason}")
    if isinstance(record, SkippedRecord):  # found, deliberately not taken: reported
        return _noted(t, source, record.origin, "skipped", "excluded", record.reason)
    if isinstance(record, Gap):  # what could not be asked for or got: reported
        return _noted(t, source, f"{record.kind}:{record.what}", "gap", record.kind, record.reason)
    blob = dicom_sink.adopt(svc.blobs, record)  # received straight into the store
    if blob is None:
        blob = svc.blobs.put_file(record.path)
        record.path.unlink(missing_ok=True)
    if blob.sha256 != record.sha256:
        svc.blobs.delete(blob.key)
        raise ProviderUnavailable(f"source {source}: record changed while it was read")
    if follow_up and follow_ups.record_delivered_before(svc, t, source, record.origin, blob.sha256):
        _drop(svc, blob.key)  # a follow-up sends only what is new
        return None
    return Item(transfer_id=t.id, source=source, origin=record.origin, kind=record.kind,
                media_type=record.media_type, size=blob.size, sha256=blob.sha256,
                blob_key=blob.key, fetched_at=record.fetched_at,
                record_meta={"data_class": data_class, **record.metadata}, state="pulled")


def _save(svc: Services, t: Transfer, source: str, items: list[Item]) -> list[Item]:
    """Add the items and count them on their source, in one transaction; return those
    added. A resumed pull may meet records it already has (unique per origin): then
    each is added on its own and the ones it had are dropped."""
    if not items:
        return []
    try:
        with svc.db.session() as s:
            s.add_all(items)
            _count(s, t, source, items)
        return items
    except IntegrityError:
        if len(items) > 1:
            return [i for item in items for i in _save(svc, t, source, [item])]
        if items[0].blob_key:
            _drop(svc, items[0].blob_key)
        return []


def _count(s, t: Transfer, source: str, items: list[Item]) -> None:
    row = s.scalars(select(TransferSource).filter_by(transfer_id=t.id, name=source)).one()
    row.items += len(items)
    row.bytes += sum(i.size for i in items)


def _drop(svc: Services, key: str) -> None:
    """Delete a blob this pull stored and does not keep. One the standing DICOM receiver
    stored stays: it is shared (the item that has the record may hold that very blob)."""
    with svc.db.session() as s:
        shared = s.scalar(select(DicomArrival.id).filter_by(blob_key=key).limit(1))
    if shared is None:
        svc.blobs.delete(key)


def _noted(t: Transfer, source: str, origin: str, kind: str, state: str, reason: str) -> Item:
    """An item that carries no bytes: only what was found and why it is not delivered."""
    return Item(transfer_id=t.id, source=source, origin=origin[:1024], kind=kind, media_type="",
                size=0, sha256="", blob_key="", fetched_at=utcnow(), state=state,
                error=reason[:2000])


