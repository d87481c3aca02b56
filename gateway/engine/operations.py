"""What an operator can do, in one place for the API and the command line.

Each function opens its own transaction, commits, and enqueues follow-up work only
after the commit. Views return plain dicts for JSON.
"""
from __future__ import annotations

import logging

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from gateway.errors import GatewayError, InvalidInput, NotFound
from gateway.outbound import completeness
from gateway.runtime.logs import log_context
from gateway.runtime.services import Services
from gateway.storage.models import (
    Authorization,
    Case,
    Item,
    Transfer,
    TransferBundle,
    TransferUpload,
)
from gateway.trust import authorizations
from gateway.trust.issuers import TrustStore

from . import cases, subscriptions, transfers

log = logging.getLogger(__name__)


def trust_store(svc: Services) -> TrustStore:
    return TrustStore.load(svc.settings.issuers_file)


def authorization_view(row: Authorization, full: bool = False) -> dict:
    view = {"id": row.id, "issuer": row.issuer, "status": row.status,
            "recipient": row.recipient_id,
            "disclosers": [d["id"] for d in row.claims.get("disclosers", [])],
            "dataClasses": row.claims.get("information", {}).get("dataClasses", []),
            "notBefore": row.not_before.isoformat() if row.not_before else None,
            "expiresAt": row.expires_at.isoformat() if row.expires_at else None,
            "revokedAt": row.revoked_at.isoformat() if row.revoked_at else None,
            "revokedReason": row.revoked_reason, "jwsSha256": row.jws_sha256}
    if full:  # patient data: only for endpoints that audit the read
        view["claims"] = row.claims
        view["consent"] = row.consent
    return view


def import_authorization(svc: Services, jws: str, actor: str, role: str | None = None) -> Authorization:
    """Verify and store a signed authorization, then open its case (which starts the
    sources the routing rules let start by themselves)."""
    trust = trust_store(svc)
    with svc.db.session() as s:
        try:
            row = authorizations.import_authorization(s, jws, trust, actor=actor, role=role,
                                                      patient_secret=svc.patient_secret)
        except GatewayError:
            s.commit()  # keep the rejection on the audit log
            raise
    open_case(svc, row.id, actor, role)
    return row


def revoke_authorization(svc: Services, authorization_id: str, reason: str, actor: str,
                         role: str | None = None) -> tuple[Authorization, int]:
    """Revoke, and cancel every transfer in flight under it in the same transaction."""
    with svc.db.session() as s:
        row = authorizations.revoke(s, authorization_id, reason, actor=actor, role=role)
        stopped = transfers.cancel_for_authorization(
            s, authorization_id, f"authorization revoked: {row.revoked_reason}", actor)
        case = cases.for_authorization(s, authorization_id)
        if case is not None:
            cases.close(s, case, "authorization revoked", actor, role)
    if case is not None:
        _unsubscribe(svc, case.id)
    return row, stopped


def create_transfer(svc: Services, authorization_id: str, sources: list[str], recipient: str,
                    actor: str, role: str | None = None) -> dict:
    with svc.db.session() as s:
        t = transfers.create_transfer(svc, s, authorization_id=authorization_id, sources=sources,
                                      recipient=recipient, actor=actor, role=role)
        s.flush()
        view = transfer_view(s, t)
    transfers.enqueue(view["id"], "pending")
    return view


def retry_transfer(svc: Services, transfer_id: str, actor: str, role: str | None = None,
                   skip_failed_items: bool = False) -> dict:
    with svc.db.session() as s:
        t = transfers.retry(s, transfer_id, actor, role, skip_failed_items=skip_failed_items)
        state = t.state
        view = transfer_view(s, t)
    transfers.enqueue(transfer_id, state)
    return view


def replay_transfer(svc: Services, transfer_id: str, actor: str, role: str | None = None) -> dict:
    """Replay a dead-lettered delivery."""
    with svc.db.session() as s:
        t = transfers.replay(s, transfer_id, actor, role)
        view = transfer_view(s, t)
    transfers.enqueue(transfer_id, "delivering")
    return view


def cancel_transfer(svc: Services, transfer_id: str, reason: str, actor: str,
                    role: str | None = None) -> dict:
    with svc.db.session() as s:
        t = transfers.cancel(s, transfer_id, reason, actor, role)
        return transfer_view(s, t)


def get_transfer(svc: Services, transfer_id: str) -> dict:
    with svc.db.session() as s:
        t = s.get(Transfer, transfer_id)
        if t is None:
            raise NotFound(f"no transfer {transfer_id}")
        return transfer_view(s, t, items=True)


def list_transfers(svc: Services, state: str | None = None, authorization_id: str | None = None,
                   limit: int = 100) -> list[dict]:
    with svc.db.session() as s:
        q = select(Transfer).order_by(Transfer.created_at.desc()).limit(min(max(limit, 1), 1000))
        if state:
            q = q.where(Transfer.state == state)
        if authorization_id:
            q = q.where(Transfer.authorization_id == authorization_id)
        return [transfer_view(s, t) for t in s.scalars(q)]


def stuck_reason(t: Transfer) -> str | None:
    """The transfer's reason; while it pulls with none of its own, why its unfinished
    sources wait (a full disk, a server down): each source retries in its own task, so
    the transfer row itself never records it."""
    if t.reason or t.state != "pulling":
        return t.reason
    waiting = [f"source {src.name}: {src.error}" for src in t.sources
               if src.state not in ("done", "failed") and src.error]
    return "; ".join(waiting) or None


def transfer_view(s, t: Transfer, items: bool = False, completeness_report: bool = True) -> dict:
    counts = dict(s.execute(select(Item.state, func.count()).filter_by(transfer_id=t.id)
                            .group_by(Item.state)).all())
    total = sum(counts.values())
    view = {
        "id": t.id, "authorization": t.authorization_id, "recipient": t.recipient,
        "state": t.state, "reason": stuck_reason(t),
        "percent": transfers.percent(t, total, total - counts.get("pulled", 0)),
        "createdAt": t.created_at.isoformat() if t.created_at else None,
        "completedAt": t.completed_at.isoformat() if t.completed_at else None,
        "sources": [{"name": src.name, "state": src.state, "items": src.items,
                     "bytes": src.bytes, "total": src.total, "error": src.error}
                    for src in t.sources],
        "items": counts,
        # per source: found, delivered, refused (by reason), and what could not be asked for
        "completeness": completeness.report(
            t.sources, s.scalars(select(Item).filter_by(transfer_id=t.id)))
        if completeness_report else None,
        "bundle": ({"id": t.bundle_id, "sha256": t.bundle_sha256, "size": t.bundle_size}
                   if t.bundle_id else None),
        "receipt": t.receipt,
        # large documents sent before their bundles: how many the recipient holds
        "uploads": dict(s.execute(select(TransferUpload.state, func.count())
                                  .filter_by(transfer_id=t.id).group_by(TransferUpload.state)).all()),
        "bundles": [{"part": b.part, "parts": b.parts, "id": b.bundle_id, "sha256": b.sha256,
                     "size": b.size, "entries": b.entries, "state": b.state,
                     "signedReceipt": b.state == "receipted",
                     "receiptId": (b.receipt or {}).get("receipt_id"),
                     "attachments": b.attachments or {},  # documents uploaded before it
                     "opened": b.opened}
                    for b in s.scalars(select(TransferBundle).filter_by(transfer_id=t.id)
                                       .order_by(TransferBundle.part))],
    }
    if items:
        view["itemList"] = [
            {"source": i.source, "origin": i.origin, "kind": i.kind, "size": i.size,
             "sha256": i.sha256, "state": i.state, "error": i.error, "dataClass": i.data_class,
             **({"forwarded": i.forward_status} if i.kind == "dicom" else {})}
            for i in s.scalars(select(Item).filter_by(transfer_id=t.id).order_by(Item.id))]
    return view


# --- cases -----------------------------------------------------------------------------

def open_case(svc: Services, authorization_id: str, actor: str, role: str | None = None) -> dict:
    """The authorization's case, opened now if it has none, its due sources started."""
    try:
        with svc.db.session() as s:
            auth = s.get(Authorization, authorization_id)
            if auth is None:
                raise NotFound(f"no authorization {authorization_id}")
            case, created = cases.open_case(svc, s, auth, actor, role)
            done = cases.advance(svc, s, case, actor=actor) if created else cases.Advanced()
            view = case_view(s, case)
    except IntegrityError:  # opened at the same moment by another import: that one stands
        with svc.db.session() as s:
            return case_view(s, cases.for_authorization(s, authorization_id))
    _enqueue(svc, view["id"], done)
    return view


def advance_case(svc: Services, case_id: str, actor: str = "worker") -> dict:
    """One pass over a case (cases.advance); every line it logs names the case."""
    with log_context(case_id=case_id):
        with svc.db.session() as s:
            case = cases.get(s, case_id, lock=True)
            done = cases.advance(svc, s, case, actor=actor)
            view = case_view(s, case)
        _enqueue(svc, case_id, done)
    return view


def approve_case(svc: Services, case_id: str, actor: str, role: str | None = None) -> dict:
    with svc.db.session() as s:
        case = cases.get(s, case_id, lock=True)
        cases.approve(s, case, actor, role)
        done = cases.advance(svc, s, case, actor=actor)
        view = case_view(s, case)
    _enqueue(svc, case_id, done)
    return view


def mark_no_records(svc: Services, case_id: str, source: str, reason: str, actor: str,
                    role: str | None = None) -> dict:
    with svc.db.session() as s:
        case = cases.get(s, case_id, lock=True)
        done = cases.mark_no_records(svc, s, case, source, reason, actor, role)
        view = case_view(s, case)
    _enqueue(svc, case_id, done)
    return view


def close_case(svc: Services, case_id: str, actor: str, role: str | None = None, *,
               reason: str | None = None, event: str | None = None) -> dict:
    """Close a case, for a reason or because the authorization's expiration event happened."""
    if not (reason or event) or not isinstance(reason or event, str):
        raise InvalidInput("say why the case closes (reason), or which expiration event happened (event)")
    with svc.db.session() as s:
        case = cases.get(s, case_id, lock=True)
        if event:
            cases.record_expiration_event(s, case, event, actor, role)
        else:
            cases.close(s, case, reason, actor, role)
        view = case_view(s, case)
    _unsubscribe(svc, case_id)
    return view


def get_case(svc: Services, case_id: str) -> dict:
    with svc.db.session() as s:
        return case_view(s, cases.get(s, case_id))


def list_cases(svc: Services, state: str | None = None, limit: int = 100) -> list[dict]:
    if state is not None and state not in cases.STATES:
        raise InvalidInput(f"state must be one of {', '.join(cases.STATES)}")
    with svc.db.session() as s:
        q = select(Case).order_by(Case.created_at.desc()).limit(min(max(limit, 1), 1000))
        if state:
            q = q.where(Case.state == state)
        return [case_view(s, c, full=False) for c in s.scalars(q)]


def _enqueue(svc: Services, case_id: str, done: cases.Advanced) -> None:
    """After the commit: the new transfers start, those a reminder woke pull again, the
    sources' subscriptions are made (or deleted, when the case closed)."""
    for tid in done.enqueue:
        transfers.enqueue(tid, "pending")
    for tid in done.wake:
        transfers.enqueue(tid, "pulling")
    for source, patient_id in done.subscribe:
        try:
            subscriptions.subscribe(svc, case_id, source, patient_id)
        except GatewayError as exc:  # the scheduled pulls, if any, still find what is new
            log.warning("case %s: no subscription at source %s: %s", case_id, source, exc)
    if done.closed:
        _unsubscribe(svc, case_id)


def _unsubscribe(svc: Services, case_id: str) -> None:
    try:
        subscriptions.unsubscribe_owner(svc, case_id)
    except GatewayError as exc:  # the source stops by itself at the authorization's end
        log.warning("case %s: subscriptions not all deleted at the source yet: %s", case_id, exc)


def case_view(s, case: Case, full: bool = True) -> dict:
    """A case for the API and CLI: ids, states, counts and times only (no patient data)."""
    runs = s.scalars(select(Transfer).where(Transfer.authorization_id == case.authorization_id)
                     .order_by(Transfer.created_at)).all()
    view = {
        "id": case.id, "authorization": case.authorization_id, "state": case.state,
        "complete": case.completed_at is not None, "recipient": case.recipient,
        "unrouted": case.unrouted or [],
        "createdAt": _iso(case.created_at), "completedAt": _iso(case.completed_at),
        "closedAt": _iso(case.closed_at), "closedReason": case.closed_reason,
        "approval": ({"by": case.approved_by, "at": _iso(case.approved_at)} if case.approved_at
                     else "pending" if case.state == "review" else None),
        "sources": [],
    }
    for src in case.sources:
        row = {"name": src.name, "discloser": src.discloser, "auto": src.auto,
               "status": src.status, "reason": src.reason, "started": src.started,
               "deadline": _iso(src.deadline_at), "reminders": src.reminders,
               "nextPull": _iso(src.next_pull_at)}
        if full:
            counts = cases.source_counts(s, case, src.name)
            row["counts"] = {k: counts[k] for k in ("documents", "resources", "studies",
                                                   "instances", "bytes")}
            row["firstRecordAt"], row["lastRecordAt"] = counts["first"], counts["last"]
        view["sources"].append(row)
    if full:
        view["transfers"] = [{**{k: tv[k] for k in ("id", "state", "percent", "createdAt",
                                                    "completedAt", "reason")},
                              "followUp": i > 0, "sources": [x["name"] for x in tv["sources"]],
                              "receipt": bool(tv["receipt"])}
                             for i, tv in enumerate(transfer_view(s, t, completeness_report=False)
                                                    for t in runs)]
        active = [t["percent"] for t in view["transfers"]
                  if t["state"] not in transfers.TERMINAL | transfers.PARKED]
        view["percent"] = min(active) if active else 100
    return view


def _iso(value) -> str | None:
    return value.isoformat() if value else None
