"""The patient's status page, as data: what the holder of a status link may see.

Minimum necessary: per provider, its name, where its answer stands, what arrived in
counts and kinds (never content), whether it is late; whether the center has opened the
records and whether the written opinion is ready. No name, birth date or identifier of
the patient: the link is all a reader has. Every view is audited, and so is a refused
link (without the link itself)."""
from __future__ import annotations

from gateway import audit
from gateway.errors import Forbidden
from gateway.runtime.services import Services
from gateway.storage.models import CenterRequest, utcnow

from . import requests as reqs
from . import tokens

WORDS = {"pending": "being sent", "sent": "asked", "acknowledged": "asked; they received the request",
         "receiving": "records arriving", "complete": "all records received",
         "no-records": "they hold no records for you", "overdue": "late: no answer yet",
         "refused": "they turned the request down; the center will contact you"}


def view(row: CenterRequest) -> dict:
    now = utcnow()
    providers = []
    for p in row.providers:
        arrived = p.counts or {}
        providers.append({
            "name": p.name, "status": p.status, "says": WORDS.get(p.status, p.status),
            "late": p.status == "overdue" or (p.deadline_at is not None and p.deadline_at <= now
                                              and p.status not in reqs.ANSWERED),
            "dueAt": reqs._iso(p.deadline_at) if p.status not in reqs.ANSWERED else None,
            "arrived": {"documents": arrived.get("documents", 0),
                        "resources": arrived.get("resources", 0),
                        "faxes": arrived.get("faxes", 0),
                        "kinds": dict(sorted((arrived.get("byType") or {}).items()))}})
    return {"reference": reqs.reference(row.id), "state": row.state,
            "createdAt": reqs._iso(row.created_at), "completedAt": reqs._iso(row.completed_at),
            "openedByCenter": row.opened_at is not None, "openedAt": reqs._iso(row.opened_at),
            "opinionReady": row.opinion_ready_at is not None,
            "opinionReadyAt": reqs._iso(row.opinion_ready_at),
            "revoked": row.state == "revoked", "revokedAt": reqs._iso(row.revoked_at),
            "expiresAt": reqs._iso(row.expires_at), "providers": providers}


def for_link(svc: Services, token, actor: str = "patient", what: str = "json") -> dict:
    """The status a link opens (audited), or Forbidden (audited too)."""
    with svc.db.session() as s:
        try:
            request_id = tokens.status_request(s, token)
        except Forbidden:
            audit.record(s, "center.status.refused", actor=actor, outcome="deny")
            s.commit()
            raise
        row = reqs.get(s, request_id)
        out = view(row)
        names = svc.settings.center.providers
        for entry, p in zip(out["providers"], row.providers):
            entry["name"] = names[p.name].name if p.name in names else p.name
        audit.record(s, "center.status.viewed", actor=actor, role="patient", request=row.id,
                     authorization_id=row.authorization_id, view=what)
        return out


def revoke_by_link(svc: Services, token, actor: str = "patient") -> tuple[str, list[str]]:
    """The patient's "revoke my authorization": (request id, providers to tell)."""
    with svc.db.session() as s:
        try:
            request_id = tokens.status_request(s, token)
        except Forbidden:
            audit.record(s, "center.status.refused", actor=actor, outcome="deny", action="revoke")
            s.commit()
            raise
    return request_id, reqs.revoke(svc, request_id, actor, role="patient")
