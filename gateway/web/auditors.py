"""The auditors' pages: search the log, a transfer's whole chain with each inclusion
proof checked, the checkpoint history with each consistency proof checked, a patient's
accounting of disclosures, exports, and the charts.

Reads are gateway/audit's functions, as the API's /audit are, and each is logged as
`web.read.audit.<what>` with the same fields. Filters come in a POST body: a patient
identifier never appears in an address (transfer and authorization ids may).
"""
from __future__ import annotations

from datetime import date, datetime, time, timezone

from flask import Response, g, redirect, request, url_for

from gateway.audit import checkpoints, export, queries, review
from gateway.engine.checkpoints import checkpoint_now, identity, patient_key_from
from gateway.errors import InvalidInput

from . import figures
from .pages import NOTICES, blueprint, nav_link, notice, render
from .session import audit_read, page, svc
from .signin import home_for

bp = blueprint("auditors", "/audit")
AUDITORS = ("auditor", "admin")
PAGE = 200
FORMATS = {"ndjson": ("application/x-ndjson", "audit-log.ndjson"),
           "fhir-ndjson": ("application/x-ndjson", "audit-events.fhir.ndjson"),
           "bundle": ("application/fhir+json", "audit-events.bundle.json")}
NOTICES.setdefault("checkpointed", "A new checkpoint of the log was signed.")
NOTICES.setdefault("checkpoint-unchanged", "Nothing was logged since the latest checkpoint.")


def _day(name: str, end: bool = False) -> datetime | None:
    raw = request.form.get(name, "").strip()
    if not raw:
        return None
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise InvalidInput(f"{name}: a date as YYYY-MM-DD") from None
    return datetime.combine(day, time.max if end else time.min, tzinfo=timezone.utc)


def _form_filters() -> tuple[dict, dict]:
    """(the form's values to show again, the query filters) from a POSTed search form."""
    if request.method != "POST":
        return {}, {}
    shown = {k: request.form.get(k, "").strip() for k in
             ("transfer", "authorization", "actor", "type", "since", "until", "patient")}
    f = {"transfer_id": shown["transfer"] or None, "authorization_id": shown["authorization"] or None,
         "actor": shown["actor"] or None, "type_prefix": shown["type"] or None,
         "since": _day("since"), "until": _day("until", end=True)}
    if shown["patient"]:
        f["patient_key"] = patient_key_from(svc(), shown["patient"])
    return shown, {k: v for k, v in f.items() if v is not None}


def _logged(s, what: str, f: dict) -> None:
    audit_read(s, f"audit.{what}", transfer_id=f.get("transfer_id"),
               authorization_id=f.get("authorization_id"), patient_key=f.get("patient_key"))


def _keys():
    return checkpoints.load_public_keys(svc().keys.jwks())


@bp.route("/", methods=["GET", "POST"])
@page(*AUDITORS)
def events():
    shown, f = _form_filters()
    try:
        after = max(int(request.form.get("after", "0") or 0), 0)
    except ValueError:
        raise InvalidInput("after must be a sequence number") from None
    with svc().db.session() as s:
        _logged(s, "events", f)
        found = queries.find_events(s, after_seq=after, limit=PAGE + 1, **f)
        more, found = len(found) > PAGE, found[:PAGE]
        cp = checkpoints.latest_checkpoint(s)
        entries = queries.with_proofs(s, found, cp["tree_size"] if cp else None)
    head = review.checkpoint_check(cp, _keys())
    rows = [{**e, "check": review.entry_check(e, cp, bool(head.ok))} for e in entries]
    return render("auditors/events.html", shown=shown, rows=rows, checkpoint=cp, head=head,
                  more=more, next_after=found[-1].seq if found else after,
                  formats=list(FORMATS), searched=request.method == "POST")


@bp.post("/export")
@page(*AUDITORS)
def export_events():
    fmt = request.form.get("format", "ndjson")
    if fmt not in FORMATS:
        raise InvalidInput("format must be ndjson, fhir-ndjson or bundle")
    _, f = _form_filters()
    with svc().db.session() as s:
        _logged(s, "export", f)
    media, filename = FORMATS[fmt]
    me = identity(svc())
    if fmt == "bundle":
        import json

        with svc().db.session() as s:
            body = json.dumps(export.bundle(s, me=me, **f))
        return _download(body, media, filename)
    db = svc().db  # streamed after this view returns

    def stream():
        with db.session() as s:
            yield from export.iter_ndjson(s, fhir=fmt == "fhir-ndjson", me=me, **f)

    return _download(stream(), media, filename)


def _download(body, media: str, filename: str) -> Response:
    response = Response(body, mimetype=media)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/transfers/<transfer_id>/chain")
@page(*AUDITORS)
def chain(transfer_id: str):
    with svc().db.session() as s:
        _logged(s, "chain", {"transfer_id": transfer_id})
        found = queries.transfer_chain(s, transfer_id)
    return render("auditors/chain.html", chain=review.chain_checks(found, _keys()))


@bp.post("/chain")
@page(*AUDITORS)
def chain_lookup():
    transfer = request.form.get("transfer", "").strip()
    if not transfer or len(transfer) > 64 or not transfer.isalnum():
        raise InvalidInput("give a transfer id")
    return redirect(url_for("auditors.chain", transfer_id=transfer), code=303)


@bp.get("/checkpoints")
@page(*AUDITORS)
def checkpoint_history():
    try:
        since = max(int(request.args.get("since_size", "0")), 0)
    except ValueError:
        raise InvalidInput("since_size must be a number") from None
    with svc().db.session() as s:
        doc = checkpoints.checkpoints_document(s, since_size=since, limit=PAGE + 1)
        latest = checkpoints.latest_checkpoint(s)
    more = len(doc["checkpoints"]) > PAGE
    rows = review.history_checks(doc, _keys())[:PAGE]
    return render("auditors/checkpoints.html", rows=rows, latest=latest, more=more,
                  next_since=rows[-1]["checkpoint"]["tree_size"] if rows else since,
                  notice=notice())


@bp.post("/checkpoints")
@page(*AUDITORS)
def checkpoint_sign():
    with svc().db.session() as s:
        before = checkpoints.latest_checkpoint(s)
    cp = checkpoint_now(svc(), actor=g.actor)
    if cp is None:
        raise InvalidInput("the audit log is empty")
    done = "checkpoint-unchanged" if before and before["tree_size"] == cp["tree_size"] \
        else "checkpointed"
    return redirect(url_for("auditors.checkpoint_history", done=done), code=303)


def _accounting():
    patient = request.form.get("patient", "").strip()
    if not patient:
        raise InvalidInput("give the patient's identifier (value, or system|value)")
    key = patient_key_from(svc(), patient)
    with svc().db.session() as s:
        audit_read(s, "audit.accounting", patient_key=key)
        acc = export.accounting(s, key, since=_day("since"), until=_day("until", end=True))
    return patient, acc


@bp.route("/accounting", methods=["GET", "POST"])
@page(*AUDITORS)
def accounting():
    if request.method == "GET":
        return render("auditors/accounting.html", acc=None, shown={})
    patient, acc = _accounting()
    shown = {"patient": patient, "since": request.form.get("since", ""),
             "until": request.form.get("until", "")}
    return render("auditors/accounting.html", acc=acc, shown=shown)


@bp.post("/accounting/export")
@page(*AUDITORS)
def accounting_export():
    _, acc = _accounting()
    if request.form.get("format") == "pdf":
        return _download(export.accounting_pdf(acc), "application/pdf",
                         "accounting-of-disclosures.pdf")
    import json

    return _download(json.dumps(acc, indent=2), "application/json",
                     "accounting-of-disclosures.json")


@bp.get("/figures")
@page("operator", *AUDITORS)
def charts():
    with svc().db.session() as s:
        shown = [figures.transfers_per_day(s), figures.delivery_latency(s),
                 figures.time_to_records(s)]
    return render("auditors/figures.html", charts=shown)


nav_link("auditors.events", "Audit log", *AUDITORS)
nav_link("auditors.checkpoint_history", "Checkpoints", *AUDITORS)
nav_link("auditors.accounting", "Accounting", *AUDITORS)
nav_link("auditors.charts", "Figures", "operator", *AUDITORS)
home_for("auditor", "auditors.events")
