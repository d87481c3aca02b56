"""The center's request pages (gateway/center/): the request form, filled in by the
center's staff with or for the patient, one request's page for the staff, and the
patient's own status page.

The status page is the one page here without a session: the patient's emailed link
(`/ui/my-request?t=...`) is its key. The link's token is moved at once into a cookie
(HttpOnly, SameSite=Strict, path /ui/my-request) and the address loses it (303), so it
stays out of the history and of later requests' logs. Its revoke form carries a value
derived from that token (a second check beside SameSite), so no other site can post it.
"""
from __future__ import annotations

import hashlib
import hmac

from flask import g, redirect, request, url_for

from gateway import audit
from gateway.center import requests as reqs
from gateway.center import status, tasks
from gateway.center.form import STATEMENTS
from gateway.errors import Forbidden, InvalidInput
from mappings import DATA_CLASSES

from .pages import NOTICES, blueprint, nav_link, notice, refuse, render
from .session import audit_read, page, set_cookie, svc

bp = blueprint("center_requests", "/requests")
patient_bp = blueprint("my_request", "/my-request")
STAFF = ("operator", "recipient", "admin")
STATUS_COOKIE = "rgw_status"
LISTS = ("providers", "data_classes")
NOTICES.update({"request-made": "Request signed and sent to every place named. The patient "
                                "gets the status link by email.",
                "request-revoked": "Your authorization is revoked. Each place that was asked "
                                   "is being told to send nothing more."})


def _form_values() -> dict:
    data = {k: v for k, v in request.form.items() if k not in LISTS and k != "csrf_token"}
    for name in LISTS:
        data[name] = request.form.getlist(name)
    return data


def _render_form(values: dict, errors: dict | None = None, status_code: int = 200):
    cfg = reqs.center(svc())
    return render("requests/new.html", values=values, errors=errors or {},
                  providers=sorted(cfg.providers.items(), key=lambda kv: kv[1].name),
                  data_classes=sorted(DATA_CLASSES), center=cfg,
                  statements=STATEMENTS), status_code


@bp.get("/new")
@page(*STAFF)
def new():
    return _render_form({"form_token": reqs.new_form(svc()), "signed_by": "patient"})


@bp.post("/new")
@page(*STAFF)
def submit():
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
    with svc().db.session() as s:
        row = reqs.get(s, request_id)
        audit_read(s, "center-request", request=row.id, authorization_id=row.authorization_id)
        view = reqs.staff_view(row)
    names = reqs.center(svc()).providers
    return render("requests/show.html", r=view, names={k: p.name for k, p in names.items()},
                  notice=notice())


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


@patient_bp.errorhandler(Forbidden)
def _forbidden(exc: Forbidden):
    return refuse(403, exc.message)
