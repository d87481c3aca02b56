"""The center's request pages (gateway/center/): the request form, filled in by the
center's staff with or for the patient, one request's page for the staff (with its
"email a new status link" action), and the patient's own status page, and the form the
patient opens from an emailed invitation. Staff scoped to another organization get none.

The status page is the one page here without a session: the patient's emailed link
(`/ui/my-request?t=...`) is its key. The link's token is moved at once into a cookie
(HttpOnly, SameSite=Strict, path /ui/my-request) and the address loses it (303), so it
stays out of the history and of later requests' logs. An invitation link
(`/ui/invite?t=...`) is handled the same way (cookie path /ui/invite); its form is guarded
by the foundation's double-submit token (`public_form`) and its submission uses the
invitation up, then the patient lands on the status page. Its revoke form carries a value
derived from that token (a second check beside SameSite), so no other site can post it.
"""
from __future__ import annotations

import hashlib
import hmac
import logging

from flask import g, redirect, request, url_for

from gateway import audit
from gateway.center import invites, links, status, tasks, tokens
from gateway.center import requests as reqs
from gateway.center.form import STATEMENTS
from gateway.errors import Forbidden, GatewayError, Gone, InvalidInput, NotFound
from mappings import DATA_CLASSES

from .pages import NOTICES, blueprint, nav_link, notice, refuse, render
from .session import audit_read, page, public_form, public_form_ok, set_cookie, svc

bp = blueprint("center_requests", "/requests")
patient_bp = blueprint("my_request", "/my-request")
invite_bp = blueprint("patient_invite", "/invite")
log = logging.getLogger(__name__)
STAFF = ("operator", "recipient", "admin")
STATUS_COOKIE = "rgw_status"
INVITE_COOKIE = "rgw_invite"
LISTS = ("providers", "data_classes")
NOTICES.update({"request-made": "Request signed and sent to every place named. The patient "
                                "gets the status link by email.",
                "invited": "Invitation emailed. The link works once and expires unused.",
                "link-reissued": "A new status link was emailed to the patient; the previous "
                                 "one no longer works.",
                "request-sent": "Your request is signed and sent to every place you named.",
                "request-revoked": "Your authorization is revoked. Each place that was asked "
                                   "is being told to send nothing more."})


def _form_values() -> dict:
    data = {k: v for k, v in request.form.items()
            if k not in LISTS and k not in ("csrf_token", "form_nonce")}
    for name in LISTS:
        data[name] = request.form.getlist(name)
    return data


def _render_form(values: dict, errors: dict | None = None, status_code: int = 200, **extra):
    cfg = reqs.center(svc())
    return render("requests/new.html", values=values, errors=errors or {},
                  providers=sorted(cfg.providers.items(), key=lambda kv: kv[1].name),
                  data_classes=sorted(DATA_CLASSES), center=cfg,
                  statements=STATEMENTS, **extra), status_code


@bp.get("/new")
@page(*STAFF)
def new():
    reqs.check_organization(svc(), g.organization)
    return _render_form({"form_token": reqs.new_form(svc()), "signed_by": "patient"},
                        invite_box=True, notice=notice())


@bp.post("/invite")
@page(*STAFF)
def invite():
    reqs.check_organization(svc(), g.organization)
    try:
        invites.invite(svc(), request.form.get("email", ""), actor=g.actor, role=g.role)
    except InvalidInput as exc:
        return refuse(400, f"The invitation was not sent: {exc.message}.")
    return redirect(url_for("center_requests.new", done="invited"), code=303)


@bp.post("/new")
@page(*STAFF)
def submit():
    reqs.check_organization(svc(), g.organization)
    values = _form_values()
    try:
        row = reqs.create(svc(), values, actor=g.actor, role=g.role)
    except InvalidInput as exc:
        if exc.details.get("fields"):
            return _render_form(values, exc.details["fields"], 400)
        raise
    tasks.enqueue_new(row.id, [p.id for p in row.providers])
    return redirect(url_for("center_requests.show", request_id=row.id, done="request-made"),
                    code=303)


@bp.get("/<request_id>")
@page(*STAFF, "auditor")
def show(request_id: str):
    reqs.check_organization(svc(), g.organization)
    with svc().db.session() as s:
        row = reqs.get(s, request_id)
        audit_read(s, "center-request", request=row.id, authorization_id=row.authorization_id)
        view = reqs.staff_view(row)
    names = reqs.center(svc()).providers
    return render("requests/show.html", r=view, names={k: p.name for k, p in names.items()},
                  notice=notice(), staff=g.role in STAFF)


@bp.post("/<request_id>/status-link")
@page(*STAFF)
def reissue_link(request_id: str):
    """A new status link for the patient, by email; the previous one stops working."""
    reqs.check_organization(svc(), g.organization)
    links.reissue(svc(), request_id, actor=g.actor, role=g.role)
    return redirect(url_for("center_requests.show", request_id=request_id, done="link-reissued"),
                    code=303)


nav_link("center_requests.new", "New request", *STAFF)


# --- the patient's status page (no session: the link is the key) ------------------------

def _check_value(token: str) -> str:
    return hmac.new(token.encode(), b"revoke-form", hashlib.sha256).hexdigest()


@patient_bp.get("")
def my_request():
    if "t" in request.args:  # from the email: keep the token in a cookie, drop it from the URL
        response = redirect(url_for("my_request.my_request"), code=303)
        set_cookie(response, STATUS_COOKIE, request.args["t"][:100], "/ui/my-request")
        return response
    token = request.cookies.get(STATUS_COOKIE)
    view = status.for_link(svc(), token, what="page")
    return render("requests/status.html", s=view, check=_check_value(token), notice=notice())


@patient_bp.post("/revoke")
def my_request_revoke():
    token = request.cookies.get(STATUS_COOKIE) or ""
    sent = request.form.get("check", "")
    if not token or not hmac.compare_digest(sent.encode(), _check_value(token).encode()):
        with svc().db.session() as s:
            audit.record(s, "center.status.refused", actor="patient", outcome="deny",
                         action="revoke")
        return refuse(403, "This form was not sent from your status page: open the link "
                           "from your email again and try once more.")
    if request.form.get("confirm") != "yes":
        view = status.for_link(svc(), token, what="page")
        return render("requests/status.html", s=view, check=_check_value(token),
                      confirm_error="Tick the box to confirm that you want to revoke."), 400
    _, providers = status.revoke_by_link(svc(), token)
    for provider_id in providers:
        tasks.revoke.delay(provider_id)
    return redirect(url_for("my_request.my_request", done="request-revoked"), code=303)


# --- the patient's own form, from an emailed invitation (no session: the link is the key)

def _public_form(values: dict, errors: dict | None = None, status_code: int = 200):
    def page_(nonce):
        body, _ = _render_form(values, errors, action=url_for("patient_invite.invited_post"),
                               form_nonce=nonce)
        return body
    return public_form(page_, status_code, path="/ui/invite")


@invite_bp.get("")
def invited():
    if "t" in request.args:  # from the email: keep the token in a cookie, drop it from the URL
        plain = request.args["t"][:100]
        with svc().db.session() as s:
            tokens.check_invite(s, plain)  # a forged, used or expired link goes no further
        response = redirect(url_for("patient_invite.invited"), code=303)
        set_cookie(response, INVITE_COOKIE, plain, "/ui/invite")
        return response
    with svc().db.session() as s:
        tokens.check_invite(s, request.cookies.get(INVITE_COOKIE))
    return _public_form({"form_token": reqs.new_form(svc()), "signed_by": "patient"})


@invite_bp.post("")
def invited_post():
    if not public_form_ok():
        return refuse(403, "This form had expired or was not this site's own: open the link "
                           "from your email again.")
    values = _form_values()
    try:
        row = reqs.create(svc(), values, actor="patient", role="patient",
                          invite=request.cookies.get(INVITE_COOKIE) or "")
    except InvalidInput as exc:
        if exc.details.get("fields"):
            return _public_form(values, exc.details["fields"], 400)
        raise
    for provider_id in (p.id for p in row.providers):
        tasks.send.delay(provider_id)
    with svc().db.session() as s:  # the patient lands on the status page this link opens
        link = tokens.mint(s, "status", reqs.center(svc()).status_link_ttl_s, row.id)
    try:
        tasks.mail_link_now(svc(), row.id, plain=link)
    except GatewayError as exc:  # the page still works; staff can see the request
        log.warning("center request %s: status link not mailed: %s", row.id,
                    type(exc).__name__)
    response = redirect(url_for("my_request.my_request", done="request-sent"), code=303)
    set_cookie(response, STATUS_COOKIE, link, "/ui/my-request")
    response.delete_cookie(INVITE_COOKIE, path="/ui/invite")
    return response


@invite_bp.errorhandler(NotFound)
def _invite_not_found(exc: NotFound):
    return refuse(404, exc.message)


@invite_bp.errorhandler(Gone)
def _invite_gone(exc: Gone):
    return refuse(410, exc.message)


@invite_bp.errorhandler(InvalidInput)
def _invite_invalid(exc: InvalidInput):
    return refuse(400, exc.message)


@patient_bp.errorhandler(Forbidden)
def _forbidden(exc: Forbidden):
    return refuse(403, exc.message)
