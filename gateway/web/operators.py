"""The sending side's operator pages: transfers and cases with live progress, filters
(the patient identifier filter comes in a POST body, never in the URL), a transfer's
items and a case's timeline. The buttons are in operator_actions.py."""
from __future__ import annotations

from datetime import date, datetime, time, timezone
from types import SimpleNamespace

from flask import jsonify, request
from sqlalchemy import select

from gateway.engine.operations import case_view, transfer_view
from gateway.engine.policy import patient_key
from gateway.engine.transfers import PARKED, STATES, TERMINAL
from gateway.errors import InvalidInput, NotFound
from gateway.storage.models import AuditEvent, Authorization, Case, Transfer

from .pages import blueprint, nav_link, notice, render
from .session import audit_read, page, svc
from .signin import home_for

bp = blueprint("operators", "/operator")
OPERATORS = ("operator", "admin")
LIMIT = 200


def _day(name: str, end: bool = False) -> datetime | None:
    raw = request.form.get(name, "").strip()
    if not raw:
        return None
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise InvalidInput(f"{name}: a date as YYYY-MM-DD") from None
    return datetime.combine(day, time.max if end else time.min, tzinfo=timezone.utc)


def _identifier_matches(auth: Authorization, wanted: str) -> bool:
    """`wanted` is an identifier's value, or 'system|value'."""
    system, sep, value = wanted.rpartition("|")
    for ident in auth.claims.get("patient", {}).get("identifiers", []):
        if ident.get("value") == value and (not sep or ident.get("system") == system):
            return True
    return False


def _filters(states) -> dict:
    """The list filters from the POSTed form (a GET shows everything)."""
    if request.method != "POST":
        return {}
    state = request.form.get("state", "")
    if state and state not in states:
        raise InvalidInput(f"unknown state {state!r}")
    return {"state": state, "since": _day("since"), "until": _day("until", end=True),
            "patient": request.form.get("patient", "").strip()}


def _authorizations_of_patient(s, wanted: str) -> list[str]:
    # claims are sealed at rest: matched here, after decryption, not in SQL
    rows = s.scalars(select(Authorization).order_by(Authorization.created_at.desc()).limit(5000))
    return [a.id for a in rows if _identifier_matches(a, wanted)]


def _filtered(s, model, f: dict):
    q = select(model).order_by(model.created_at.desc()).limit(LIMIT)
    if f.get("state"):
        q = q.where(model.state == f["state"])
    if f.get("since"):
        q = q.where(model.created_at >= f["since"])
    if f.get("until"):
        q = q.where(model.created_at <= f["until"])
    if f.get("patient"):
        ids = _authorizations_of_patient(s, f["patient"])
        q = q.where(model.authorization_id.in_(ids))
        # the list now says which transfers are this patient's: a read of patient data
        audit_read(s, "patient_search", page=request.endpoint, matches=len(ids))
    return s.scalars(q)


@bp.route("/", methods=["GET", "POST"])
@page(*OPERATORS)
def transfers():
    f = _filters(STATES)
    with svc().db.session() as s:
        rows = [transfer_view(s, t, completeness_report=False) for t in _filtered(s, Transfer, f)]
    return render("operators/transfers.html", transfers=rows, filters=f, states=STATES)


@bp.route("/cases", methods=["GET", "POST"])
@page(*OPERATORS)
def cases():
    from gateway.engine.cases import STATES as CASE_STATES

    f = _filters(CASE_STATES)
    with svc().db.session() as s:
        rows = [case_view(s, c) for c in _filtered(s, Case, f)]
    return render("operators/cases.html", cases=rows, filters=f, states=CASE_STATES)


def patient_of(auth: Authorization) -> dict:
    """Who an authorization names, for the pages that show it (each audits the view)."""
    p = auth.claims.get("patient", {})
    return {"name": " ".join([*p.get("name", {}).get("given", []), p.get("name", {}).get("family", "")]),
            "birthDate": p.get("birthDate"), "identifiers": p.get("identifiers", [])}


@bp.get("/transfers/<transfer_id>")
@page(*OPERATORS)
def transfer(transfer_id: str):
    with svc().db.session() as s:
        t = s.get(Transfer, transfer_id)
        if t is None:
            raise NotFound(f"no transfer {transfer_id}")
        view = transfer_view(s, t, items=True)
        auth = s.get(Authorization, t.authorization_id)
        audit_read(s, "transfer", transfer_id=t.id, authorization_id=auth.id,
                   patient_key=patient_key(auth, svc().patient_secret))
        patient = patient_of(auth)
        case = s.scalars(select(Case).where(Case.authorization_id == auth.id)).first()
    return render("operators/transfer.html", t=view, patient=patient,
                  notice=notice(),
                  case_id=case.id if case else None, terminal=TERMINAL, parked=PARKED)


TIMELINE = {  # audit event types a case's timeline shows, and how it names them
    "authorization.received": "Authorization received", "authorization.verified": "Authorization verified",
    "case.opened": "Case opened", "case.approved": "Approved", "transfer.created": "Transfer started",
    "transfer.pull.started": "Pull started", "transfer.pull.finished": "Pull finished",
    "transfer.pull.failed": "Pull failed", "transfer.mapping.finished": "Records normalized",
    "transfer.bundle.assembled": "Bundle assembled", "transfer.delivery.attempt": "Delivery attempt",
    "transfer.delivery.sent": "Bundle delivered", "transfer.receipt.verified": "Receipt verified",
    "transfer.receipt.refused": "Receipt refused", "transfer.receipt.opened": "Opened by the recipient",
    "transfer.dead_letter": "Dead-lettered", "transfer.retried": "Retried", "transfer.replayed": "Replayed",
    "transfer.cancelled": "Cancelled", "case.follow_up": "Follow-up", "case.complete": "Case complete",
    "case.closed": "Case closed", "authorization.revoked": "Authorization revoked",
    "case.source.reminded": "Source reminded", "case.source.no_records": "No records at source",
}


def timeline(s, authorization_id: str) -> list[dict]:
    """The case's story from the audit log: authorization -> pulls -> bundle -> delivery
    attempts -> receipts -> opened (ids, sources and counts only)."""
    rows = s.scalars(select(AuditEvent).where(AuditEvent.authorization_id == authorization_id)
                     .order_by(AuditEvent.seq).limit(1000))
    out = []
    for ev in rows:
        if ev.type not in TIMELINE:
            continue
        d = ev.detail or {}
        note = ", ".join(f"{k} {d[k]}" for k in ("source", "items", "attempt", "status", "part")
                         if d.get(k) not in (None, ""))
        out.append({"at": ev.at, "what": TIMELINE[ev.type], "type": ev.type,
                    "transfer": ev.transfer_id, "outcome": ev.outcome, "note": note})
    return out


@bp.get("/cases/<case_id>")
@page(*OPERATORS)
def case(case_id: str):
    with svc().db.session() as s:
        c = s.get(Case, case_id)
        if c is None:
            raise NotFound(f"no case {case_id}")
        view = case_view(s, c)
        auth = s.get(Authorization, c.authorization_id)
        audit_read(s, "case", authorization_id=auth.id,
                   patient_key=patient_key(auth, svc().patient_secret), case_id=c.id)
        story = timeline(s, auth.id)
        patient = patient_of(auth)
    return render("operators/case.html", c=view, patient=patient, timeline=story,
                  notice=notice())


@bp.get("/progress")
@page(*OPERATORS, touch=False)
def progress():
    """Live state for the progress bars (polled by static/progress.js): ids, states,
    counts and bytes only, so not an audited read. Not counted as use of the session."""
    ids, case_ids = request.args.getlist("id")[:LIMIT], request.args.getlist("case")[:LIMIT]
    with svc().db.session() as s:
        rows = s.scalars(select(Transfer).where(Transfer.id.in_(ids)))
        out = {t.id: {k: v for k, v in transfer_view(s, t, completeness_report=False).items()
                      if k in ("state", "percent", "sources", "items")} for t in rows}
        open_cases = {c.id: {"state": c.state, "percent": c.percent,
                             "sources": [{"name": x["name"], "status": x["status"]}
                                         for x in c.sources]}
                      for c in (SimpleNamespace(**case_view(s, row))
                                for row in s.scalars(select(Case).where(Case.id.in_(case_ids))))}
    for view in out.values():
        for src in view["sources"]:
            src.pop("error", None)  # an error text can quote a file name
    return jsonify({"transfers": out, "cases": open_cases,
                    "terminal": sorted(TERMINAL | PARKED | {"closed"})})


nav_link("operators.transfers", "Transfers", *OPERATORS)
nav_link("operators.cases", "Cases", *OPERATORS)
home_for("operator", "operators.transfers")
home_for("admin", "operators.transfers")
