"""Bearer API tokens. Only the sha256 of a token is stored: tokens are 256-bit random
values, so a fast hash is enough and a stolen database yields no usable token."""
from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway import audit
from gateway.errors import InvalidInput, NotFound, Unauthenticated
from gateway.storage.models import ApiToken, utcnow

# operator: runs transfers; recipient: a center's staff reading its inbox; auditor: reads
# the log; admin: tokens and keys; peer: another gateway delivering bundles to us
ROLES = ("operator", "recipient", "auditor", "admin", "peer")
PREFIX = "rgw_"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, name: str, role: str, actor: str,
                 organization: str | None = None,
                 expires_in: timedelta | None = None) -> tuple[ApiToken, str]:
    """Make a token; the plain value is returned once and never stored. A recipient
    token is scoped to one center's `organization` (its inbox only); with `expires_in`
    it is refused from that long after now on."""
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    if not name or len(name) > 255:
        raise InvalidInput("a token needs a name of 1-255 characters")
    plain = PREFIX + secrets.token_urlsafe(32)
    if organization is not None and (not organization or len(organization) > 255):
        raise InvalidInput("an organization scope needs 1-255 characters")
    if expires_in is not None and expires_in <= timedelta(0):
        raise InvalidInput("a token's lifetime must be positive")
    now = utcnow()
    row = ApiToken(name=name, role=role, token_sha256=_digest(plain), organization=organization,
                   created_at=now, expires_at=now + expires_in if expires_in else None)
    session.add(row)
    session.flush()
    audit.record(session, "admin.token.created", actor=actor, role="admin", token_id=row.id,
                 token_role=role, organization=organization,
                 expires_at=row.expires_at.isoformat() if row.expires_at else None)
    return row, plain


def revoke_token(session: Session, token_id: str, actor: str) -> None:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"no token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit.record(session, "admin.token.revoked", actor=actor, role="admin", token_id=row.id)


def authenticate(session: Session, presented: str) -> ApiToken:
    row = session.scalars(select(ApiToken).where(ApiToken.token_sha256 == _digest(presented))).first()
    if row is None or row.revoked_at is not None:
        raise Unauthenticated("the bearer token is unknown or revoked")
    if row.expires_at is not None and row.expires_at <= utcnow():
        raise Unauthenticated("the bearer token has expired; ask an admin for a new one "
                              "(records-gateway token create)")
    return row
