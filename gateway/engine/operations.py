"""What an operator can do, in one place for the API and the command line.

Each function opens its own transaction, commits, and enqueues follow-up work only
after the commit. Views return plain dicts for JSON.
"""
from __future__ import annotations

from sqlalchemy import func, select

from gateway.errors import GatewayError, NotFound
from gateway.outbound import completeness
from gateway.runtime.services import Services
from gateway.storage.models import Authorization, Item, Transfer, TransferBundle, TransferUpload
from gateway.trust import authorizations
from gateway.trust.issuers import TrustStore

from . import transfers


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
    trust = trust_store(svc)
    with svc.db.session() as s:
        try:
            return authorizations.import_authorization(s, jws, trust, actor=actor, role=role,
                                                       patient_secret=svc.patient_secret)
        except GatewayError:
            s.commit()  # keep the rejection on the audit log
            raise


def revoke_authorization(svc: Services, authorization_id: str, reason: str, actor: str,
                         role: str | None = None) -> tuple[Authorization, int]:
    """Revoke, and cancel every transfer in flight under it in the same transaction."""
    with svc.db.session() as s:
        row = authorizations.revoke(s, authorization_id, reason, actor=actor, role=role)
        stopped = transfers.cancel_for_authorization(
            s, authorization_id, f"authorization revoked: {row.revoked_reason}", actor)
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


def transfer_view(s, t: Transfer, items: bool = False) -> dict:
    counts = dict(s.execute(select(Item.state, func.count()).filter_by(transfer_id=t.id)
                            .group_by(Item.state)).all())
    total = sum(counts.values())
    view = {
        "id": t.id, "authorization": t.authorization_id, "recipient": t.recipient,
        "state": t.state, "reason": t.reason,
        "percent": transfers.percent(t, total, total - counts.get("pulled", 0)),
        "createdAt": t.created_at.isoformat() if t.created_at else None,
        "completedAt": t.completed_at.isoformat() if t.completed_at else None,
        "sources": [{"name": src.name, "state": src.state, "items": src.items,
                     "bytes": src.bytes, "total": src.total, "error": src.error}
                    for src in t.sources],
        "items": counts,
        # per source: found, delivered, refused (by reason), and what could not be asked for
        "completeness": completeness.report(
            t.sources, s.scalars(select(Item).filter_by(transfer_id=t.id))),
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
