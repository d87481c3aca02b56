"""Sign-in (an API token, or a person's username and password), sign-out, and the home
page that sends each role to its pages. The sign-in form is guarded by a
double-submit token (session.public_form): a cookie set with the form, and the same
value in the form. Failed sign-ins are limited per name and per address (throttle.py)."""
from __future__ import annotations

import math

from flask import current_app, g, make_response, redirect, request, url_for

from gateway import audit
from gateway.errors import Unauthenticated
from gateway.storage.models import utcnow
from gateway.trust.tokens import authenticate
from gateway.trust.users import PERSON_ROLES, authenticate_user

from . import session, throttle
from .pages import blueprint, nav_link, render

bp = blueprint("web_session")
SIGN_IN_PATH = bp.url_prefix + "/sign-in"

WHY = {"idle": "You were signed out after a time without use. Please sign in again.",
       "expired": "Your session reached its longest allowed time. Please sign in again.",
       "revoked": "Your token or account was revoked or disabled.",
       "ended": "You are signed out."}

# where each role starts: the first of its endpoints this app serves (page groups add
# theirs with `home_for`; a gateway in receive mode has no operator pages, for example)
HOME: dict[str, list[str]] = {}


def home_for(role: str, endpoint: str) -> None:
    if endpoint not in HOME.setdefault(role, []):
        HOME[role].append(endpoint)


def _form(status: int = 200, error: str | None = None, notice: str | None = None):
    return session.public_form(lambda nonce: render("sign_in.html", form_nonce=nonce,
                                                    error=error, notice=notice),
                               status, SIGN_IN_PATH)


@bp.get("/sign-in")
def sign_in():
    return _form(notice=WHY.get(request.args.get("why", "")))


def _refused(message: str, presented_as: str):
    with session.svc().db.session() as s:
        audit.record(s, "web.sign_in.refused", actor=presented_as[:64] or "anonymous",
                     outcome="failure", method="password" if request.form.get("username")
                     else "token")
    return _form(401, message)


def _locked(until, now):
    """429 with Retry-After and the time to try again, the same words whether the name,
    the address or both are locked, and whether or not the person exists."""
    wait = max(1, math.ceil((until - now).total_seconds()))
    minutes = max(1, math.ceil(wait / 60))
    response = _form(429, f"Too many failed sign-ins. Sign-in is paused until "
                          f"{until:%H:%M:%S} UTC (about {minutes} minute"
                          f"{'' if minutes == 1 else 's'}); please try again then.")
    response.headers["Retry-After"] = str(wait)
    return response


def _failed(message: str, presented_as: str, name: str | None, address: str):
    """A wrong password or token: counted against the name and the address, audited, and
    answered 401, or 429 when this failure starts a lockout."""
    limits, now = session.svc().settings.web.sign_in, utcnow()
    with session.svc().db.session() as s:
        lockout = throttle.record_failure(s, throttle.keys(name, address), limits, now,
                                          actor=presented_as[:64] or "anonymous",
                                          address=address)
        audit.record(s, "web.sign_in.refused", actor=presented_as[:64] or "anonymous",
                     outcome="failure", method="password" if name else "token")
    with session.svc().db.session() as s:
        throttle.forget_old(s, limits, now)
    return _locked(lockout.until, now) if lockout else _form(401, message)


@bp.post("/sign-in")
def sign_in_post():
    if not session.public_form_ok():
        return _form(403, "The sign-in form had expired or was not this site's own: "
                          "please try again.")
    token, username = request.form.get("token", "").strip(), request.form.get("username", "")
    password = request.form.get("password", "")
    name = username.strip() if not token else None
    if not token and not (username and password):
        return _form(400, "Give an API token, or a username and a password.")
    address = throttle.client_address(session.svc().settings.web.sign_in)
    now = utcnow()
    with session.svc().db.session() as s:  # locked: refused before the secret is checked
        until = throttle.locked_until(s, throttle.keys(name, address), now)
    if until is not None:
        return _locked(until, now)
    response = make_response(redirect(url_for("web_session.home"), code=303))
    try:
        with session.svc().db.session() as s:
            if token:
                row = authenticate(s, token)
                who = {"actor": row.name, "role": row.role, "organization": row.organization,
                       "token_id": row.id, "how": "token"}
            else:
                row = authenticate_user(s, name, password)
                who = {"actor": row.username, "role": row.role,
                       "organization": row.organization, "user_id": row.id, "how": "password"}
                throttle.clear_name(s, name, address)
    except Unauthenticated:
        return _failed("Sign-in refused: unknown or revoked token, or wrong username or "
                       "password.", name or "token", name, address)
    if who["role"] not in PERSON_ROLES:
        return _refused("Peer tokens are for other gateways and cannot sign in here.",
                        who["actor"])
    session.start(response, **who)
    response.delete_cookie(session.PUBLIC_FORM_COOKIE, path=SIGN_IN_PATH)
    return response


@bp.post("/sign-out")
@session.page(*PERSON_ROLES)
def sign_out():
    response = make_response(redirect(url_for("web_session.sign_in", why="ended"), code=303))
    session.end(response)
    return response


@bp.get("/")
@session.page(*PERSON_ROLES)
def home():
    for endpoint in HOME.get(g.role, []):
        if endpoint in current_app.view_functions:
            return redirect(url_for(endpoint), code=303)
    return render("home.html")


nav_link("web_session.home", "Home", *PERSON_ROLES)
