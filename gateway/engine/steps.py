"""The body of each transfer step. Each takes (services, transfer id, lease owner),
commits its own progress as it goes, and returns the next state.

Re-running a step after a crash is safe: pulled items are unique per origin and the
connector is told which origins it already produced; mapped items are not mapped
again; the bundle is assembled deterministically.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from sqlalchemy import delete, func, select

from connectors.base import RawRecord
from gateway import audit
from gateway.errors import GatewayError, MappingError, ReceiptInvalid
from gateway.exchange import jsontext
from gateway.exchange.ids import patient_urn
from gateway.outbound import attachments, bundles, delivery, imaging, same_document
from gateway.runtime.services import Services
from gateway.storage.models import Item, Transfer, TransferBundle, utcnow
from gateway.trust import receipts
from mappings import Mapped, MappingContext, MappingFailed, PartlyInvalid, map_record

from . import follow_ups, policy, pulls
from .lease import Lease, Superseded

log = logging.getLogger(__name__)


class SourcesFailed(GatewayError):
    """One or more sources could not be pulled; the message names each and why."""


def _load(svc: Services, transfer_id: str) -> Transfer:
    with svc.db.session() as s:
        t = s.get(Transfer, transfer_id)
        _ = t.sources, t.authorization  # load before the session closes
        return t


def pending(svc: Services, transfer_id: str, owner: str) -> str:
    return "pulling"


def pulling(svc: Services, transfer_id: str, owner: str) -> str:
    """Start a pull task for each source not finished (gateway/engine/pulls.py); they run
    side by side and the last to finish moves the transfer on. Run again (the reconciler,
    a fax arriving, an operator), it starts what is due and not running, or, every source
    finished (a pull's message lost after its commit), moves it on the same way."""
    due, unfinished, failed = pulls.survey(svc, transfer_id)
    if unfinished:
        for name in due:
            pulls.enqueue(transfer_id, name)
        return "pulling"  # stays: no step of its own until the sources are done
    if failed:
        raise SourcesFailed("; ".join(f"source {name}: {error}" for name, error in failed))
    pulls.finish_if_last(svc, transfer_id)  # the one way to mapping: a conditional update
    return "pulling"


# Records that become documents: with more than one source each gets a fingerprint read
# in the fax sandbox (a child process each, same_document.py), so these are mapped side
# by side in threads that wait on those children, while the rest is mapped meanwhile.
DOCUMENT_KINDS = frozenset({"fax", "pdf", "fhir-attachment"})


def mapping(svc: Services, transfer_id: str, owner: str) -> str:
    t = _load(svc, transfer_id)
    with svc.db.session() as s:
        todo = s.execute(select(Item.id, Item.kind).filter_by(transfer_id=t.id, state="pulled")
                         .where(Item.kind != imaging.INSTANCE).order_by(Item.id)).all()
    context = MappingContext(patient_reference=patient_urn(t.id))
    tmpdir = svc.settings.work_dir / t.id / "mapping"
    tmpdir.mkdir(parents=True, exist_ok=True)
    lease = Lease(svc, t.id, owner)
    with svc.db.session() as s:
        delivered = follow_ups.delivered_resources(svc, t) if follow_ups.delivered_earlier(s, t) else set()

    def map_one(item_id: int) -> None:  # its own session: each item commits its own outcome
        with svc.db.session() as s:
            item = s.get(Item, item_id)
            _map_item(svc, t, item, context, tmpdir / f"{item.id}.rec", delivered)

    aside = {i for i, kind in todo if kind in DOCUMENT_KINDS} if len(t.sources) > 1 else set()
    pool = ThreadPoolExecutor(max(1, min(len(aside), os.cpu_count() or 1)), thread_name_prefix="map")
    try:
        pending = {pool.submit(map_one, item_id) for item_id in sorted(aside)}
        for item_id, _ in todo:
            if item_id not in aside:
                lease.renew_if_due()
                map_one(item_id)
        while pending:
            lease.renew_if_due()
            done, pending = wait(pending, timeout=5, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()
    finally:
        pool.shutdown(cancel_futures=True)
    imaging.settle_instances(svc, t)  # after their studies: instances follow them
    with svc.db.session() as s:
        counts = dict(s.execute(select(Item.state, func.count()).filter_by(transfer_id=t.id)
                                .group_by(Item.state)).all())
        audit.record(s, "transfer.mapping.finished", actor="worker", transfer_id=t.id,
                     authorization_id=t.authorization_id, **{k: v for k, v in counts.items()})
        failed = s.scalars(select(Item).filter_by(transfer_id=t.id, state="failed")
                           .order_by(Item.id)).all()
        if failed:
            shown = "; ".join(f"{i.source}/{i.origin}: {i.error}" for i in failed[:5])
            more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
            raise MappingError(f"{len(failed)} record(s) cannot be delivered: {shown}{more}; "
                               "fix them at the source, or retry with skip_failed_items")
        if not counts.get("mapped") and follow_ups.delivered_earlier(s, t):
            s.get(Transfer, t.id).reason = "nothing new since the last delivery"
            return "completed"  # a follow-up that found nothing new sends nothing
    return "assembling"


def _map_item(svc: Services, t: Transfer, item: Item, context: MappingContext, tmp: Path,
              delivered: set[tuple[str, str]]) -> None:
    if item.kind == "rejected":
        item.state = "failed"
        return
    svc.blobs.copy_to(item.blob_key, tmp)
    try:
        record = RawRecord(source=item.source, kind=item.kind, media_type=item.media_type,
                           path=tmp, sha256=item.sha256, size=item.size, origin=item.origin,
                           fetched_at=item.fetched_at, metadata=item.record_meta or {})
        try:
            mapped = map_record(record, context)
        except PartlyInvalid as exc:  # the valid resources go; each invalid one is reported
            if not exc.valid:
                raise
            mapped = exc.valid
            item.record_meta = {**(item.record_meta or {}), "invalid": [
                {"origin": bad.origin, "reason": bad.error} for bad in exc.invalid]}
        if len(t.sources) > 1 and any(m.carries_record_bytes for m in mapped):
            # a copy of this document may have come from another source in other bytes
            item.record_meta = {**(item.record_meta or {}),
                                "fingerprint": same_document.fingerprint(tmp, item.media_type)}
    except MappingFailed as exc:
        item.state, item.error = "failed", str(exc)
        return
    finally:
        tmp.unlink(missing_ok=True)
    kept = [m for m in mapped if policy.allows(t.authorization, m.data_class, m.clinical_date)]
    if not kept:
        item.state = "excluded"
        item.error = "outside the authorized data classes or dates"
        return
    sent = follow_ups.digests(kept, context.patient_reference)
    kept = follow_ups.new_only(kept, sent, delivered)
    if not kept:
        item.state = follow_ups.SENT_BEFORE
        return
    if sent:  # what the recipient will hold: later follow-ups leave it out
        item.record_meta = {**(item.record_meta or {}), "sent": follow_ups.still_sent(kept, sent)}
    payload = b"[" + b",".join(_stored(m) for m in kept) + b"]"
    item.resources_blob = svc.blobs.put_bytes(payload).key
    item.data_class = kept[0].data_class
    item.clinical_date = kept[0].clinical_date.isoformat() if kept[0].clinical_date else None
    item.state = "mapped"


def _stored(m: Mapped) -> bytes:
    """One mapped resource as stored for the bundle (read back with jsontext.loads): its
    JSON text as it travels, the source's own for a FHIR source (every value as served)."""
    text = m.json if m.json is not None else m.resource.model_dump_json()
    rest = jsontext.dumps({"data_class": m.data_class,
                           "clinical_date": m.clinical_date.isoformat() if m.clinical_date else None,
                           "carries_record_bytes": m.carries_record_bytes})
    return b'{"resource":' + (text.encode() if isinstance(text, str) else text) + b"," + rest[1:]


def assembling(svc: Services, transfer_id: str, owner: str) -> str:
    t = _load(svc, transfer_id)
    parts = bundles.assemble(svc, t)
    signatures = []
    for info in parts:  # a part is bounded by bundle_max_bytes: signed in memory
        signatures.append(receipts.sign_bundle(svc.keys, svc.blobs.read_bytes(info.blob.key),
                                               f"urn:uuid:{info.bundle_id}"))
    with svc.db.session() as s:
        row = s.get(Transfer, transfer_id)
        old = [b.blob_key for b in s.scalars(select(TransferBundle).filter_by(transfer_id=t.id))]
        s.execute(delete(TransferBundle).where(TransferBundle.transfer_id == t.id))
        s.flush()
        for info, signature in zip(parts, signatures):
            s.add(TransferBundle(transfer_id=t.id, part=info.part, parts=info.parts,
                                 bundle_id=info.bundle_id, blob_key=info.blob.key,
                                 sha256=info.blob.sha256, size=info.blob.size, entries=info.entries,
                                 entry_hashes=info.entry_hashes, signature=signature,
                                 attachments={u.ref: {"sha256": u.sha256, "size": u.size}
                                              for u in info.uploads}))
            audit.record(s, "transfer.bundle.assembled", actor="worker", transfer_id=t.id,
                         authorization_id=t.authorization_id, bundle_id=info.bundle_id,
                         part=info.part, parts=info.parts, sha256=info.blob.sha256,
                         size=info.blob.size, entries=info.entries)
        attachments.plan(s, t.id, [u for info in parts for u in info.uploads])
        first = parts[0]
        row.bundle_id, row.bundle_blob = first.bundle_id, first.blob.key
        row.bundle_sha256, row.bundle_size = first.blob.sha256, first.blob.size
        row.receipt_jws, row.receipt = None, None
    for key in set(old) - {p.blob.key for p in parts}:
        svc.blobs.delete(key)
    return "delivering"


def _parts(svc: Services, transfer_id: str) -> list[TransferBundle]:
    with svc.db.session() as s:
        return s.scalars(select(TransferBundle).filter_by(transfer_id=transfer_id)
                         .order_by(TransferBundle.part)).all()


def delivering(svc: Services, transfer_id: str, owner: str) -> str:
    """Forward the DICOM instances not yet forwarded, then deliver every part not yet
    answered, in order; verify each answer at once."""
    t = _load(svc, transfer_id)
    lease = Lease(svc, t.id, owner)
    imaging.forward(svc, t, lease.renew_if_due)
    for part in _parts(svc, transfer_id):
        if part.state != "assembled":
            continue
        lease.renew()  # the authorization is checked again before each bundle leaves
        with svc.db.session() as s:
            audit.record(s, "transfer.delivery.attempt", actor="worker", transfer_id=t.id,
                         authorization_id=t.authorization_id, recipient=t.recipient,
                         bundle_id=part.bundle_id, part=part.part, attempt=t.attempts + 1)
        attachments.send(svc, t, part, lease.renew_if_due)  # large documents go first
        with lease.held_while_blocked():  # the answer may take longer than a lease
            answer = delivery.deliver(svc, t, part)
        with svc.db.session() as s:
            if s.get(Transfer, transfer_id).lease_owner != owner:
                # the answer outlived our lease and another run took the step over: it
                # records the delivery (the recipient answers a repeat the same), not us
                raise Superseded()
            row = s.get(TransferBundle, part.id)
            row.answer, row.state, row.delivered_at = answer, "delivered", utcnow()
            if part.part == 1:
                s.get(Transfer, transfer_id).receipt_jws = answer
            audit.record(s, "transfer.delivery.sent", actor="worker", transfer_id=t.id,
                         authorization_id=t.authorization_id, recipient=t.recipient,
                         bundle_id=part.bundle_id, part=part.part, sha256=part.sha256)
        part.answer = answer
        _verify_part(svc, t, part)
    return "awaiting_receipt"


def _verify_part(svc: Services, t: Transfer, part: TransferBundle) -> dict:
    try:
        claims = delivery.check_answer(svc, t, part)
    except ReceiptInvalid as exc:
        # no proof: the part counts as not delivered; a retry asks again (the recipient
        # answers a repeat with its original, untouched receipt)
        with svc.db.session() as s:
            s.get(TransferBundle, part.id).state = "assembled"
            audit.record(s, "transfer.receipt.refused", actor="worker", transfer_id=t.id,
                         authorization_id=t.authorization_id, outcome="failure",
                         bundle_id=part.bundle_id, part=part.part, error=str(exc))
        raise
    kind = "acknowledged" if claims.get("kind") == "unsigned-acknowledgment" else "receipted"
    with svc.db.session() as s:
        row = s.get(TransferBundle, part.id)
        row.receipt, row.state = claims, kind
        audit.record(s, "transfer.receipt.verified" if kind == "receipted"
                     else "transfer.receipt.acknowledged", actor="worker", transfer_id=t.id,
                     authorization_id=t.authorization_id, bundle_id=part.bundle_id,
                     part=part.part, receipt_id=claims.get("receipt_id"),
                     receiver=claims.get("iss"), sha256=claims.get("sha256"),
                     signed=kind == "receipted")
    return claims


def awaiting_receipt(svc: Services, transfer_id: str, owner: str) -> str:
    t = _load(svc, transfer_id)
    parts = _parts(svc, transfer_id)
    if any(part.state == "assembled" for part in parts):
        return "delivering"  # resumed after a refused receipt: deliver again
    for part in parts:
        if part.state == "delivered":
            part.receipt = _verify_part(svc, t, part)
    with svc.db.session() as s:
        row = s.get(Transfer, transfer_id)
        parts = s.scalars(select(TransferBundle).filter_by(transfer_id=transfer_id)
                          .order_by(TransferBundle.part)).all()
        # the per-instance C-STORE / STOW-RS outcomes acknowledge the images
        forwarded = imaging.forward_summary(s, transfer_id)
        extra = {"dicomForwarded": forwarded} if forwarded else {}
        row.receipt = dict(parts[0].receipt, parts=len(parts), **extra) if parts else None
        row.reason = None
    return "completed"


HANDLERS = {"pending": pending, "pulling": pulling, "mapping": mapping,
            "assembling": assembling, "delivering": delivering,
            "awaiting_receipt": awaiting_receipt}
