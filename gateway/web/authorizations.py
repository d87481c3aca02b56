"""Authorizations on the sending side: each one's validity (not before, expires, revoked)
and a revoke button that asks for confirmation on its own page first. Revoking calls the
same engine function as the API and the command line, which stops transfers in flight."""
from __future__ import annotations

from flask import g, redirect, request, url_for
from sqlalchemy import func, select

from gateway.engine.operations import authorization_view, revoke_authorization
from gateway.engine.policy import patient_key
from gateway.engine.transfers import PARKED, TERMINAL
from gateway.errors import InvalidInput, NotFound
from gateway.storage.models import Authorization, Transfer, utcnow

from .operators import OPERATORS, patient_of
from .pages import blueprint, nav_link, notice, render
from .session import audit_read, page, svc

bp = blueprint("operator_authorizations", "/operator/authorizations")


def validity(row: Authorization, now) -> str:
    """In words: revoked, not yet valid, expired, or valid."""
    if row.status == "revoked":
        return "revoked"
    if row.not_before and row.not_before > now:
        return "not yet valid"
    if row.expires_at and row.expires_at <= now:
        return "expired"
    return "valid"


@bp.get("/")
@page(*OPERATORS)
def index():
    now = utcnow()
    with svc().db.session() as s:
        rows = s.scalars(select(Authorization).order_by(Authorization.created_at.desc()).limit(500))
        items = [{**authorization_view(a), "validity": validity(a, now)} for a in rows]
    return render("operators/authorizations.html", authorizations=items, notice=notice())


def _running(s, auth_id: str) -> int:
    return s.scalar(select(func.count()).select_from(Transfer).where(
        Transfer.authorization_id == auth_id, Transfer.state.not_in(TERMINAL | PARKED)))


@bp.get("/<auth_id>/revoke")
@page(*OPERATORS)
def confirm_revoke(auth_id: str):
    """The confirmation: whose authorization, and how many transfers it would stop."""
    with svc().db.session() as s:
        row = s.get(Authorization, auth_id)
        if row is None:
            raise NotFound(f"no authorization {auth_id}")
        audit_read(s, "authorization", authorization_id=row.id,
                   patient_key=patient_key(row, svc().patient_secret))
        view = {**authorization_view(row), "validity": validity(row, utcnow())}
        return render("operators/revoke.html", a=view, patient=patient_of(row),
                      running=_running(s, auth_id))


@bp.post("/<auth_id>/revoke")
@page(*OPERATORS)
def revoke(auth_id: str):
    reason = request.form.get("reason", "").strip()
    if not reason or len(reason) > 500:
        raise InvalidInput("say why the authorization is revoked (1-500 characters)")
    if request.form.get("confirm") != "yes":
        raise InvalidInput("confirm the revocation (the checkbox)")
    revoke_authorization(svc(), auth_id, reason, actor=g.actor, role=g.role)
    return redirect(url_for("operator_authorizations.index", done="revoked"), code=303)


nav_link("operator_authorizations.index", "Authorizations", *OPERATORS)
