"""Auditor queries over the log: events by patient, transfer, authorization, actor, time;
a transfer's whole chain with each event's inclusion proof."""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from gateway.errors import NotFound
from gateway.storage.models import AuditEvent

from . import checkpoints, log
from .canonical import event_fields

MAX_LIMIT = 10_000
log_damaged = logging.getLogger("gateway.audit")


def find_events(session: Session, *, patient_key: str | None = None,
                transfer_id: str | None = None, authorization_id: str | None = None,
                actor: str | None = None, type_prefix: str | None = None,
                since: datetime | None = None, until: datetime | None = None,
                after_seq: int = 0, limit: int = 1000) -> list[AuditEvent]:
    """Events matching every given filter, in log order; page with `after_seq`.
    `since` is inclusive, `until` exclusive. `patient_key` matches events that carry it
    and events under any authorization logged with it (transfer steps name only the
    transfer and its authorization)."""
    stmt = select(AuditEvent).where(AuditEvent.seq > after_seq)
    if patient_key:
        stmt = stmt.where(or_(AuditEvent.patient_key == patient_key,
                              AuditEvent.authorization_id.in_(_authorizations_of(patient_key))))
    if transfer_id:
        stmt = stmt.where(AuditEvent.transfer_id == transfer_id)
    if authorization_id:
        stmt = stmt.where(AuditEvent.authorization_id == authorization_id)
    if actor:
        stmt = stmt.where(AuditEvent.actor == actor)
    if type_prefix:
        stmt = stmt.where(AuditEvent.type.startswith(type_prefix, autoescape=True))
    if since:
        stmt = stmt.where(AuditEvent.at >= since)
    if until:
        stmt = stmt.where(AuditEvent.at < until)
    limit = max(1, min(int(limit), MAX_LIMIT))
    return list(session.execute(stmt.order_by(AuditEvent.seq).limit(limit)).scalars())


def _authorizations_of(patient_key: str):
    return (select(AuditEvent.authorization_id).distinct()
            .where(AuditEvent.patient_key == patient_key, AuditEvent.authorization_id.is_not(None)))


def iter_events(session: Session, batch: int = 5000, **filters) -> Iterator[AuditEvent]:
    """Every matching event, fetched in pages (for exports of the whole log)."""
    after = 0
    while True:
        page = find_events(session, after_seq=after, limit=batch, **filters)
        yield from page
        if len(page) < batch:
            return
        after = page[-1].seq


def entry(event: AuditEvent, proof: dict | None = None) -> dict:
    """One log entry as exported: the event's logged fields, its leaf hash, its proof."""
    out = {"event": event_fields(event), "leaf_hash": event.leaf_hash}
    if proof is not None:
        out["inclusion_proof"] = proof
    return out


def proofs_for(session: Session, seqs: Sequence[int], tree_size: int) -> dict[int, dict]:
    """Inclusion proofs for many events against one tree size, with one batched read."""
    tree = log.StoredTree(session, tree_size)
    wanted = [s for s in seqs if 1 <= s <= tree_size]
    tree.prefetch([r for s in wanted for r in log.merkle.inclusion_ranges(s - 1, tree_size)],
                  strict=False)
    out = {}
    for s in wanted:
        try:
            out[s] = {"tree_size": tree_size, "path": [h.hex() for h in tree.inclusion_proof(s)]}
        except NotFound:
            log_damaged.warning("audit tree damaged: no inclusion proof for seq %d", s)
    return out


def with_proofs(session: Session, events: Sequence[AuditEvent], tree_size: int | None) -> list[dict]:
    """Entries for `events`; those inside `tree_size` carry an inclusion proof against it."""
    proofs = proofs_for(session, [e.seq for e in events], tree_size) if tree_size else {}
    return [entry(e, proofs.get(e.seq)) for e in events]


def transfer_chain(session: Session, transfer_id: str) -> dict:
    """Authorization -> pulls -> bundle -> delivery -> receipts for one transfer, each event
    with its inclusion proof against the latest signed checkpoint (events logged after it
    have none until the next checkpoint)."""
    own = find_events(session, transfer_id=transfer_id, limit=MAX_LIMIT)
    if not own:
        raise NotFound(f"no audit events for transfer {transfer_id}")
    auth_ids = sorted({e.authorization_id for e in own if e.authorization_id})
    stmt = select(AuditEvent).where(or_(
        AuditEvent.transfer_id == transfer_id,
        and_(AuditEvent.transfer_id.is_(None), AuditEvent.authorization_id.in_(auth_ids))))
    events = list(session.execute(stmt.order_by(AuditEvent.seq).limit(MAX_LIMIT)).scalars())
    cp = checkpoints.latest_checkpoint(session)
    size = cp["tree_size"] if cp else None
    return {"transfer_id": transfer_id, "authorization_ids": auth_ids, "checkpoint": cp,
            "events": with_proofs(session, events, size)}
