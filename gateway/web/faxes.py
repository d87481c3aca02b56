"""The fax review queue: faxes no cover sheet matched, each with a preview of every page
(PNGs the fax connector rendered in its sandbox), to assign to an open transfer
or reject. Every read goes through gateway/engine/faxes.read_review, which audits it."""
from __future__ import annotations

from dataclasses import asdict

from flask import g, redirect, request, send_file, url_for

from connectors.fax.review import PageNotFound, ReviewError
from gateway.engine import faxes
from gateway.errors import Conflict, InvalidInput, NotFound

from .operators import OPERATORS
from .pages import blueprint, nav_link, notice, render
from .session import page, svc

bp = blueprint("fax_review", "/operator/faxes")


def _source() -> str | None:
    """The fax source, when more than one is configured (a name, never patient data)."""
    return request.values.get("source") or None


@bp.get("/")
@page(*OPERATORS)
def queue():
    name, q = faxes.read_review(svc(), _source(), "list", g.actor, g.role)
    return render("operators/faxes.html", source=name, review=[asdict(i) for i in q.list()],
                  quarantine=[asdict(i) for i in q.quarantined()], notice=notice())


@bp.get("/<fax_id>")
@page(*OPERATORS)
def item(fax_id: str):
    name, q = faxes.read_review(svc(), _source(), "item", g.actor, g.role, fax_id)
    try:
        fax = asdict(q.get(fax_id))
    except ReviewError as exc:
        raise Conflict(str(exc)) from None
    # open transfers this fax may answer, by patient and request id, candidates first
    choices = sorted(faxes.open_transfers(svc(), name),
                     key=lambda d: (d.transfer_id not in fax["candidates"], d.patient_name))
    return render("operators/fax.html", source=name, fax=fax, choices=choices,
                  previews=q.previews(fax_id))


@bp.get("/<fax_id>/pages/<n>")
@page(*OPERATORS)
def preview(fax_id: str, n: str):
    _, q = faxes.read_review(svc(), _source(), "preview", g.actor, g.role, fax_id)
    try:
        return send_file(q.preview(fax_id, n), mimetype="image/png")
    except PageNotFound as exc:
        raise NotFound(str(exc)) from None
    except ReviewError as exc:
        raise Conflict(str(exc)) from None


@bp.post("/<fax_id>/assign")
@page(*OPERATORS)
def assign(fax_id: str):
    transfer_id = request.form.get("transfer", "").strip()
    if not transfer_id:
        raise InvalidInput("choose the transfer this fax belongs to")
    faxes.assign(svc(), _source(), fax_id, transfer_id, g.actor, g.role)
    return redirect(url_for("fax_review.queue", done="assigned"), code=303)


@bp.post("/<fax_id>/reject")
@page(*OPERATORS)
def reject(fax_id: str):
    reason = request.form.get("reason", "").strip()[:500]
    faxes.reject(svc(), _source(), fax_id, reason, g.actor, g.role)
    return redirect(url_for("fax_review.queue", done="rejected"), code=303)


nav_link("fax_review.queue", "Fax review", *OPERATORS)
