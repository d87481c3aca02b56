"""Sign-in (an API token, or a person's username and password), sign-out, and the home
page that sends each role to its pages. The sign-in form is guarded by a
double-submit token (session.public_form): a cookie set with the form, and the same
value in the form."""
from __future__ import annotations

from flask import current_app, g, make_response, redirect, request, url_for

from gateway import audit
from gateway.errors import Unauthenticated
from gateway.trust.tokens import authenticate
from gateway.trust.users import PERSON_ROLES, authenticate_user

from . import session
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


@bp.post("/sign-in")
def sign_in_post():
    if not session.public_form_ok():
        return _form(403, "The sign-in form had expired or was not this site's own: "
                          "please try again.")
    token, username = request.form.get("token", "").strip(), request.form.get("username", "")
    password = request.form.get("password", "")
    response = make_response(redirect(url_for("web_session.home"), code=303))
    try:
        with session.svc().db.session() as s:
            if token:
                row = authenticate(s, token)
                who = {"actor": row.name, "role": row.role, "organization": row.organization,
                       "token_id": row.id, "how": "token"}
            elif username and password:
                row = authenticate_user(s, username.strip(), password)
                who = {"actor": row.username, "role": row.role,
                       "organization": row.organization, "user_id": row.id, "how": "password"}
            else:
                return _form(400, "Give an API token, or a username and a password.")
    except Unauthenticated:
        return _refused("Sign-in refused: unknown or revoked token, or wrong username or "
                        "password.", username or "token")
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
