"""The receiving center's pages: the inbox, an item with its patient summary first, its
documents in a sandboxed frame, its studies with a frame-by-frame image viewer, and the
reply form for the written second opinion.

The reads are gateway/inbound/inbox.py's, as the API's are, and each page that shows
patient data logs `web.read.<what>`. Opening an item is what a person opening the
records is: it signs the "opened" receipt and sends it to the sender
(gateway/inbound/opened.py). A viewer's frames are logged with the viewer page that
shows them, not one event per picture.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import datetime, timezone

from flask import Response, g, make_response, redirect, request, url_for
from sqlalchemy import select

from connectors.dicom.uids import clean_uid
from gateway.errors import InvalidInput, NotFound
from gateway.inbound import inbox
from gateway.inbound.opened import mark_opened
from gateway.inbound.replies import send_reply
from gateway.storage.models import AuditEvent, ReceivedBundle

from . import images
from .pages import CSP, NOTICES, blueprint, nav_link, notice, render
from .session import page, svc
from .signin import home_for

bp = blueprint("center", "/center")
STAFF = ("recipient",)  # as the API's inbox: a recipient token or person, scoped to its org
NOTICES.setdefault("replied", "Your opinion was sent, signed, and the sender's receipt verified.")
SHOWN_INLINE = {"application/pdf", "text/plain", "image/png", "image/jpeg"}


def _org() -> str:
    return g.organization or svc().settings.organization


def _row(received_id: str, action: str | None) -> ReceivedBundle:
    with svc().db.session() as s:
        return inbox.get(s, received_id, _org(), action, g.actor, g.role, face="web")


@bp.get("/")
@page(*STAFF)
def inbox_page():
    rows = [inbox.view(r) for r in inbox.received(svc(), _org())]
    return render("center/inbox.html", rows=rows)


@bp.get("/inbox/<received_id>")
@page(*STAFF)
def item(received_id: str):
    row = _row(received_id, "received_item")
    data = inbox.load(svc(), row)
    opened = inbox.view(mark_opened(svc(), row.id, g.actor))  # a person opened the records
    return render("center/item.html", item=opened, summary=inbox.summary(data, row.id),
                  studies=inbox.studies(svc(), row, data), replies=_replies(row),
                  notice=notice())


def _replies(row: ReceivedBundle) -> list[dict]:
    """The opinions already sent in answer to this bundle (from the audit log)."""
    with svc().db.session() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.type == "receive.reply.sent")
                           .order_by(AuditEvent.seq.desc()).limit(1000))
        return [{"at": e.at.isoformat(), "by": e.actor, **{k: (e.detail or {}).get(k) for k in
                                                            ("bundle", "receipt_id")}}
                for e in events if (e.detail or {}).get("in_reply_to") == row.bundle_identifier]


def _document(data: dict, received_id: str, doc_id: str) -> dict:
    for doc in inbox.documents(data, received_id):
        if doc["fullUrl"] == f"urn:uuid:{doc_id}":
            return doc
    raise NotFound(f"no document {doc_id} in {received_id}")


@bp.get("/inbox/<received_id>/documents/<doc_id>")
@page(*STAFF)
def document(received_id: str, doc_id: str):
    row = _row(received_id, "received_document")
    doc = _document(inbox.load(svc(), row), row.id, doc_id)
    media, _ = inbox.served_as(doc["contentType"], doc_id)
    response = make_response(render("center/document.html", item=inbox.view(row), doc=doc,
                                    doc_id=doc_id, media=media, inline=media in SHOWN_INLINE))
    # the pages' policy, and frames from our own origin: the document's sandboxed frame
    response.headers["Content-Security-Policy"] = f"{CSP}; frame-src 'self'"
    return response


@bp.get("/inbox/<received_id>/documents/<doc_id>/content")
@page(*STAFF)
def document_content(received_id: str, doc_id: str):
    """The document's bytes for its frame (or as a download with ?download=1): in a CSP
    sandbox (no script, no same-origin rights), framed by our own page only."""
    row = _row(received_id, None)  # the document page logged this view
    content = inbox.document_content(svc(), row, doc_id)
    media, filename = inbox.served_as(content.content_type, content.name)
    how = "attachment" if request.args.get("download") or media not in SHOWN_INLINE else "inline"
    response = Response(content.body, mimetype=media)
    if content.size is not None:
        response.headers["Content-Length"] = str(content.size)
    response.headers["Content-Disposition"] = f'{how}; filename="{filename}"'
    response.headers["Content-Security-Policy"] = (
        "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
        "frame-ancestors 'self'")
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


# -- images -------------------------------------------------------------------------

_FACTS: OrderedDict[str, images.InstanceFacts] = OrderedDict()  # by blob key (immutable)
_FACTS_LOCK, FACTS_KEPT = threading.Lock(), 20_000


def _facts(row) -> images.InstanceFacts:
    with _FACTS_LOCK:
        if row.blob_key in _FACTS:
            _FACTS.move_to_end(row.blob_key)
            return _FACTS[row.blob_key]
    facts = images.read_facts(svc().blobs.read_bytes(row.blob_key))
    with _FACTS_LOCK:
        _FACTS[row.blob_key] = facts
        while len(_FACTS) > FACTS_KEPT:
            _FACTS.popitem(last=False)
    return facts


def _study(received_id: str, study_uid: str, action: str | None):
    study = clean_uid(study_uid)
    if study is None:
        raise NotFound("not a DICOM UID")
    row = _row(received_id, action)
    rows = inbox.study_rows(svc(), row, inbox.load(svc(), row), study)
    return row, study, rows


def _series(rows, series_uid: str) -> tuple[list, list[images.InstanceFacts]]:
    mine = [r for r in rows if r.series_uid == series_uid]
    if not mine:
        raise NotFound(f"no instances of series {series_uid} are held here")
    return mine, [_facts(r) for r in mine]


@bp.get("/inbox/<received_id>/studies/<study_uid>")
@page(*STAFF)
def study(received_id: str, study_uid: str):
    row, study, rows = _study(received_id, study_uid, "received_study")
    series: dict[str, dict] = {}
    for r in rows:
        f = _facts(r)
        s = series.setdefault(r.series_uid, {"uid": r.series_uid, "number": f.series_number,
                                             "modality": f.modality, "instances": 0, "frames": 0,
                                             "description": f.series_description})
        s["instances"] += 1
        s["frames"] += f.frames if f.has_pixels else 0
    ordered = sorted(series.values(), key=lambda s: (s["number"] is None, s["number"] or 0))
    return render("center/study.html", item=inbox.view(row), study=study, series=ordered)


@bp.get("/inbox/<received_id>/studies/<study_uid>/series/<series_uid>")
@page(*STAFF)
def viewer(received_id: str, study_uid: str, series_uid: str):
    row, study, rows = _study(received_id, study_uid, "received_images")
    _, facts = _series(rows, series_uid)
    frames = images.frame_order(facts)
    try:
        at = min(max(int(request.args.get("frame", "1")), 1), len(frames))
    except ValueError:
        raise InvalidInput("frame must be a number") from None
    return render("center/viewer.html", item=inbox.view(row), study=study, series=series_uid,
                  facts=facts[0], count=len(frames), at=at)


@bp.get("/inbox/<received_id>/studies/<study_uid>/series/<series_uid>/frames/<int:n>")
@page(*STAFF, touch=True)
def frame(received_id: str, study_uid: str, series_uid: str, n: int):
    """Frame `n` (1-based, in viewing order) of the series, as a PNG."""
    _, _, rows = _study(received_id, study_uid, None)  # the viewer page logged this view
    mine, facts = _series(rows, series_uid)
    frames = images.frame_order(facts)
    if not 1 <= n <= len(frames):
        raise NotFound(f"the series has {len(frames)} frames")
    sop, index = frames[n - 1]
    blob = next(r.blob_key for r in mine if r.sop_instance_uid == sop)
    rendered = images.render_frame(svc().blobs.read_bytes(blob), index)
    response = Response(rendered.png, mimetype="image/png")
    response.headers["X-Content-Type-Options"] = "nosniff"
    if rendered.placeholder:
        response.headers["X-Frame-Placeholder"] = rendered.placeholder
    return response


# -- the written opinion ----------------------------------------------------------------

@bp.post("/inbox/<received_id>/reply")
@page(*STAFF)
def reply(received_id: str):
    """Send the center's opinion as a DiagnosticReport back to the sender (signed,
    receipted: see gateway/inbound/replies.py)."""
    title = request.form.get("title", "").strip() or "Second opinion"
    text = request.form.get("conclusion", "").strip()
    if not text:
        raise InvalidInput("write the opinion before sending it")
    if len(text) > 100_000 or len(title) > 200:
        raise InvalidInput("the opinion is longer than 100,000 characters or its title than 200")
    row = _row(received_id, "received_reply")
    resource = {"resourceType": "DiagnosticReport", "status": request.form.get("status", "final")
                if request.form.get("status") in ("preliminary", "final", "amended") else "final",
                "code": {"text": title}, "conclusion": text,
                "issued": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    send_reply(svc(), row, resource, g.actor)
    return redirect(url_for("center.item", received_id=row.id, done="replied"), code=303)


nav_link("center.inbox_page", "Inbox", *STAFF)
home_for("recipient", "center.inbox_page")
