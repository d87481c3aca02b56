"""The transfer state machine and the Celery tasks that move it.

    pending -> pulling -> mapping -> assembling -> delivering -> awaiting_receipt -> completed
                                  (any step) -> failed | cancelled
    delivering / awaiting_receipt, retries exhausted -> dead_letter -> (replay) delivering

Each task takes a transfer id and the state it expects, claims the transfer with a
lease (a duplicate message, or the reconciler's re-enqueue, then finds it claimed or
already moved on and does nothing), re-checks the authorization, does one step,
commits, and only then enqueues the next step. A worker killed mid-step leaves a
lease that expires; the periodic reconciler re-enqueues the step, and the step's
own work is idempotent (items are unique per origin, blobs are written before the
row that names them).
"""
from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from gateway import audit, notify
from gateway.errors import (
    AuthorizationDenied,
    Conflict,
    GatewayError,
    InvalidInput,
    NotFound,
    StorageFull,
    no_space,
)
from gateway.runtime.celery_app import celery
from gateway.runtime.logs import log_context
from gateway.runtime.services import Services, services
from gateway.storage.db import get_for_update, lock_for_update
from gateway.storage.models import (
    Authorization,
    Case,
    Item,
    Transfer,
    TransferSource,
    Trigger,
    utcnow,
)

from . import policy
from .lease import Superseded, backoff, claim, held_by_dead, new_owner

log = logging.getLogger(__name__)

ORDER = ["pending", "pulling", "mapping", "assembling", "delivering", "awaiting_receipt",
         "completed"]
TERMINAL = {"completed", "failed", "cancelled"}
PARKED = {"dead_letter"}  # not terminal (can be replayed or cancelled), but nothing runs
STATES = ORDER + ["failed", "cancelled", "dead_letter"]
DELIVERY_STEPS = {"delivering", "awaiting_receipt"}
RUNNING = set(ORDER) - TERMINAL  # the states a step runs in


def percent(transfer: Transfer, items_total: int = 0, items_mapped: int = 0) -> int:
    """Overall progress 0-100 for the API, dashboard and CLI progress bar."""
    if transfer.state == "completed":
        return 100
    sources = transfer.sources or []
    if transfer.state in ("pending",):
        return 0
    if transfer.state == "pulling" or (transfer.state in ("failed", "cancelled") and not transfer.bundle_id):
        done = 0.0
        for src in sources:
            if src.state in ("done", "failed"):
                done += 1
            elif src.total:
                done += min(src.items / src.total, 1.0)
        return int(50 * done / max(len(sources), 1))
    if transfer.state == "mapping":
        return 50 + int(20 * items_mapped / max(items_total, 1))
    return {"assembling": 75, "delivering": 85, "awaiting_receipt": 95}.get(transfer.state, 95)


# --- creating and controlling transfers --------------------------------------------

def create_transfer(svc: Services, session: Session, *, authorization_id: str,
                    sources: list[str], recipient: str, actor: str,
                    role: str | None = None) -> Transfer:
    """Check the request against the authorization and configuration; add the rows.

    The caller commits, then calls `enqueue(transfer.id, "pending")`.
    """
    auth = session.get(Authorization, authorization_id)
    if auth is None:
        raise NotFound(f"no authorization {authorization_id}")
    if not sources:
        raise InvalidInput("a transfer needs at least one source")
    if len(set(sources)) != len(sources):
        raise InvalidInput("a source is named twice")
    peer = svc.settings.peers.get(recipient)
    if peer is None:
        raise InvalidInput(f"unknown recipient {recipient!r}; configured: "
                           f"{', '.join(sorted(svc.settings.peers)) or 'none'}")
    policy.check_active(auth)
    policy.covers_recipient(auth, peer)
    for name in sources:
        src = svc.settings.sources.get(name)
        if src is None:
            raise InvalidInput(f"unknown source {name!r}; configured: "
                               f"{', '.join(sorted(svc.settings.sources)) or 'none'}")
        policy.covers_source(auth, src)
    transfer = Transfer(id=uuid.uuid4().hex, authorization_id=auth.id, recipient=recipient,
                        state="pending", created_by=actor)
    transfer.sources = [TransferSource(name=n, position=i) for i, n in enumerate(sources)]
    session.add(transfer)
    audit.record(session, "transfer.created", actor=actor, role=role, transfer_id=transfer.id,
                 authorization_id=auth.id, patient_key=policy.patient_key(auth, svc.patient_secret),
                 sources=sources, recipient=recipient)
    return transfer


def cancel(session: Session, transfer_id: str, reason: str, actor: str,
           role: str | None = None) -> Transfer:
    t = _get(session, transfer_id, for_update=True)
    if t.state in TERMINAL:
        raise Conflict(f"transfer {transfer_id} is already {t.state}")
    _finish(session, t, "cancelled", reason, actor, role)
    return t


def retry(session: Session, transfer_id: str, actor: str, role: str | None = None,
          skip_failed_items: bool = False) -> Transfer:
    """Resume a failed transfer from the step that failed; caller enqueues after commit.

    Failed sources are pulled again (items already pulled are kept). With
    `skip_failed_items`, records that cannot be mapped are marked skipped (and listed
    in the log) so the rest can go.
    """
    t = _get(session, transfer_id, for_update=True)
    if t.state != "failed":
        raise Conflict(f"only a failed transfer can be retried; {transfer_id} is {t.state}")
    policy.check_active(t.authorization)
    for src in t.sources:
        if src.state == "failed":
            src.state, src.error = "pending", None
    failed_items = session.scalars(select(Item).where(Item.transfer_id == t.id,
                                                      Item.state == "failed")).all()
    for item in failed_items:
        item.state = "skipped" if skip_failed_items else "pulled"
    if any(s.state != "done" for s in t.sources):
        resume = "pulling"
    elif failed_items and not skip_failed_items:
        resume = "mapping"
    elif t.bundle_id is None:
        resume = "mapping"
    else:
        resume = "delivering" if t.receipt_jws is None else "awaiting_receipt"
    t.state, t.reason, t.attempts, t.next_attempt_at = resume, None, 0, None
    t.lease_owner = t.lease_until = None
    audit.record(session, "transfer.retried", actor=actor, role=role, transfer_id=t.id,
                 authorization_id=t.authorization_id, resume_at=resume,
                 skipped_items=len(failed_items) if skip_failed_items else 0)
    return t


def replay(session: Session, transfer_id: str, actor: str, role: str | None = None) -> Transfer:
    """Send a dead-lettered delivery again (the bundles are kept; the recipient's
    idempotency makes a repeat harmless); caller enqueues after commit."""
    t = _get(session, transfer_id, for_update=True)
    if t.state != "dead_letter":
        raise Conflict(f"only a dead-lettered transfer can be replayed; {transfer_id} is {t.state}")
    policy.check_active(t.authorization)
    last = t.reason
    t.state, t.reason, t.attempts, t.next_attempt_at = "delivering", None, 0, None
    t.lease_owner = t.lease_until = None
    audit.record(session, "transfer.replayed", actor=actor, role=role, transfer_id=t.id,
                 authorization_id=t.authorization_id, last_error=(last or "")[:300])
    return t


def cancel_for_authorization(session: Session, authorization_id: str, reason: str,
                             actor: str) -> int:
    """Revocation: stop every unfinished transfer under that authorization at once."""
    lock_for_update(session)  # a step finishing meanwhile waits, then finds it cancelled
    open_transfers = session.scalars(select(Transfer).where(
        Transfer.authorization_id == authorization_id, Transfer.state.not_in(TERMINAL))
        .with_for_update()).all()
    for t in open_transfers:
        _finish(session, t, "cancelled", reason, actor, None)
    return len(open_transfers)


def enqueue(transfer_id: str, state: str, countdown: float | None = None) -> None:
    step.apply_async((transfer_id, state), countdown=countdown)


# --- running steps -------------------------------------------------------------------

def _get(session: Session, transfer_id: str, for_update: bool = False) -> Transfer:
    """The transfer; `for_update` when the transaction writes back what it read of it (a
    step's outcome against a revocation committed meanwhile, say)."""
    t = get_for_update(session, Transfer, transfer_id) if for_update else session.get(Transfer, transfer_id)
    if t is None:
        raise NotFound(f"no transfer {transfer_id}")
    return t


def _finish(session: Session, t: Transfer, state: str, reason: str, actor: str,
            role: str | None, **timing) -> None:
    t.state, t.reason = state, reason
    t.lease_owner = t.lease_until = None
    if state == "completed":
        t.completed_at = utcnow()
    audit.record(session, f"transfer.{state}", actor=actor, role=role, transfer_id=t.id,
                 authorization_id=t.authorization_id,
                 outcome="success" if state == "completed" else "failure", reason=reason,
                 **timing)
    if state == "failed" or (state == "completed" and t.bundle_id):
        notify.publish(session, "transfer.failed" if state == "failed" else "transfer.delivered",
                       transfer_id=t.id, authorization_id=t.authorization_id, state=state,
                       detail={"recipient": t.recipient})


def _retry_after(svc: Services, exc: Exception) -> float | None:
    """The wait a recipient asked for (Retry-After on 429/503), capped by the setting:
    the next attempt of this transfer is scheduled no earlier. Other transfers are
    separate tasks, so one recipient's wait never holds up deliveries to others."""
    asked = exc.details.get("retry_after") if isinstance(exc, GatewayError) else None
    if asked is None:
        return None
    return min(float(asked), svc.settings.retry.max_retry_after_s)


def run_step(svc: Services, transfer_id: str, state: str) -> str | None:
    """Run one step; return the state it moved to (None if it did not run). Every line
    it logs names the transfer (runtime/logs.py)."""
    with log_context(transfer_id=transfer_id):
        return _run_step(svc, transfer_id, state)


def _run_step(svc: Services, transfer_id: str, state: str) -> str | None:
    from .steps import HANDLERS  # the step bodies live beside, in steps.py

    owner = new_owner()
    if not claim(svc, transfer_id, state, owner):
        return None
    actor = "worker"
    started = time.monotonic()  # the step's duration goes on its audit event (metrics)
    try:
        with svc.db.session() as s:
            policy.check_active(_get(s, transfer_id).authorization)
        next_state = HANDLERS[state](svc, transfer_id, owner)
    except Superseded:
        return None
    except AuthorizationDenied as exc:
        with svc.db.session() as s:
            t = _get(s, transfer_id, for_update=True)
            if t.state not in TERMINAL:
                _finish(s, t, "cancelled", f"authorization: {exc}", actor, None)
        return "cancelled"
    except GatewayError as exc:
        return _failed_step(svc, transfer_id, state, exc, transient=exc.transient, actor=actor,
                            duration_s=_since(started))
    except Exception as exc:  # a bug or an unforeseen fault: retried, and logged with its type
        if no_space(exc):  # a full work folder: retried like a full blob store, said plainly
            full = StorageFull("no space left on the disk of this gateway's data folder "
                               "(work folder or blob store): free space there; transfers "
                               "resume by themselves")
            return _failed_step(svc, transfer_id, state, full, transient=True, actor=actor)
        log.exception("step %s of transfer %s raised %s", state, transfer_id, type(exc).__name__)
        return _failed_step(svc, transfer_id, state, exc, transient=True, actor=actor,
                            duration_s=_since(started))
    waiting_case = None
    with svc.db.session() as s:
        t = _get(s, transfer_id, for_update=True)
        if t.state != state or t.lease_owner != owner:
            return None  # cancelled meanwhile: leave it as it is
        if next_state in TERMINAL:
            _finish(s, t, next_state, t.reason or "", actor, None, step=state,
                    duration_s=_since(started))
            waiting_case = _case_with_triggers(s, t.authorization_id)
        elif next_state == state:  # pulling: its sources' own tasks move it on (pulls.py)
            t.lease_owner = t.lease_until = None
            return None
        else:
            t.state, t.attempts, t.next_attempt_at = next_state, 0, None
            t.lease_owner = t.lease_until = None
            audit.record(s, f"transfer.state.{next_state}", actor=actor, transfer_id=t.id,
                         authorization_id=t.authorization_id, step=state,
                         duration_s=_since(started))
    if next_state not in TERMINAL:
        enqueue(transfer_id, next_state)
    if waiting_case is not None:  # announced while this one ran: the next follow-up now
        celery.send_task("gateway.cases.advance", (waiting_case,))  # (unattended.py)
    log.info("transfer %s: %s -> %s", transfer_id, state, next_state)
    return next_state


def _since(started: float) -> float:
    return round(time.monotonic() - started, 4)


def _case_with_triggers(session: Session, authorization_id: str) -> str | None:
    """The id of the transfer's case when new records it was told of wait for a follow-up
    (they wait while a transfer of the case runs; else the periodic pass finds them)."""
    return session.scalars(
        select(Case.id).join(Trigger, Trigger.owner == Case.id)
        .where(Case.authorization_id == authorization_id, Case.state == "open",
               Trigger.processed_at.is_(None)).limit(1)).first()


def _failed_step(svc: Services, transfer_id: str, state: str, exc: Exception, *,
                 transient: bool, actor: str, duration_s: float | None = None) -> str:
    message = str(exc) if isinstance(exc, GatewayError) else f"internal error ({type(exc).__name__})"
    with svc.db.session() as s:
        t = _get(s, transfer_id, for_update=True)
        if t.state != state:
            return t.state
        t.attempts += 1
        if transient and t.attempts < svc.settings.retry.max_attempts:
            asked = _retry_after(svc, exc)
            delay = max(backoff(svc.settings.retry, t.attempts), asked or 0.0)
            t.next_attempt_at = utcnow() + timedelta(seconds=delay)
            t.reason = f"retrying {state} (attempt {t.attempts}): {message}"
            t.lease_owner = t.lease_until = None
            audit.record(s, "transfer.step.retry", actor=actor, transfer_id=t.id,
                         authorization_id=t.authorization_id, outcome="failure", step=state,
                         attempt=t.attempts, error=message, delay_s=round(delay, 2),
                         retry_after_s=asked, duration_s=duration_s)
        elif transient and state in DELIVERY_STEPS:
            delay = None
            t.state, t.reason = "dead_letter", f"{state}: gave up after {t.attempts} attempts: {message}"
            t.lease_owner = t.lease_until = None
            audit.record(s, "transfer.dead_letter", actor=actor, transfer_id=t.id,
                         authorization_id=t.authorization_id, outcome="failure", step=state,
                         attempts=t.attempts, error=message, duration_s=duration_s)
            notify.publish(s, "transfer.failed", transfer_id=t.id,
                           authorization_id=t.authorization_id, state="dead_letter",
                           detail={"recipient": t.recipient, "step": state,
                                   "attempts": t.attempts}, settings=svc.settings)
            return "dead_letter"
        else:
            delay = None
            _finish(s, t, "failed", f"{state}: {message}", actor, None, step=state,
                    duration_s=duration_s)
    if delay is not None:
        enqueue(transfer_id, state, countdown=delay)
        return state
    return "failed"


@celery.task(name="gateway.transfers.step", acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def step(transfer_id: str, state: str) -> None:
    """Run the step, then the steps after it here, each as soon as the one before moves
    on (a broker round trip a step saved). Each next step's message is sent all the same
    (run_step): should this process die, it runs the step elsewhere; whichever claims a
    step first runs it, the other finds it taken or moved on. A step that failed and
    waits for its retry, or a pull that goes on in its sources' tasks, ends the chain."""
    svc = services()
    next_state = run_step(svc, transfer_id, state)
    while next_state is not None and next_state != state and next_state in RUNNING:
        state, next_state = next_state, run_step(svc, transfer_id, next_state)


@celery.task(name="gateway.transfers.reconcile", ignore_result=True)
def reconcile() -> int:
    """Re-enqueue steps whose message was lost (broker restart, killed worker)."""
    return reconcile_now(services())


def reconcile_now(svc: Services, send=None) -> int:
    """Enqueue (through `send`, default `enqueue`) every step that should be running
    but is not: no live lease (or one whose process is gone), not waiting for a retry,
    quiet for a reconcile interval (a step whose process is gone: at once). A transfer
    pulling gets its `pulling` step again, which starts the source pulls due and not held."""
    send = send or enqueue
    now = utcnow()
    quiet = now - timedelta(seconds=svc.settings.reconcile_interval_s)
    with svc.db.session() as s:
        held = s.execute(select(Transfer.id, Transfer.lease_owner).where(
            Transfer.state.not_in(TERMINAL | PARKED), Transfer.lease_until >= now)).all()
        freed = [tid for tid, owner in held if held_by_dead(owner)]  # its worker was killed
        for transfer_id, owner in held:
            if transfer_id in freed:
                s.execute(update(Transfer).where(Transfer.id == transfer_id, Transfer.lease_owner == owner)
                          .values(lease_until=None).execution_options(synchronize_session=False))
                log.info("reconciler: transfer %s was held by a process that is gone", transfer_id)
        # a source pull whose process is gone: freed, and its transfer's pulling run now
        pulls = s.execute(select(TransferSource.id, TransferSource.transfer_id, TransferSource.lease_owner)
                          .join(Transfer).where(Transfer.state == "pulling",
                                                TransferSource.lease_until >= now)).all()
        for source_id, transfer_id, owner in pulls:
            if held_by_dead(owner):
                s.execute(update(TransferSource).where(TransferSource.id == source_id,
                                                       TransferSource.lease_owner == owner)
                          .values(lease_until=None).execution_options(synchronize_session=False))
                freed.append(transfer_id)
                log.info("reconciler: a source of transfer %s was held by a process that is gone",
                         transfer_id)
        stuck = s.execute(select(Transfer.id, Transfer.state).where(
            Transfer.state.not_in(TERMINAL | PARKED),
            or_(Transfer.lease_until.is_(None), Transfer.lease_until < now),
            or_(Transfer.next_attempt_at.is_(None), Transfer.next_attempt_at <= now),
            or_(Transfer.updated_at < quiet, Transfer.id.in_(freed)))).all()
    for transfer_id, state in stuck:
        send(transfer_id, state)
    if stuck:
        log.info("reconciler re-enqueued %d transfer step(s)", len(stuck))
    return len(stuck)
