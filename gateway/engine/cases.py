"""Cases: a patient's whole request under one authorization, run by itself.

A case opens when its authorization is imported (API, CLI or the intake folder): the
routing rules (routing.py) name its sources and recipient, and sources configured
`auto = "start"` are pulled at once; `review` sources wait for an operator's approval.
While the case is open, `advance` (run for every open case each `case_tick_s` by the
worker with the periodic jobs) starts what is due, pulls again on schedule, reminds
sources that have not answered, marks them overdue after their deadline, and closes
the case when its authorization expires or is revoked. Closing cancels what is in
flight. A source's status is worked out from the transfers of the case:

    requested -> receiving -> complete | no-records | overdue | failed

Every function here works inside the caller's transaction; the caller commits and
then enqueues the transfers returned (transfers.enqueue), as elsewhere in the engine.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway import audit, notify
from gateway.errors import (
    AuthorizationDenied,
    AuthorizationNotYetValid,
    Conflict,
    InvalidInput,
    NotFound,
)
from gateway.outbound.completeness import SENT_BEFORE
from gateway.runtime.services import Services
from gateway.storage.db import get_for_update
from gateway.storage.models import (
    Authorization,
    Case,
    CaseSource,
    FhirSubscription,
    Item,
    ReceivedBundle,
    Transfer,
    TransferBundle,
    TransferSource,
    new_id,
    utcnow,
)

from . import faxes, mapping, policy, routing, subscriptions, transfers

log = logging.getLogger(__name__)

STATES = ("review", "open", "closed")
SOURCE_STATES = ("requested", "receiving", "complete", "no-records", "overdue", "failed")
ANSWERED = {"complete", "no-records"}  # a case whose sources all are is complete
DOCUMENT_KINDS = mapping.DOCUMENT_KINDS  # records that are documents
RECORD_KINDS = DOCUMENT_KINDS | {"fhir-json", "dicom", "dicom-study"}
NOTHING_FOUND = "the source returned no records"  # no-records worked out, not an operator's word


@dataclass
class Advanced:
    """What one pass over a case did: transfers to enqueue once it is committed."""

    enqueue: list[str] = field(default_factory=list)  # new transfers
    wake: list[str] = field(default_factory=list)  # transfers waiting on a source, to pull now
    subscribe: list[tuple[str, str]] = field(default_factory=list)  # (source, patient's FHIR id)
    closed: bool = False  # its subscriptions are to be deleted at the sources


# --- opening ---------------------------------------------------------------------------

def open_case(svc: Services, session: Session, auth: Authorization, actor: str,
              role: str | None = None) -> tuple[Case, bool]:
    """The authorization's case, made now if it has none (True) from the routing rules."""
    case = session.scalars(select(Case).filter_by(authorization_id=auth.id)).first()
    if case is not None:
        return case, False
    route = routing.route(svc.settings, auth)
    case = Case(id=new_id(), authorization_id=auth.id, recipient=route.recipient,
                unrouted=route.unrouted, state="open")
    case.sources = [CaseSource(name=r.name, discloser=r.discloser, auto=r.auto,
                               status="requested", reminders=0, started=False)
                    for r in route.sources]
    if route.recipient and any(r.auto == "review" for r in route.sources):
        case.state = "review"
    session.add(case)
    audit.record(session, "case.opened", actor=actor, role=role, authorization_id=auth.id,
                 patient_key=policy.patient_key(auth, svc.patient_secret), case=case.id,
                 state=case.state, recipient=route.recipient,
                 sources={r.name: r.auto for r in route.sources},
                 unrouted=[{"party": u["party"], "id": u["id"]} for u in route.unrouted])
    session.flush()
    return case, True


def get(session: Session, case_id: str, lock: bool = False) -> Case:
    """The case; with `lock`, held by this transaction until it ends: two passes over one
    case (the periodic one, one a notification asked for) would each start a follow-up."""
    case = get_for_update(session, Case, case_id) if lock else session.get(Case, case_id)
    if case is None:
        raise NotFound(f"no case {case_id}")
    return case


def for_authorization(session: Session, authorization_id: str) -> Case | None:
    return session.scalars(select(Case).filter_by(authorization_id=authorization_id)).first()


# --- what operators do -----------------------------------------------------------------

def approve(session: Session, case: Case, actor: str, role: str | None = None) -> None:
    """Let the case's `review` sources start (at the next advance, or at once by the caller)."""
    if case.state != "review":
        raise Conflict(f"case {case.id} is {case.state}; only a case in review can be approved")
    case.state, case.approved_by, case.approved_at = "open", actor, utcnow()
    audit.record(session, "case.approved", actor=actor, role=role,
                 authorization_id=case.authorization_id, case=case.id)


def mark_no_records(svc: Services, session: Session, case: Case, name: str, reason: str,
                    actor: str, role: str | None = None) -> Advanced:
    """Record that a source holds nothing for this patient, and see that the recipient
    learns it: a pull still waiting on the source is finished with no records, so the
    rest of its transfer goes (`wake`, to enqueue at "pulling"); with nothing of the
    source in flight or delivered (its pull failed, or never started), a transfer of it
    with nothing pulled carries the word (`enqueue`): a bundle with no records, signed
    and receipted like any other, is how the recipient hears "no records"."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("say why the source has no records (reason)")
    if case.state == "closed":
        raise Conflict(f"case {case.id} is closed")
    source = _source(case, name)
    source.status, source.reason = "no-records", reason.strip()[:1000]
    waiting = session.scalars(
        select(TransferSource).join(Transfer)
        .where(Transfer.authorization_id == case.authorization_id, TransferSource.name == name,
               Transfer.state.in_(("pending", "pulling")), TransferSource.state != "done")).all()
    for row in waiting:
        row.state, row.error, row.items, row.bytes, row.total = "done", None, 0, 0, 0
        row.transfer.next_attempt_at = None
    done = Advanced(wake=[row.transfer_id for row in waiting])
    if (not waiting and case.state == "open" and case.recipient is not None
            and not _in_flight(session, case, [name]) and not _delivered(session, case, name)):
        done.enqueue.append(_nothing_to_send(svc, session, case, source, actor))
    audit.record(session, "case.source.no-records", actor=actor, role=role,
                 authorization_id=case.authorization_id, case=case.id, source=name,
                 reason=source.reason, transfers_released=len(waiting),
                 transfer_id=done.enqueue[0] if done.enqueue else None)
    if _check_complete(session, case, actor):
        _tell_complete(svc, session, case)
    return done


def _delivered(session: Session, case: Case, name: str) -> bool:
    """Whether a transfer of the case that pulled this source has completed."""
    return session.scalars(
        select(TransferSource.id).join(Transfer)
        .where(Transfer.authorization_id == case.authorization_id, TransferSource.name == name,
               Transfer.state == "completed")).first() is not None


def _nothing_to_send(svc: Services, session: Session, case: Case, source: CaseSource,
                     actor: str) -> str:
    """A transfer of the source with its pull already done, empty: it goes on to deliver
    a bundle whose summary says the source had no records."""
    t = transfers.create_transfer(svc, session, authorization_id=case.authorization_id,
                                  sources=[source.name], recipient=case.recipient, actor=actor)
    for row in t.sources:
        row.state, row.items, row.bytes, row.total = "done", 0, 0, 0
    source.started = True  # answered: nothing of it is to be pulled by the case now
    session.flush()
    return t.id


def close(session: Session, case: Case, reason: str, actor: str, role: str | None = None) -> int:
    """Close the case: nothing more is pulled, reminded or delivered under it; transfers in
    flight are cancelled. Returns how many were."""
    if case.state == "closed":
        return 0
    case.state, case.closed_at, case.closed_reason = "closed", utcnow(), reason[:255]
    stopped = transfers.cancel_for_authorization(session, case.authorization_id,
                                                 f"case closed: {reason}", actor)
    audit.record(session, "case.closed", actor=actor, role=role,
                 authorization_id=case.authorization_id, case=case.id, reason=reason[:255],
                 transfers_cancelled=stopped)
    return stopped


def record_expiration_event(session: Session, case: Case, event: str, actor: str,
                            role: str | None = None) -> int:
    """The authorization's expiration event happened (the opinion came back, say): close."""
    auth = session.get(Authorization, case.authorization_id)
    named = ((auth.claims or {}).get("expiration") or {}).get("event")
    if not named:
        raise Conflict(f"authorization {case.authorization_id} names no expiration event")
    return close(session, case, f"expiration event: {event[:200]}", actor, role)


# --- running by itself -----------------------------------------------------------------

def advance(svc: Services, session: Session, case: Case, now: datetime | None = None,
            actor: str = "worker") -> Advanced:
    """One pass over an open case: close it if its authorization ended, start what is
    due, pull again on schedule, remind, update each source's status."""
    now = now or utcnow()
    done = Advanced()
    if case.state == "closed":
        return done
    auth = session.get(Authorization, case.authorization_id)
    try:
        policy.check_active(auth)
    except AuthorizationNotYetValid:
        return done  # starts when it is valid
    except AuthorizationDenied as exc:
        close(session, case, _ended(auth), actor)
        log.info("case %s closed: %s", case.id, type(exc).__name__)
        done.closed = True
        return done
    if _opinion_came_back(session, case, auth):
        reason = "expiration event: the second opinion came back"
        close(session, case, reason, actor)
        done.closed = True
        return done
    if case.recipient is None:
        return done
    due = [s for s in case.sources if not s.started and _eligible(case, s)]
    if due and not _in_flight(session, case, [s.name for s in due]):
        tid = _start(svc, session, case, due, now, actor, follow_up=False)
        done.enqueue.append(tid)
        notify.publish(session, "case.started", case_id=case.id, transfer_id=tid,
                       authorization_id=case.authorization_id, state=case.state,
                       detail={"sources": len(due)}, settings=svc.settings)
    _follow_triggers(svc, session, case, now, actor, done)
    _follow_late_faxes(svc, session, case, actor, done)
    done.subscribe += _to_subscribe(svc, session, case)
    polls = [s for s in case.sources if s.started and s.next_pull_at is not None
             and s.next_pull_at <= now]
    idle = [s for s in polls if not _in_flight(session, case, [s.name])]
    if idle:
        tid = _start(svc, session, case, idle, now, actor, follow_up=True)
        done.enqueue.append(tid)
    for source in case.sources:
        done.wake += _remind(svc, session, case, source, now, actor)
        before = source.status
        _update_status(session, case, source, now)
        if source.status != before:
            audit.record(session, f"case.source.{source.status}", actor=actor,
                         authorization_id=case.authorization_id, case=case.id,
                         source=source.name, previous=before)
            if source.status == "overdue":
                notify.publish(session, "source.overdue", case_id=case.id,
                               authorization_id=case.authorization_id, state="overdue",
                               detail={"source": source.name, "previous_state": before,
                                       "due_at": source.deadline_at}, settings=svc.settings)
    if _check_complete(session, case, actor):
        _tell_complete(svc, session, case)
    return done


def follow_up(svc: Services, session: Session, case: Case, names: list[str],
              actor: str = "worker") -> str | None:
    """A follow-up transfer of what is new at these sources (new records announced by a
    subscription, or a fax that came after the first transfer); None when one is
    already in flight for them (it takes what is new too) or the case cannot send."""
    if case.state != "open" or case.recipient is None:
        return None
    auth = session.get(Authorization, case.authorization_id)
    policy.check_active(auth)
    wanted = [s for s in case.sources if s.name in names and s.started]
    if not wanted or _in_flight(session, case, [s.name for s in wanted]):
        return None
    return _start(svc, session, case, wanted, utcnow(), actor, follow_up=True)


def _follow_triggers(svc: Services, session: Session, case: Case, now: datetime, actor: str,
                     done: Advanced) -> None:
    """New records a subscription announced (or a gap it must catch up): once the oldest
    has settled for `follow_up_settle_s`, one follow-up takes everything pending, so a
    burst of changes makes one transfer. While a transfer of the source is in flight
    they wait (that one may have started before the change)."""
    pending = subscriptions.pending_triggers(session, case.id)
    if not pending or (now - pending[0].received_at).total_seconds() < svc.settings.follow_up_settle_s:
        return
    by_source: dict[str, list[int]] = {}
    for trigger in pending:
        source = session.get(FhirSubscription, trigger.subscription_id).source
        by_source.setdefault(source, []).append(trigger.id)
    tid = follow_up(svc, session, case, sorted(by_source), actor)
    if tid is not None:
        subscriptions.mark_processed(session, [i for ids in by_source.values() for i in ids])
        done.enqueue.append(tid)


def _follow_late_faxes(svc: Services, session: Session, case: Case, actor: str,
                       done: Advanced) -> None:
    """A fax matched to a finished transfer of the case (a late answer) goes in a follow-up."""
    for source in case.sources:
        cfg = svc.settings.sources.get(source.name)
        if cfg is None or cfg.kind != "fax-drop" or not source.started:
            continue
        finished = list(session.scalars(
            select(Transfer.id).join(TransferSource)
            .where(Transfer.authorization_id == case.authorization_id,
                   TransferSource.name == source.name, Transfer.state == "completed")))
        taken = set(session.scalars(
            select(Item.origin).join(Transfer, Item.transfer_id == Transfer.id)
            .where(Transfer.authorization_id == case.authorization_id, Item.source == source.name)))
        if faxes.late_faxes(svc, source.name, finished, taken):
            tid = follow_up(svc, session, case, [source.name], actor)
            if tid is not None:
                done.enqueue.append(tid)


def _to_subscribe(svc: Services, session: Session, case: Case) -> list[tuple[str, str]]:
    """FHIR sources configured for subscriptions whose first pull found the patient and
    that hold no subscription for this case yet (one refused is not asked again: the
    scheduled pulls, if configured, stand in)."""
    out = []
    for source in case.sources:
        cfg = svc.settings.sources.get(source.name)
        if cfg is None or cfg.subscriptions is None or not source.started:
            continue
        if session.scalars(select(FhirSubscription.id).filter_by(owner=case.id, source=source.name)
                           .limit(1)).first() is not None:
            continue
        patient = next((p for p in session.scalars(
            select(Item.record_meta).join(Transfer, Item.transfer_id == Transfer.id)
            .where(Transfer.authorization_id == case.authorization_id, Item.source == source.name,
                   Item.kind == "fhir-json")) if (p or {}).get("patient_id")), None)
        if patient is not None:
            out.append((source.name, patient["patient_id"]))
    return out


def _opinion_came_back(session: Session, case: Case, auth: Authorization) -> bool:
    """Whether the authorization ends on an event and a reply (the return path) answered
    one of the case's bundles: the second opinion is the event it names."""
    if not ((auth.claims or {}).get("expiration") or {}).get("event"):
        return False
    sent = select(TransferBundle.bundle_id).join(Transfer).where(
        Transfer.authorization_id == case.authorization_id)
    return session.scalars(select(ReceivedBundle.id).where(
        ReceivedBundle.in_reply_to.in_(sent), ReceivedBundle.state == "accepted")).first() is not None


def _eligible(case: Case, source: CaseSource) -> bool:
    return source.auto == "start" or (source.auto == "review" and case.approved_at is not None)


def _start(svc: Services, session: Session, case: Case, sources: list[CaseSource],
           now: datetime, actor: str, follow_up: bool) -> str:
    t = transfers.create_transfer(svc, session, authorization_id=case.authorization_id,
                                  sources=[s.name for s in sources], recipient=case.recipient,
                                  actor=actor)
    for source in sources:
        cfg = svc.settings.sources[source.name]
        if not source.started:
            source.started = True
            source.deadline_at = now + timedelta(seconds=cfg.expect_within())
            source.next_reminder_at = now + timedelta(seconds=cfg.remind_every())
        if cfg.poll_interval_s:
            source.next_pull_at = now + timedelta(seconds=cfg.poll_interval_s)
    audit.record(session, "case.follow_up" if follow_up else "case.transfer", actor=actor,
                 authorization_id=case.authorization_id, case=case.id, transfer_id=t.id,
                 sources=[s.name for s in sources])
    session.flush()
    return t.id


def _in_flight(session: Session, case: Case, names: list[str]) -> bool:
    """Whether an unfinished transfer of the case pulls one of these sources."""
    return session.scalars(
        select(TransferSource.id).join(Transfer)
        .where(Transfer.authorization_id == case.authorization_id, TransferSource.name.in_(names),
               Transfer.state.not_in(transfers.TERMINAL))).first() is not None


def _remind(svc: Services, session: Session, case: Case, source: CaseSource, now: datetime,
            actor: str) -> list[str]:
    """Before its deadline, a source that has not answered is reminded: a fax source gets
    a new request letter in the fax outbox (faxes.py), the others a pull at once. A
    reminder falls due only while a transfer pulls the source: one due before its transfer
    pulls (a busy worker) waits for it, so each reminder counted was sent."""
    if (not source.started or source.status in ANSWERED | {"failed", "overdue"}
            or source.next_reminder_at is None or source.next_reminder_at > now
            or (source.deadline_at is not None and source.deadline_at <= now)):
        return []
    waiting = session.scalars(
        select(TransferSource).join(Transfer)
        .where(Transfer.authorization_id == case.authorization_id,
               TransferSource.name == source.name, Transfer.state == "pulling",
               TransferSource.state != "done")).all()
    if not waiting:
        return []
    cfg = svc.settings.sources[source.name]
    source.reminders += 1
    source.next_reminder_at = now + timedelta(seconds=cfg.remind_every())
    woken = []
    if cfg.kind == "fax-drop":
        for row in waiting:
            faxes.write_request(svc, session, row.transfer, source.name, source.reminders)
    else:
        for row in waiting:
            row.transfer.next_attempt_at = row.next_attempt_at = None
            woken.append(row.transfer_id)
    audit.record(session, "case.source.reminded", actor=actor,
                 authorization_id=case.authorization_id, case=case.id, source=source.name,
                 reminder=source.reminders, kind=cfg.kind)
    return woken


def _update_status(session: Session, case: Case, source: CaseSource, now: datetime) -> None:
    records = _record_count(session, case, source.name)
    if source.status == "no-records" and source.reason != NOTHING_FOUND and not records:
        return  # an operator's word stands until records come after all
    rows = session.execute(
        select(TransferSource, Transfer.state).join(Transfer)
        .where(Transfer.authorization_id == case.authorization_id,
               TransferSource.name == source.name)
        .order_by(Transfer.created_at)).all()
    if any(state == "completed" and row.state == "done" for row, state in rows):
        status = "complete" if records else "no-records"
        source.reason = None if records else NOTHING_FOUND
    elif rows and (rows[-1][0].state == "failed" or rows[-1][1] == "failed"):
        latest = rows[-1][0]
        status, source.reason = "failed", (latest.error or latest.transfer.reason or "")[:1000]
    else:
        status = "receiving" if records else "requested"
        if source.deadline_at is not None and source.deadline_at <= now:
            status = "overdue"
    source.status = status


def _tell_complete(svc: Services, session: Session, case: Case) -> None:
    notify.publish(session, "case.complete", case_id=case.id, authorization_id=case.authorization_id,
                   state=case.state, detail={"sources": len(case.sources)}, settings=svc.settings)


def _check_complete(session: Session, case: Case, actor: str) -> bool:
    """Mark the case complete when every source has answered; True the first time."""
    # sources left to operators (auto "off", never started) are not the case's to wait for
    asked = [s for s in case.sources if s.started or _eligible(case, s)]
    if case.completed_at is not None or not asked:
        return False
    if all(s.status in ANSWERED for s in asked):
        case.completed_at = utcnow()
        audit.record(session, "case.complete", actor=actor,
                     authorization_id=case.authorization_id, case=case.id)
        return True
    return False


def _source(case: Case, name: str) -> CaseSource:
    for source in case.sources:
        if source.name == name:
            return source
    raise NotFound(f"case {case.id} has no source {name!r}")


def _ended(auth: Authorization) -> str:
    return "authorization revoked" if auth.status == "revoked" else "authorization expired"


# --- what a source has sent -------------------------------------------------------------

def _record_count(session: Session, case: Case, name: str) -> int:
    """How many records a source of the case has sent: counted in the database, so the
    periodic pass over every open case decrypts no item."""
    return session.scalar(
        select(func.count(Item.id)).join(Transfer, Item.transfer_id == Transfer.id)
        .where(Transfer.authorization_id == case.authorization_id, Item.source == name,
               Item.kind.in_(RECORD_KINDS)))


def source_counts(session: Session, case: Case, name: str) -> dict:
    """What a source of the case has sent so far, over all its transfers."""
    items = session.scalars(
        select(Item).join(Transfer, Item.transfer_id == Transfer.id)
        .where(Transfer.authorization_id == case.authorization_id, Item.source == name)).all()
    records = [i for i in items if i.kind in RECORD_KINDS and i.state != SENT_BEFORE]
    times = [i.fetched_at for i in records if i.fetched_at is not None]
    return {
        "records": len(records),
        "documents": sum(i.kind in DOCUMENT_KINDS for i in records),
        "resources": sum(int((i.record_meta or {}).get("resources", 0)) for i in records
                         if i.kind == "fhir-json"),
        "studies": len({(i.record_meta or {}).get("study_uid") for i in records
                        if i.kind in ("dicom", "dicom-study")} - {None}),
        "instances": sum(i.kind == "dicom" for i in records),
        "bytes": sum(i.size for i in records),
        "first": min(times).isoformat() if times else None,
        "last": max(times).isoformat() if times else None,
    }
