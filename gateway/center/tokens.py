"""One-time form tokens and patients' status links.

Both are 256-bit random values; only their sha256 is stored (a stolen database yields
no usable link). A form token is handed out with a blank form and taken by its
submission: a replayed submission finds it used and nothing is signed or sent. A status
link opens one request's status page until it expires or is revoked (a new link revokes
the older ones; revoking the authorization leaves it working, read-only). An invitation
opens the form for a patient without a sign-in, once, until it expires."""
from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from gateway.errors import Conflict, Forbidden, Gone, InvalidInput, NotFound
from gateway.storage.models import CenterToken, utcnow

PREFIX = {"form": "rgf_", "status": "rgs_", "invite": "rgi_"}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def audit_name(token: str) -> str:
    """How the audit log names a token: its digest's first 16 hex digits, never the token."""
    return _digest(token)[:16]


def mint(session: Session, purpose: str, ttl_s: float, request_id: str | None = None) -> str:
    """A new token (the plain value, returned once); a new status link revokes the others."""
    now = utcnow()
    if purpose == "status":
        session.execute(update(CenterToken).where(
            CenterToken.request_id == request_id, CenterToken.purpose == "status",
            CenterToken.revoked_at.is_(None)).values(revoked_at=now))
    plain = PREFIX[purpose] + secrets.token_urlsafe(32)
    session.add(CenterToken(sha256=_digest(plain), purpose=purpose, request_id=request_id,
                            created_at=now, expires_at=now + timedelta(seconds=ttl_s)))
    session.flush()
    return plain


def take_form(session: Session, presented) -> None:
    """Use up a form token (in the caller's transaction), or say why it cannot be used."""
    if not isinstance(presented, str) or not presented.startswith(PREFIX["form"]):
        raise InvalidInput("this form has no valid form token: open a new form and fill it in")
    row = session.get(CenterToken, _digest(presented))
    if row is None or row.purpose != "form":
        raise InvalidInput("this form has no valid form token: open a new form and fill it in")
    if row.used_at is not None:
        raise Conflict("this form was already submitted; nothing was signed or sent again. "
                       "The status link was emailed after the first submission")
    if row.expires_at <= utcnow():
        raise InvalidInput("this form was open too long and has expired: open a new form")
    done = session.execute(update(CenterToken).where(
        CenterToken.sha256 == row.sha256, CenterToken.used_at.is_(None)).values(used_at=utcnow()))
    if done.rowcount != 1:  # a second submission raced this one
        raise Conflict("this form was already submitted; nothing was signed or sent again")


def status_request(session: Session, presented) -> str:
    """The request id a status link opens; Forbidden for a forged, expired or revoked one
    (the same message for each: a guesser learns nothing)."""
    refused = Forbidden("this status link is not valid: it may have expired or been replaced "
                        "by a newer one. Ask the second-opinion center for a new link")
    if not isinstance(presented, str) or not presented.startswith(PREFIX["status"]) \
            or len(presented) > 100:
        raise refused
    row = session.get(CenterToken, _digest(presented))
    if row is None or row.purpose != "status" or row.revoked_at is not None \
            or row.expires_at <= utcnow():
        raise refused
    return row.request_id


def revoke_link(session: Session, plain: str) -> None:
    session.execute(update(CenterToken).where(CenterToken.sha256 == _digest(plain))
                    .values(revoked_at=utcnow()))


def check_invite(session: Session, presented) -> CenterToken:
    """The invitation a link carries, still usable; NotFound for a forged one, Gone for
    one used or expired (no more said: a guesser learns nothing else)."""
    if not isinstance(presented, str) or not presented.startswith(PREFIX["invite"]) \
            or len(presented) > 100:
        raise NotFound("this invitation link is not valid. Ask the second-opinion center "
                       "for a new one")
    row = session.get(CenterToken, _digest(presented))
    if row is None or row.purpose != "invite":
        raise NotFound("this invitation link is not valid. Ask the second-opinion center "
                       "for a new one")
    if row.used_at is not None:
        raise Gone("this invitation was already used to send a request; nothing was signed "
                   "or sent again. The status link was emailed after the first submission")
    if row.expires_at <= utcnow() or row.revoked_at is not None:
        raise Gone("this invitation link has expired. Ask the second-opinion center for a "
                   "new one")
    return row


def take_invite(session: Session, presented) -> str:
    """Use up an invitation (in the caller's transaction); its sha256, for the audit."""
    row = check_invite(session, presented)
    done = session.execute(update(CenterToken).where(
        CenterToken.sha256 == row.sha256, CenterToken.used_at.is_(None)).values(used_at=utcnow()))
    if done.rowcount != 1:  # a second submission raced this one
        raise Gone("this invitation was already used to send a request; nothing was signed "
                   "or sent again")
    return row.sha256
