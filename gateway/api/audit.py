"""/audit: what auditors read. Checkpoints and proofs are public (hashes only); events,
chains, exports and accountings are for the auditor role, and reading them is logged."""
from __future__ import annotations

import hashlib
import json
from datetime import datetime

from flask import Blueprint, Response, g, jsonify, request

from gateway import audit
from gateway.audit import checkpoints, export, queries
from gateway.audit import log as audit_log
from gateway.engine.checkpoints import checkpoint_now, identity, is_patient_key, patient_key_from
from gateway.errors import InvalidInput

from .auth import require, svc
from .params import query_number, whole_number

bp = Blueprint("audit", __name__, url_prefix="/audit")

CHECKPOINT_PAGE, CHECKPOINT_PAGE_MAX = 100, 1000  # the public list is paged: each page has proofs


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
    if key := _patient():
        f["patient_key"] = key
    return {k: v for k, v in f.items() if v is not None}


def _patient() -> str | None:
    """The patient filter: a patient key (an opaque keyed hash) may be in the query; an
    identifier (`system|value`) only in the X-Patient header, since URLs are written to
    proxies' and servers' access logs."""
    in_url = request.args.get("patient")
    if in_url is not None and not is_patient_key(in_url):
        raise InvalidInput("a patient identifier goes in the X-Patient header, not the URL; "
                           "the patient query parameter takes only a patient key (64 hex)")
    value = request.headers.get("X-Patient") or in_url
    return patient_key_from(svc(), value) if value else None


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
        found = queries.find_events(s, after_seq=query_number("after", 0),
                                    limit=query_number("limit", 1000),
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
    key = _patient()
    if key is None:
        raise InvalidInput("a patient is required: X-Patient: system|value, or ?patient=<key>")
    _log_read("accounting", {"patient_key": key})
    with svc().db.session() as s:
        acc = export.accounting(s, key, since=_time("since"), until=_time("until"))
    if request.args.get("format") == "pdf":
        return Response(export.accounting_pdf(acc), mimetype="application/pdf")
    return jsonify(acc)


@bp.get("/checkpoints")
def checkpoint_list():
    """Public: one page of checkpoints with the consistency proof between each pair. A page
    that is followed by another never changes (the log only grows), so it may be cached
    for good; the last page is revalidated by its ETag without building proofs again."""
    since, limit = query_number("since_size", 0), query_number("limit", CHECKPOINT_PAGE)
    if not 1 <= limit <= CHECKPOINT_PAGE_MAX:
        raise InvalidInput(f"limit must be between 1 and {CHECKPOINT_PAGE_MAX}")
    with svc().db.session() as s:
        page = checkpoints.list_checkpoints(s, since_size=since, limit=limit + 1)
        more, page = len(page) > limit, page[:limit]
        etag = hashlib.sha256(json.dumps([[c["tree_size"], c["root_hash"], c["key_id"]]
                                          for c in page]).encode()).hexdigest()[:32]
        if etag in request.if_none_match:
            response = Response(status=304)
        else:
            doc = checkpoints.checkpoints_document(s, since_size=since, limit=limit,
                                                   jwks=svc().keys.jwks())
            if more:  # the next page starts at this one's last checkpoint: proofs chain on
                doc["next"] = f"/audit/checkpoints?since_size={page[-1]['tree_size']}&limit={limit}"
            response = jsonify(doc)
    response.set_etag(etag)
    response.headers["Cache-Control"] = ("public, max-age=31536000, immutable" if more
                                         else "no-cache")
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
    first, second = query_number("first"), query_number("second")
    if first is None:
        raise InvalidInput("first is required")
    with svc().db.session() as s:
        return jsonify(audit_log.consistency_proof(s, first, second))


@bp.get("/events/<int:seq>/proof")
def inclusion(seq: int):
    seq = whole_number(seq, "seq")
    with svc().db.session() as s:
        return jsonify(audit_log.inclusion_proof(s, seq, query_number("tree_size")))
