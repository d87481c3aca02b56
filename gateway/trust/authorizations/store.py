"""Storing verified authorizations, and revoking them.

Both functions work inside the caller's transaction and never commit: the caller commits
on success. On a rejection `import_authorization` has appended the
"authorization.received" and "authorization.rejected" events to the session and
stored nothing else, then raises the error; the caller commits the session (so the
rejection is on the audit log) and reports the error:

    try:
        row = import_authorization(session, jws, trust, actor="api:intake", patient_secret=secret)
    except GatewayError as exc:
        session.commit()   # keeps the audit events of the rejection
        raise
    session.commit()

Two concurrent imports of the same new authorization: the unique id and sha256 make the
second commit fail with an IntegrityError; after a rollback, importing again returns the
stored row (the operation is idempotent, so a retry is the remedy).
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
from datetime import datetime
from typing import Any

from joserfc import jws as jose_jws
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway import audit
from gateway.errors import AuthorizationDenied, BlobCorrupted, Conflict, InvalidInput, NotFound
from gateway.storage import models
from gateway.trust.issuers import TrustStore

from .schema import JWS_REGISTRY, MAX_JWS_BYTES
from .verify import _now, verify_authorization

MAX_REASON = 1000
log = logging.getLogger(__name__)


def _digest(jws: Any) -> tuple[str | None, int]:
    if isinstance(jws, str):
        data = jws.strip().encode("utf-8", "replace")
    elif isinstance(jws, bytes):
        data = jws.strip()
    else:
        return None, 0
    return hashlib.sha256(data).hexdigest(), len(data)


def _stored_claims(payload: dict, form_sha256: str | None) -> dict:
    """The payload as signed, except the signed form's bytes (kept once, in the JWS)."""
    claims = {k: v for k, v in payload.items() if k != "attachment"}
    if form_sha256 is not None:
        att = payload["attachment"]
        claims["signedForm"] = {"contentType": att["contentType"], "title": att.get("title"),
                                "sha256": form_sha256, "size": len(base64.b64decode(att["data"]))}
    return claims


def import_authorization(session: Session, jws: str | bytes, trust: TrustStore, actor: str,
                         role: str | None = None, now: datetime | None = None, *,
                         patient_secret: bytes) -> models.Authorization:
    """Verify a signed authorization and store it (not committed); see the module docstring
    for rejections. The same JWS again returns the stored row; another JWS with a stored
    authorization's id is a Conflict."""
    digest, size = _digest(jws)
    if digest is not None and size <= MAX_JWS_BYTES:
        existing = session.scalars(select(models.Authorization)
                                   .where(models.Authorization.jws_sha256 == digest)).first()
        if existing is not None:
            audit.record(session, "authorization.received", actor=actor, role=role,
                         authorization_id=existing.id, sha256=digest, size=size, duplicate=True)
            return existing
    audit.record(session, "authorization.received", actor=actor, role=role, sha256=digest, size=size)
    try:
        verified = verify_authorization(jws, trust, now=now)
        if session.get(models.Authorization, verified.id) is not None:
            raise Conflict(f"authorization {verified.id} is already stored with a different JWS; "
                           "an issuer must use a new jti for a new authorization",
                           authorization_id=verified.id)
    except (AuthorizationDenied, Conflict) as exc:
        audit.record(session, "authorization.rejected", actor=actor, role=role, outcome="failure",
                     authorization_id=exc.details.get("authorization_id"), sha256=digest,
                     reason=str(exc), element=exc.details.get("element"),
                     error=type(exc).__name__)
        log.warning("authorization rejected sha256=%s size=%d error=%s element=%s",
                    digest, size, type(exc).__name__, exc.details.get("element"))
        raise
    row = models.Authorization(
        id=verified.id, issuer=verified.issuer, key_id=verified.kid,
        jws_sha256=verified.jws_sha256, jws=jws.strip() if isinstance(jws, str) else jws.strip().decode(),
        claims=_stored_claims(verified.claims, verified.form_sha256), consent=verified.consent,
        recipient_id=verified.recipient.id, not_before=verified.not_before,
        expires_at=verified.expires_at, status="active")
    session.add(row)
    first = verified.patient.identifiers[0]  # the key auditors find the patient's events by
    audit.record(session, "authorization.verified", actor=actor, role=role,
                 authorization_id=verified.id,
                 patient_key=audit.patient_key(first.system, first.value, patient_secret),
                 issuer=verified.issuer, kid=verified.kid, alg=verified.alg, sha256=verified.jws_sha256,
                 disclosers=[d.id for d in verified.disclosers], recipient=verified.recipient.id,
                 data_classes=sorted(verified.data_classes),
                 expires_at=verified.expires_at.isoformat(),
                 signed_form_sha256=verified.form_sha256)
    session.flush()
    log.info("authorization %s verified issuer=%s kid=%s sha256=%s", verified.id, verified.issuer,
             verified.kid, verified.jws_sha256)
    return row


def revoke(session: Session, authorization_id: str, reason: str, actor: str,
           role: str | None = None, now: datetime | None = None) -> models.Authorization:
    """Mark an authorization revoked at once (not committed). Revoking it again changes
    nothing and is recorded as such."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("a revocation needs a reason")
    reason = reason.strip()
    if len(reason) > MAX_REASON:
        raise InvalidInput(f"the revocation reason is longer than {MAX_REASON} characters")
    row = session.get(models.Authorization, authorization_id, with_for_update=True)
    if row is None:
        raise NotFound(f"authorization {authorization_id} is not stored here",
                       authorization_id=authorization_id)
    if row.status == "revoked":
        audit.record(session, "authorization.revoked", actor=actor, role=role,
                     authorization_id=row.id, already_revoked=True)
        return row
    row.status = "revoked"
    row.revoked_at = _now(now)
    row.revoked_reason = reason
    audit.record(session, "authorization.revoked", actor=actor, role=role, authorization_id=row.id,
                 reason=reason)
    session.flush()
    log.info("authorization %s revoked by %s", row.id, actor)
    return row


def signed_form(row: models.Authorization) -> bytes | None:
    """The signed form PDF attached to a stored authorization, if any (read from its JWS)."""
    if "signedForm" not in (row.claims or {}):
        return None
    payload = json.loads(jose_jws.extract_compact(row.jws.encode("ascii"), registry=JWS_REGISTRY).payload)
    data = base64.b64decode(payload["attachment"]["data"])
    if hashlib.sha256(data).hexdigest() != row.claims["signedForm"]["sha256"]:
        raise BlobCorrupted(f"the signed form of authorization {row.id} does not match its recorded hash")
    return data
