"""A center request: made once from the patient's form, then sent and tracked.

`create` takes the form's one-time token, checks every field, renders the signed form
as a PDF, signs the authorization with the intake issuer key and stores the request with
a row per provider (status "pending"); after the commit the caller enqueues one send
task per provider and the status-link mail (tasks.py). Nothing is signed or sent when
the token or any field is wrong.

Provider status: pending -> sent -> acknowledged -> receiving -> complete | no-records,
overdue after its deadline without an answer, refused when the provider turned the
request down. A request is complete when every provider is complete or has none.
"""
from __future__ import annotations

import base64
import hashlib
import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway import audit
from gateway.errors import ConfigError, Conflict, Forbidden, InvalidInput, NotFound
from gateway.runtime.services import Services
from gateway.storage.db import get_for_update
from gateway.storage.models import CenterProvider, CenterRequest, utcnow
from gateway.trust.authorizations import sign_authorization, sign_revocation, validate_claims

from . import form as form_mod
from . import pdf, tokens
from .keys import intake_key

STATES = ("open", "complete", "revoked", "expired")
PROVIDER_STATES = ("pending", "sent", "acknowledged", "receiving", "complete", "no-records",
                   "overdue", "refused")
ANSWERED = {"complete", "no-records"}


def center(svc: Services):
    if svc.settings.center is None:
        raise ConfigError("this gateway has no second-opinion center configured ([center])")
    return svc.settings.center


def check_organization(svc: Services, organization: str | None) -> None:
    """The center's requests are this gateway's organization's: staff scoped to another
    organization (a recipient of another center) may neither see nor make any."""
    if organization is not None and organization != svc.settings.organization:
        raise Forbidden("Not allowed: the requests here are another organization's")


def reference(request_id: str) -> str:
    """The short reference printed on the form and quoted to the patient."""
    return "SO-" + request_id[:10].upper()


def new_form(svc: Services) -> str:
    """A one-time token for a blank form (its submission uses it up)."""
    with svc.db.session() as s:
        return tokens.mint(s, "form", center(svc).form_ttl_s)


def create(svc: Services, data: dict, actor: str, role: str | None = None,
           invite: str | None = None) -> CenterRequest:
    """Check, sign and store a patient's request (module docstring); the caller enqueues.
    `invite`: the patient's own invitation link (used up with the form: once only)."""
    cfg = center(svc)
    if not isinstance(data, dict):
        raise InvalidInput("the form must be a set of fields")
    with svc.db.session() as s:
        invited = tokens.take_invite(s, invite) if invite is not None else None
        tokens.take_form(s, data.get("form_token"))  # first: a replay signs nothing
        try:
            form = form_mod.check(data, cfg)
        except InvalidInput:
            s.rollback()  # the token stays usable: the patient corrects the fields
            raise
        request_id = secrets.token_hex(16)
        jti = f"so-{request_id}"
        now = datetime.now(timezone.utc).replace(microsecond=0)
        signed_form = pdf.render(form, svc.settings, reference(request_id))
        form_hash = base64.b64encode(hashlib.sha256(signed_form).digest()).decode()
        claims = form_mod.claims(form, svc.settings, jti, now, signed_form, form_hash)
        claims["attachment"] = {"contentType": "application/pdf",
                                "title": "signed authorization form",
                                "data": base64.b64encode(signed_form).decode("ascii")}
        validate_claims(claims)  # what the hospitals will verify, checked before signing
        jws = sign_authorization(claims, intake_key(svc))
        row = CenterRequest(
            id=request_id, authorization_id=jti, jws=jws, state="open", created_by=actor,
            expires_at=datetime.fromtimestamp(claims["exp"], timezone.utc),
            patient={"name": form.patient_name, "birthDate": form.birth_date.isoformat(),
                     "email": form.email, "questions": form.questions})
        row.providers = [CenterProvider(name=n, kind=cfg.providers[n].kind,
                                        organization=cfg.providers[n].organization,
                                        status="pending", reminders=0, counts={})
                         for n in form.providers]
        s.add(row)
        s.flush()
        audit.record(s, "center.request.created", actor=actor, role=role,
                     authorization_id=jti, patient_key=svc.patient_key(form.identifier_system,
                                                                       form.identifier_value),
                     request=row.id, providers=sorted(form.providers),
                     data_classes=sorted(form.data_classes), questions=bool(form.questions),
                     signed_form_sha256=hashlib.sha256(signed_form).hexdigest())
        if invited is not None:
            audit.record(s, "center.invite.used", actor=actor, role=role, request=row.id,
                         authorization_id=jti, invitation=invited[:16])
        s.commit()
        return row


def get(session: Session, request_id: str, for_update: bool = False) -> CenterRequest:
    """The request; `for_update` when the transaction writes back what it read of it."""
    row = (get_for_update(session, CenterRequest, request_id) if for_update
           else session.get(CenterRequest, request_id))
    if row is None:
        raise NotFound(f"no center request {request_id}")
    return row


def provider(session: Session, provider_id: str) -> CenterProvider:
    row = session.get(CenterProvider, provider_id)
    if row is None:
        raise NotFound(f"no center request provider {provider_id}")
    return row


def started(session: Session, p: CenterProvider, settings, now: datetime) -> None:
    """The request went to this provider: its deadline and first reminder start now (the
    same defaults by kind as a case's sources, config.EXPECT_WITHIN_S)."""
    cfg = settings.center.providers[p.name]
    p.sent_at = p.sent_at or now
    if p.deadline_at is None:
        p.deadline_at = now + timedelta(seconds=cfg.expect_within())
        p.next_reminder_at = now + timedelta(seconds=cfg.remind_every())
    if p.status == "pending":
        p.status = "sent"


def mark_opinion_ready(svc: Services, request_id: str, actor: str, role: str | None = None) -> None:
    with svc.db.session() as s:
        row = get(s, request_id)
        if row.opinion_ready_at is None:
            row.opinion_ready_at = utcnow()
            audit.record(s, "center.request.opinion-ready", actor=actor, role=role,
                         authorization_id=row.authorization_id, request=row.id)
        s.commit()


def revoke(svc: Services, request_id: str, actor: str, role: str | None = None,
           reason: str = "revoked by the patient") -> list[str]:
    """Sign the revocation and mark the request revoked; returns the providers to tell
    (the caller enqueues tasks.revoke for each after this commits)."""
    with svc.db.session() as s:
        row = get(s, request_id, for_update=True)
        if row.state == "revoked":
            return []
        row.revocation_jws = sign_revocation(center(svc).issuer, row.authorization_id, reason,
                                             intake_key(svc))
        row.state, row.revoked_at = "revoked", utcnow()
        audit.record(s, "center.request.revoked", actor=actor, role=role,
                     authorization_id=row.authorization_id, request=row.id, reason=reason)
        ids = [p.id for p in row.providers if p.sent_at is not None or p.status != "pending"]
        s.commit()
        return ids


def staff_view(row: CenterRequest) -> dict:
    """For the center's staff (operator role): ids, states, counts; the patient's name."""
    return {"id": row.id, "reference": reference(row.id), "authorization": row.authorization_id,
            "state": row.state, "patient": {"name": row.patient["name"]},
            "createdAt": _iso(row.created_at), "completedAt": _iso(row.completed_at),
            "openedAt": _iso(row.opened_at), "opinionReadyAt": _iso(row.opinion_ready_at),
            "revokedAt": _iso(row.revoked_at), "expiresAt": _iso(row.expires_at),
            "providers": [provider_view(p) for p in row.providers]}


def provider_view(p: CenterProvider) -> dict:
    return {"id": p.id, "name": p.name, "kind": p.kind, "status": p.status,
            "sentAt": _iso(p.sent_at), "acknowledgedAt": _iso(p.acknowledged_at),
            "dueAt": _iso(p.deadline_at), "reminders": p.reminders, "error": p.error,
            "arrived": dict(p.counts or {}), "revocationSentAt": _iso(p.revocation_sent_at)}


def open_ids(session: Session) -> list[str]:
    """Requests the periodic pass looks at: open ones, and complete ones whose records the
    center's staff have not opened yet (the patient's page says when they do)."""
    return list(session.scalars(select(CenterRequest.id).where(
        (CenterRequest.state == "open")
        | ((CenterRequest.state == "complete") & CenterRequest.opened_at.is_(None)))))


def check_open(row: CenterRequest) -> None:
    if row.state != "open":
        raise Conflict(f"center request {row.id} is {row.state}")


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None
