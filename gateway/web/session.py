"""Signed-in browser sessions, the `page` decorator every page uses, and CSRF checks.

The cookie holds a random value; the database keeps only its sha256 beside the role,
organization and actor of the API token or person that signed in (gateway/trust/), and
the session's form token. Each page re-checks that token or person, so revoking a token
or disabling a person ends their sessions at the next page."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from functools import wraps

from flask import current_app, g, jsonify, make_response, redirect, request, url_for
from sqlalchemy import delete, select

from gateway import audit
from gateway.runtime.services import Services
from gateway.storage.models import ApiToken, WebSession, WebUser, utcnow

COOKIE = "rgw_session"
CSRF_FIELD = "csrf_token"  # hidden field of every form
CSRF_HEADER = "X-CSRF-Token"  # scripts that post send the token here


def svc() -> Services:
    return current_app.extensions["gateway"]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secure_cookie() -> bool:
    """The Secure flag: over TLS, or behind a TLS-terminating proxy (https base_url)."""
    mode = svc().settings.web.secure_cookie
    if mode != "auto":
        return mode == "always"
    return request.is_secure or svc().settings.base_url.startswith("https://")


def set_cookie(response, name: str, value: str, path: str) -> None:
    response.set_cookie(name, value, path=path, httponly=True, samesite="Strict",
                        secure=secure_cookie())


def start(response, *, actor: str, role: str, organization: str | None,
          token_id: str | None = None, user_id: str | None = None, how: str) -> None:
    """Open a session for who signed in and set its cookie on `response`."""
    secret = secrets.token_urlsafe(32)
    now = utcnow()
    with svc().db.session() as s:
        # sessions past their maximum age can never be used again: no need to keep them
        s.execute(delete(WebSession).where(
            WebSession.created_at < now - timedelta(seconds=svc().settings.web.max_age_s)))
        row = WebSession(secret_sha256=_digest(secret), csrf=secrets.token_urlsafe(32),
                         actor=actor, role=role, organization=organization, token_id=token_id,
                         user_id=user_id, created_at=now, last_seen_at=now)
        s.add(row)
        s.flush()
        audit.record(s, "web.session.started", actor=actor, role=role, session_id=row.id,
                     method=how)
    set_cookie(response, COOKIE, secret, "/ui")


def end(response) -> None:
    """Sign out: the session row ends and the cookie is cleared."""
    presented = request.cookies.get(COOKIE)
    if presented:
        with svc().db.session() as s:
            row = s.scalars(select(WebSession).where(
                WebSession.secret_sha256 == _digest(presented))).first()
            if row is not None and row.ended_at is None:
                row.ended_at = utcnow()
                audit.record(s, "web.session.ended", actor=row.actor, role=row.role,
                             session_id=row.id, why="signed out")
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="Strict",
                           secure=secure_cookie())


def _why_over(s, row: WebSession, now: datetime) -> str | None:
    """Why this session may no longer be used, or None."""
    web = svc().settings.web
    if row.ended_at is not None:
        return "ended"
    if now - row.last_seen_at > timedelta(seconds=web.idle_timeout_s):
        return "idle"
    if now - row.created_at > timedelta(seconds=web.max_age_s):
        return "expired"
    if row.token_id is not None:
        token = s.get(ApiToken, row.token_id)
        if token is None or token.revoked_at is not None or (
                token.expires_at is not None and token.expires_at <= now):
            return "revoked"
    if row.user_id is not None:
        person = s.get(WebUser, row.user_id)
        if person is None or person.disabled_at is not None:
            return "revoked"
    return None


def current(touch: bool = True) -> tuple[dict | None, str | None]:
    """(who is signed in, None) or (None, why not: missing, idle, expired, revoked, ended).
    `touch` counts this request as use (idle timeout starts again)."""
    presented = request.cookies.get(COOKIE)
    if not presented:
        return None, "missing"
    now = utcnow()
    with svc().db.session() as s:
        row = s.scalars(select(WebSession).where(
            WebSession.secret_sha256 == _digest(presented))).first()
        if row is None:
            return None, "missing"
        why = _why_over(s, row, now)
        if why is not None:
            if row.ended_at is None:
                row.ended_at = now
                audit.record(s, "web.session.ended", actor=row.actor, role=row.role,
                             session_id=row.id, why=why)
            return None, why
        if touch:
            row.last_seen_at = now
        return {"id": row.id, "actor": row.actor, "role": row.role,
                "organization": row.organization, "csrf": row.csrf}, None


def csrf_ok(expected: str) -> bool:
    presented = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    return hmac.compare_digest(presented.encode(), expected.encode())


PUBLIC_FORM_COOKIE = "rgw_form"
PUBLIC_FORM_FIELD = "form_nonce"


def public_form(render_page, status: int = 200, path: str | None = None):
    """A form for people with no session (sign-in, a patient's own form): a double-submit
    token, set as a cookie scoped to the form's `path` (default: this request's) and
    passed to `render_page(nonce)`, which puts it in the form's PUBLIC_FORM_FIELD.
    Check the POST with `public_form_ok()`."""
    nonce = secrets.token_urlsafe(24)
    response = make_response(render_page(nonce), status)
    set_cookie(response, PUBLIC_FORM_COOKIE, nonce, path or request.path)
    return response


def public_form_ok() -> bool:
    """The POSTed form carries the token its page set (a forged form has no cookie of ours
    or cannot read it)."""
    nonce = request.cookies.get(PUBLIC_FORM_COOKIE, "")
    sent = request.form.get(PUBLIC_FORM_FIELD, "")
    return bool(nonce) and hmac.compare_digest(nonce.encode(), sent.encode())


def page(*roles: str, touch: bool = True):
    """Let a page through only for a signed-in session of one of `roles`: no session ->
    redirect to sign-in (401 JSON for scripts), another role -> 403, a POST without this
    session's form token -> 403. Sets g.actor, g.role, g.organization, g.csrf_token as
    the API's `require` sets them. `touch=False` for endpoints scripts poll."""
    from .pages import refuse

    def decorate(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            who, why = current(touch=touch)
            if who is None:
                if request.accept_mimetypes.best == "application/json":
                    return jsonify({"error": "signed out", "why": why}), 401
                return redirect(url_for("web_session.sign_in", why=None if why == "missing" else why),
                                code=303)
            if who["role"] not in roles:
                return refuse(403, f"Your role ({who['role']}) may not see this page.")
            if request.method == "POST" and not csrf_ok(who["csrf"]):
                return refuse(403, "This form was not sent from this session's own page "
                                   "(or the page is out of date): reload it and try again.")
            g.actor, g.role, g.organization = who["actor"], who["role"], who["organization"]
            g.csrf_token, g.web_session = who["csrf"], who["id"]
            return view(*args, **kwargs)

        wrapper.roles = roles
        wrapper.web_page = True
        return wrapper

    return decorate


def audit_read(s, what: str, **fields) -> None:
    """Record a page view of patient data as the API records its reads ("api.read.X"):
    the same audit function and fields, type "web.read.X", in the caller's transaction."""
    audit.record(s, f"web.read.{what}", actor=g.actor, role=g.role, **fields)
