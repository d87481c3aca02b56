"""The body of each transfer step. Each takes (services, transfer id, lease owner),
commits its own progress as it goes, and returns the next state.

Re-running a step after a crash is safe: pulled items are unique per origin and the
connector is told which origins it already produced; mapped items are not mapped
again; the bundle is assembled deterministically.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from sqlalchemy import delete, func, select

from gateway import audit
from gateway.errors import GatewayError, MappingError, ReceiptInvalid
from gateway.outbound import attachments, bundles, delivery, imaging
from gateway.runtime.services import Services
from gateway.storage.models import Item, Transfer, TransferBundle, utcnow
from gateway.trust import receipts

from . import follow_ups, pulls
from .lease import Lease, Superseded
from .mapping import DOCUMENT_KINDS, Mapper

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


def mapping(svc: Services, transfer_id: str, owner: str) -> str:
    """Map what the pulls left "pulled" (mapping.py: most records were mapped as they
    were pulled), then give the DICOM instances their studies' outcomes."""
    t = _load(svc, transfer_id)
    with svc.db.session() as s:
        todo = s.execute(select(Item.id, Item.kind).filter_by(transfer_id=t.id, state="pulled")
                         .where(Item.kind != imaging.INSTANCE).order_by(Item.id)).all()
    mapper = Mapper(svc, t)
    lease = Lease(svc, t.id, owner)
    # documents are fingerprinted in the fax sandbox (a child process each) when there
    # is more than one source: mapped side by side in threads that wait on those children
    aside = {i for i, kind in todo if kind in DOCUMENT_KINDS} if mapper.several else set()
    pool = ThreadPoolExecutor(max(1, min(len(aside), os.cpu_count() or 1)), thread_name_prefix="map")
    try:
        pending = {pool.submit(mapper.map, item_id) for item_id in sorted(aside)}
        for item_id, _ in todo:
            if item_id not in aside:
                lease.renew_if_due()
                mapper.map(item_id)
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


def assembling(svc: Services, transfer_id: str, owner: str) -> str:
    t = _load(svc, transfer_id)
    with _images_meanwhile(svc, t, Lease(svc, t.id, owner)):
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


@contextlib.contextmanager
def _images_meanwhile(svc: Services, t: Transfer, lease: Lease):
    """Forward the DICOM instances in a thread while the bundle is assembled (they go
    before it, see imaging.py). What does not go now, `delivering` sends and reports:
    its forward retries what is missing and fails the transfer on a refusal."""
    with svc.db.session() as s:
        waiting = s.scalar(select(func.count()).select_from(Item).filter_by(
            transfer_id=t.id, kind=imaging.INSTANCE, state="mapped")
            .where(Item.forwarded_at.is_(None)))
    if not waiting or t.recipient not in svc.settings.peers:
        yield
        return
    lease.renew()  # the authorization is checked again before records leave

    def forward() -> None:
        try:
            imaging.forward(svc, t, lease.renew_if_due)
        except Exception as exc:  # noqa: BLE001 - delivering forwards again and reports
            log.info("transfer %s: images left for the delivering step (%s)", t.id,
                     type(exc).__name__)

    thread = threading.Thread(target=forward, name="forward", daemon=True)
    thread.start()
    try:
        with lease.held_while_blocked():  # a recipient slow to answer is not a dead worker
            yield
            thread.join()
    finally:
        thread.join()  # never two forwards of one transfer: a retry starts after this one


def _parts(svc: Services, transfer_id: str) -> list[TransferBundle]:
    with svc.db.session() as s:
        return s.scalars(select(TransferBundle).filter_by(transfer_id=transfer_id)
                         .order_by(TransferBundle.part)).all()


def delivering(svc: Services, transfer_id: str, owner: str) -> str:
    """Forward the DICOM instances not yet forwarded, then deliver every part not yet
    answered, in order; verify each answer at once."""
    t = _load(svc, transfer_id)
    lease = Lease(svc, t.id, owner)
    with lease.held_while_blocked():  # a recipient slow to answer is not a dead worker
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
