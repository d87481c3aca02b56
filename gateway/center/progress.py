"""Where each provider's answer stands, worked out by the periodic pass.

What arrived is counted once (a CenterArrival a bundle or a fax): a bundle the
receiving side accepted from the provider's organization whose Consent names the
request's authorization (ReceivedBundle.consent_id), or a faxed reply whose cover
sheet names the provider's row (faxes.py). Counts are of kinds only (resource types,
documents, faxes), never content. A provider's whole submission makes it complete, or
"no-records" when it carried no record. Without an answer by its deadline a provider is
overdue; before that it is reminded every `remind_every_s`: a fax provider gets the
request again in the outbox, a gateway the authorization again (harmless: it finds the
stored one). The request is complete when every provider is complete or has none,
expired when its authorization is.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway import audit
from gateway.exchange.manifest import MANIFEST_TYPE
from gateway.exchange.structure import SUMMARY_TYPE
from gateway.runtime.services import Services
from gateway.storage.db import get_for_update
from gateway.storage.models import (
    CenterArrival,
    CenterProvider,
    CenterRequest,
    ReceivedBundle,
    utcnow,
)

from .requests import ANSWERED

log = logging.getLogger(__name__)

STRUCTURE = {"Patient", "Consent", "Provenance", "List", "Composition", "Binary", "Bundle"}
OWN_DOCUMENTS = {SUMMARY_TYPE["code"], MANIFEST_TYPE["code"]}  # ours, not the provider's records


def bundle_counts(bundle: dict) -> dict:
    """Kinds of what a bundle carries: record resources by type, and documents."""
    by_type: dict[str, int] = {}
    documents = 0
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or rtype in STRUCTURE:
            continue
        if rtype == "DocumentReference":
            codes = {c.get("code") for c in ((resource.get("type") or {}).get("coding") or [])}
            if codes & OWN_DOCUMENTS:
                continue
            documents += 1
        by_type[rtype] = by_type.get(rtype, 0) + 1
    return {"documents": documents, "resources": sum(by_type.values()), "byType": by_type}


def _add(total: dict, counts: dict) -> dict:
    out = {k: v for k, v in (total or {}).items() if k != "byType"}
    by_type = dict((total or {}).get("byType") or {})
    for k, v in counts.items():
        if k == "byType":
            for t, n in v.items():
                by_type[t] = by_type.get(t, 0) + n
        else:
            out[k] = out.get(k, 0) + v
    return {**out, "byType": by_type}


def take_bundles(svc: Services, session: Session, row: CenterRequest) -> int:
    """Count the accepted bundles of this request not counted yet; how many were."""
    orgs = {p.organization: p for p in row.providers}
    taken = 0
    for bundle in session.scalars(select(ReceivedBundle).where(
            ReceivedBundle.consent_id == row.authorization_id, ReceivedBundle.state == "accepted",
            ReceivedBundle.sender_org.in_(list(orgs)))):
        if session.scalar(select(CenterArrival.id).filter_by(kind="bundle", ref=bundle.id)):
            continue
        p = orgs[bundle.sender_org]
        counts = bundle_counts(json.loads(svc.blobs.read_bytes(bundle.blob_key)))
        counts["bundles"] = 1
        session.add(CenterArrival(provider_id=p.id, kind="bundle", ref=bundle.id, counts=counts))
        p.counts = _add(p.counts, counts)
        if _whole(session, bundle):
            p.status = "complete" if p.counts.get("resources") else "no-records"
        elif p.status not in ANSWERED:
            p.status = "receiving"
        audit.record(session, "center.provider.received", actor="worker",
                     authorization_id=row.authorization_id, request=row.id, provider=p.name,
                     bundle=bundle.id, status=p.status, documents=counts["documents"],
                     resources=counts["resources"])
        taken += 1
    return taken


def _whole(session: Session, bundle: ReceivedBundle) -> bool:
    """Whether every part of the bundle's submission has arrived."""
    if bundle.parts <= 1 or not bundle.submission_group:
        return True
    got = session.scalar(select(func.count(func.distinct(ReceivedBundle.part))).where(
        ReceivedBundle.sender == bundle.sender, ReceivedBundle.state == "accepted",
        ReceivedBundle.submission_group == bundle.submission_group))
    return got >= bundle.parts


def take_fax(session: Session, provider_id: str, fax_id: str, pages: int | None) -> bool:
    """A faxed reply matched to a provider's cover sheet: counted once, and it answers."""
    p = session.get(CenterProvider, provider_id)
    if p is None or session.scalar(select(CenterArrival.id).filter_by(kind="fax", ref=fax_id)):
        return False
    counts = {"faxes": 1, "documents": 1, **({"pages": pages} if pages else {})}
    session.add(CenterArrival(provider_id=p.id, kind="fax", ref=fax_id, counts=counts))
    p.counts = _add(p.counts, counts)
    p.status = "complete"
    audit.record(session, "center.provider.received", actor="worker",
                 authorization_id=p.request.authorization_id, request=p.request_id,
                 provider=p.name, fax_id=fax_id, status=p.status)
    return True


def due(svc: Services, session: Session, row: CenterRequest, now: datetime) -> list[tuple[str, int]]:
    """Overdue providers marked; those to remind returned as (provider id, reminder)."""
    remind = []
    for p in row.providers:
        if p.status not in ("sent", "acknowledged") or p.deadline_at is None:
            continue
        if p.deadline_at <= now:
            p.status = "overdue"
            audit.record(session, "center.provider.overdue", actor="worker",
                         authorization_id=row.authorization_id, request=row.id, provider=p.name)
        elif p.next_reminder_at is not None and p.next_reminder_at <= now:
            cfg = svc.settings.center.providers[p.name]
            p.reminders += 1
            p.next_reminder_at = now + timedelta(seconds=cfg.remind_every())
            audit.record(session, "center.provider.reminded", actor="worker",
                         authorization_id=row.authorization_id, request=row.id, provider=p.name,
                         reminder=p.reminders)
            remind.append((p.id, p.reminders))
    return remind


def settle(session: Session, row: CenterRequest, now: datetime) -> None:
    """The request's own state: opened by the center's staff, complete, expired."""
    if row.opened_at is None:
        opened = session.scalar(select(func.min(ReceivedBundle.opened_at)).where(
            ReceivedBundle.consent_id == row.authorization_id))
        if opened is not None:
            row.opened_at = opened
    if row.state != "open":
        return
    if row.expires_at <= now:
        row.state = "expired"
        audit.record(session, "center.request.expired", actor="worker",
                     authorization_id=row.authorization_id, request=row.id)
    elif row.providers and all(p.status in ANSWERED for p in row.providers):
        row.state, row.completed_at = "complete", now
        audit.record(session, "center.request.complete", actor="worker",
                     authorization_id=row.authorization_id, request=row.id)


def advance(svc: Services, request_id: str, now: datetime | None = None) -> list[tuple[str, int]]:
    """One pass over one request (committed); returns the reminders to send."""
    now = now or utcnow()
    with svc.db.session() as s:
        # held: a revocation meanwhile waits, then finds what this pass wrote
        row = get_for_update(s, CenterRequest, request_id)
        if row is None or row.state not in ("open", "complete"):
            return []
        take_bundles(svc, s, row)
        remind = due(svc, s, row, now) if row.state == "open" else []
        settle(s, row, now)
        return remind
