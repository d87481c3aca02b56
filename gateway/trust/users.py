"""People who sign in to the web pages with a username and password. Each holds a role
and an organization as an API token does. Passwords are kept only as scrypt hashes
(hashlib, no extra dependency): memory-hard, so a stolen table is slow to guess from."""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway import audit
from gateway.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from gateway.storage.models import WebUser, utcnow

from .tokens import ROLES

# scrypt cost: 2^15 x 8 x 128 bytes = 32 MiB and ~0.1 s per check; the parameters are
# stored with each hash so they can be raised later without breaking old ones
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
MIN_PASSWORD = 12
USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
# people sign in to read and act on pages; a peer is another gateway, never a person
PERSON_ROLES = tuple(r for r in ROLES if r != "peer")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str) -> str:
    """'scrypt$N$r$p$salt$hash' (base64) for `password`."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=64 * 1024 * 1024, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def password_matches(stored: str, password: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                             p=int(p), maxmem=64 * 1024 * 1024, dklen=len(expected))
    except ValueError:
        return False
    return kind == "scrypt" and hmac.compare_digest(got, expected)


# checked against for unknown usernames, so a wrong name costs as long as a wrong password
_DUMMY = hash_password(secrets.token_hex(16))


def create_user(session: Session, username: str, password: str, role: str, actor: str,
                organization: str | None = None) -> WebUser:
    if not USERNAME.match(username or ""):
        raise InvalidInput("a username is 1-64 letters, digits or . _ @ -")
    if role not in PERSON_ROLES:
        raise InvalidInput(f"a person's role is one of {', '.join(PERSON_ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"a password needs at least {MIN_PASSWORD} characters")
    if session.scalars(select(WebUser).where(WebUser.username == username)).first():
        raise Conflict(f"a person named {username!r} exists already")
    row = WebUser(username=username, password_hash=hash_password(password), role=role,
                  organization=organization, created_at=utcnow())
    session.add(row)
    session.flush()
    audit.record(session, "admin.user.created", actor=actor, role="admin", user_id=row.id,
                 user_role=role, organization=organization)
    return row


def disable_user(session: Session, username: str, actor: str) -> WebUser:
    """Refuse this person's sign-in from now on (their open sessions end at their next page)."""
    row = session.scalars(select(WebUser).where(WebUser.username == username)).first()
    if row is None:
        raise NotFound(f"no person named {username!r}")
    if row.disabled_at is None:
        row.disabled_at = utcnow()
        audit.record(session, "admin.user.disabled", actor=actor, role="admin", user_id=row.id)
    return row


def list_users(session: Session) -> list[WebUser]:
    return list(session.scalars(select(WebUser).order_by(WebUser.username)))


def authenticate_user(session: Session, username: str, password: str) -> WebUser:
    """The person with this name and password, enabled; one message for every refusal."""
    row = session.scalars(select(WebUser).where(WebUser.username == username)).first()
    ok = password_matches(row.password_hash if row else _DUMMY, password)
    if row is None or not ok or row.disabled_at is not None:
        raise Unauthenticated("unknown username or wrong password, or the account is disabled")
    return row
