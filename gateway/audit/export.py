"""Exports for auditors: log entries (NDJSON), FHIR AuditEvents (NDJSON or a Bundle), each
with its inclusion proof, and a patient's accounting of disclosures (JSON and PDF)."""
from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone

from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.storage.models import AuditEvent, Authorization

from . import checkpoints, queries
from .canonical import format_time
from .fhir_auditevent import GatewayIdentity, is_disclosure, to_fhir

_BATCH = 2000


def _proof_size(session: Session, tree_size: int | None) -> int | None:
    if tree_size is not None:
        return tree_size
    cp = checkpoints.latest_checkpoint(session)
    return cp["tree_size"] if cp else None


def iter_entries(session: Session, *, tree_size: int | None = None, with_proofs: bool = True,
                 **filters) -> Iterator[dict]:
    """Log entries matching `filters` (see queries.find_events), with inclusion proofs
    against `tree_size` (default: the latest signed checkpoint)."""
    size = _proof_size(session, tree_size) if with_proofs else None
    page: list[AuditEvent] = []
    for ev in queries.iter_events(session, batch=_BATCH, **filters):
        page.append(ev)
        if len(page) == _BATCH:
            yield from queries.with_proofs(session, page, size)
            page = []
    if page:
        yield from queries.with_proofs(session, page, size)


def iter_ndjson(session: Session, *, fhir: bool = False,
                me: GatewayIdentity = GatewayIdentity(), **kwargs) -> Iterator[str]:
    """One JSON line per event (log entries, or FHIR AuditEvents when `fhir`), streamed
    page by page so an API response or a file never holds the whole log."""
    for e in iter_entries(session, **kwargs):
        obj = to_fhir({**e["event"], "leaf_hash": e["leaf_hash"]}, me=me,
                      proof=e.get("inclusion_proof")) if fhir else e
        yield json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n"


def write_ndjson(session: Session, out, **kwargs) -> int:
    """Write `iter_ndjson` to the text stream `out`; returns the number of lines. Both
    forms verify offline with `records-gateway audit verify`."""
    n = 0
    for line in iter_ndjson(session, **kwargs):
        out.write(line)
        n += 1
    return n


def bundle(session: Session, *, me: GatewayIdentity = GatewayIdentity(), **kwargs) -> dict:
    """A FHIR R4 Bundle (type collection) of AuditEvents with their proofs, validated."""
    entries = [{"fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": to_fhir({**e["event"], "leaf_hash": e["leaf_hash"]}, me=me,
                                    proof=e.get("inclusion_proof"))}
               for e in iter_entries(session, **kwargs)]
    doc = {"resourceType": "Bundle", "type": "collection",
           "timestamp": format_time(datetime.now(timezone.utc)), "total": len(entries),
           "entry": entries}
    if not entries:
        del doc["entry"]
    del doc["total"]  # total is only for searchset/history bundles
    return Bundle.model_validate(doc).model_dump(mode="json", exclude_none=True)


# -- accounting of disclosures (HIPAA 45 CFR 164.528) --------------------------------

def _authorization_facts(session: Session, events: list[AuditEvent]) -> dict[str, dict]:
    """Purpose, data classes and recipient of each authorization, from its `verified` event
    and, for the purpose, the stored authorization's claims."""
    facts: dict[str, dict] = {}
    for ev in events:
        if ev.type == "authorization.verified" and ev.authorization_id:
            facts[ev.authorization_id] = dict(ev.detail or {})
    ids = {ev.authorization_id for ev in events if ev.authorization_id}
    if ids:
        for auth_id, claims in session.execute(
                select(Authorization.id, Authorization.claims).where(Authorization.id.in_(ids))):
            purpose = (claims or {}).get("purpose") if isinstance(claims, dict) else None
            if purpose:
                facts.setdefault(auth_id, {}).setdefault("purpose", purpose)
    return facts


def accounting(session: Session, patient_key: str, *, since: datetime | None = None,
               until: datetime | None = None) -> dict:
    """Who received what, when and why, for one patient: every completed disclosure under
    any of the patient's authorizations (HIPAA 45 CFR 164.528 content)."""
    events = list(queries.iter_events(session, patient_key=patient_key, since=since, until=until))
    facts = _authorization_facts(session, list(queries.iter_events(session, patient_key=patient_key)))
    rows = []
    for ev in events:
        if not is_disclosure(ev.type, ev.outcome):
            continue
        auth = facts.get(ev.authorization_id or "", {})
        d = {**{k: auth.get(k) for k in ("purpose", "data_classes", "recipient")},
             **{k: v for k, v in (ev.detail or {}).items() if v is not None}}
        what = []
        if d.get("data_classes"):
            classes = d["data_classes"]
            what.append("data: " + (", ".join(classes) if isinstance(classes, list) else str(classes)))
        if d.get("entries") is not None:
            what.append(f"{d['entries']} FHIR resources")
        if d.get("size") is not None:
            what.append(f"{d['size']} bytes")
        rows.append({
            "seq": ev.seq, "date": format_time(ev.at), "recipient": d.get("recipient"),
            "recipient_endpoint": d.get("recipient_endpoint"),
            "description": "; ".join(what) or "medical records bundle",
            "bundle_id": d.get("bundle_id"),
            "bundle_sha256": d.get("bundle_sha256") or d.get("sha256"),
            "purpose": d.get("purpose"), "authorization_id": ev.authorization_id,
            "transfer_id": ev.transfer_id, "leaf_hash": ev.leaf_hash})
    cp = checkpoints.latest_checkpoint(session)
    return {"patient_key": patient_key,
            "period": {"since": format_time(since) if since else None,
                       "until": format_time(until) if until else None},
            "generated": format_time(datetime.now(timezone.utc)),
            "checkpoint": cp, "disclosures": rows}


def accounting_pdf(acc: dict, *, title: str = "Accounting of disclosures") -> bytes:
    """The accounting as a PDF (reportlab): one table row per disclosure."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    small = styles["BodyText"].clone("small", fontSize=8, leading=10)
    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=landscape(A4), title=title,
                            leftMargin=36, rightMargin=36, topMargin=36, bottomMargin=36)
    cp = acc.get("checkpoint")
    story = [Paragraph(title, styles["Title"]),
             Paragraph(f"Patient key (HMAC-SHA-256 of the identifier): {acc['patient_key']}", small),
             Paragraph(f"Generated {acc['generated']}; period {acc['period']['since'] or 'start'} "
                       f"to {acc['period']['until'] or 'now'}; {len(acc['disclosures'])} disclosure(s).",
                       small)]
    if cp:
        story.append(Paragraph(f"Log checkpoint: size {cp['tree_size']}, root {cp['root_hash']}, "
                               f"signed {cp['timestamp']} (key {cp['key_id']}).", small))
    story.append(Spacer(1, 12))
    head = ["Date (UTC)", "Recipient", "What", "Purpose", "Authorization", "Log entry"]
    data = [head] + [[Paragraph(str(v or "-"), small) for v in (
        r["date"], r["recipient"], r["description"] + (f"; sha256 {r['bundle_sha256']}" if r["bundle_sha256"] else ""),
        r["purpose"], r["authorization_id"], f"seq {r['seq']}")] for r in acc["disclosures"]]
    if len(data) == 1:
        data.append([Paragraph("No disclosures in this period.", small)] + [""] * 5)
    table = Table(data, colWidths=[90, 110, 260, 70, 120, 60], repeatRows=1)
    table.setStyle(TableStyle([("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey),
                               ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                               ("VALIGN", (0, 0), (-1, -1), "TOP"),
                               ("FONTSIZE", (0, 0), (-1, 0), 8)]))
    story.append(table)
    doc.build(story)
    return buf.getvalue()
