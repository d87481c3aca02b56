"""/audit: what auditors read. Checkpoints and proofs are public (hashes only); events,
chains, exports and accountings are for the auditor role, and reading them is logged."""
from __future__ import annotations

from datetime import datetime

from flask import Blueprint, Response, g, jsonify, request

from gateway import audit
from gateway.audit import checkpoints, export, queries
from gateway.audit import log as audit_log
from gateway.engine.checkpoints import checkpoint_now, identity, patient_key_from
from gateway.errors import InvalidInput

from .auth import require, svc

bp = Blueprint("audit", __name__, url_prefix="/audit")


def _int(name: str, default: int | None = None) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number") from None


def _time(name: str) -> datetime | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be an ISO 8601 date-time with a time zone") from None
    if value.tzinfo is None:
        raise InvalidInput(f"{name} must carry a time zone (e.g. 2026-01-31T00:00:00+00:00)")
    return value


def _filters() -> dict:
    f = {"transfer_id": request.args.get("transfer"),
         "authorization_id": request.args.get("authorization"),
         "actor": request.args.get("actor"), "type_prefix": request.args.get("type"),
         "since": _time("since"), "until": _time("until")}
    if patient := request.args.get("patient"):
        f["patient_key"] = patient_key_from(patient)
    return {k: v for k, v in f.items() if v is not None}


def _log_read(what: str, filters: dict) -> None:
    with svc().db.session() as s:
        audit.record(s, f"api.read.audit.{what}", actor=g.actor, role=g.role,
                     transfer_id=filters.get("transfer_id"),
                     authorization_id=filters.get("authorization_id"),
                     patient_key=filters.get("patient_key"))


@bp.get("/events")
@require("auditor", "admin")
def events():
    filters = _filters()
    _log_read("events", filters)
    with svc().db.session() as s:
        found = queries.find_events(s, after_seq=_int("after", 0), limit=_int("limit", 1000),
                                    **filters)
        cp = checkpoints.latest_checkpoint(s)
        entries = queries.with_proofs(s, found, cp["tree_size"] if cp else None)
    return jsonify({"checkpoint": cp, "events": entries})


@bp.get("/transfers/<transfer_id>/chain")
@require("auditor", "admin")
def chain(transfer_id: str):
    _log_read("chain", {"transfer_id": transfer_id})
    with svc().db.session() as s:
        return jsonify(queries.transfer_chain(s, transfer_id))


@bp.get("/export")
@require("auditor", "admin")
def export_events():
    fmt = request.args.get("format", "ndjson")
    if fmt not in ("ndjson", "fhir-ndjson", "bundle"):
        raise InvalidInput("format must be ndjson, fhir-ndjson or bundle")
    filters = _filters()
    _log_read("export", filters)
    me = identity(svc())
    if fmt == "bundle":
        with svc().db.session() as s:
            response = jsonify(export.bundle(s, me=me, **filters))
        response.mimetype = "application/fhir+json"
        return response

    db = svc().db  # the body is streamed after this view returns, outside its app context

    def stream():
        with db.session() as s:
            yield from export.iter_ndjson(s, fhir=fmt == "fhir-ndjson", me=me, **filters)

    return Response(stream(), mimetype="application/x-ndjson")


@bp.get("/accounting")
@require("auditor", "admin")
def accounting():
    patient = request.args.get("patient")
    if not patient:
        raise InvalidInput("patient is required (a patient key or 'system|value')")
    key = patient_key_from(patient)
    _log_read("accounting", {"patient_key": key})
    with svc().db.session() as s:
        acc = export.accounting(s, key, since=_time("since"), until=_time("until"))
    if request.args.get("format") == "pdf":
        return Response(export.accounting_pdf(acc), mimetype="application/pdf")
    return jsonify(acc)


@bp.get("/checkpoints")
def checkpoint_list():
    with svc().db.session() as s:
        doc = checkpoints.checkpoints_document(s, since_size=_int("since_size", 0),
                                               limit=_int("limit"), jwks=svc().keys.jwks())
    response = jsonify(doc)
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/checkpoints/latest")
def checkpoint_latest():
    with svc().db.session() as s:
        return jsonify(checkpoints.latest_checkpoint(s))


@bp.post("/checkpoints")
@require("admin", "auditor")
def checkpoint_create():
    cp = checkpoint_now(svc(), actor=g.actor)
    if cp is None:
        raise InvalidInput("the audit log is empty")
    return jsonify(cp), 201


@bp.get("/consistency")
def consistency():
    first, second = _int("first"), _int("second")
    if first is None:
        raise InvalidInput("first is required")
    with svc().db.session() as s:
        return jsonify(audit_log.consistency_proof(s, first, second))


@bp.get("/events/<int:seq>/proof")
def inclusion(seq: int):
    with svc().db.session() as s:
        return jsonify(audit_log.inclusion_proof(s, seq, _int("tree_size")))
