"""Receive mode: documents a sender uploads as `Binary/{id}` before the bundle that
references them (the sending side is gateway/outbound/attachments.py).

The body is the document's raw bytes, streamed into the encrypted blob store and hashed
while written, refused over `max_binary_bytes` (413). Keyed by (sender, id): a repeat
PUT replaces bytes no accepted bundle references yet, and is a no-op for the same
bytes; once a bundle is accepted its documents never change. The bundle is refused,
all or nothing, if an attachment it references as `Binary/{id}` was not uploaded, or
its sha256 or size differ from what the attachment names; the receipt then names the
sha256 and size of each stored upload, so the sender's check proves they arrived.
Uploads no bundle took within `receive_upload_ttl_s` are deleted (hourly, by beat).
"""
from __future__ import annotations

import re
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from gateway import audit
from gateway.errors import Conflict, Forbidden, InvalidInput, NotFound
from gateway.exchange.attachments import declared_sha256, referenced
from gateway.runtime.services import Services
from gateway.storage.blobstore import CHUNK
from gateway.storage.models import ReceivedBinary

from .expiry import expire_unbound

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class UploadMismatch(InvalidInput):
    """A bundle names a document upload that is missing or holds other bytes."""

    http_status = 422


def check_id(binary_id: str) -> None:
    if not FHIR_ID.fullmatch(binary_id):
        raise InvalidInput("Binary id must be a FHIR id ([A-Za-z0-9-.]{1,64})")


def store(svc: Services, sender: str, binary_id: str, stream: BinaryIO, length: int,
          content_type: str) -> tuple[ReceivedBinary, bool]:
    """Stream one upload of `length` bytes (checked against `max_binary_bytes` by the
    endpoint) into the blob store; return its row and whether it is new."""
    if sender not in svc.settings.senders:
        raise Forbidden(f"sender {sender!r} is not a trusted sender of this gateway")
    got = 0
    with svc.blobs.writer() as w:
        while got < length:
            block = stream.read(min(CHUNK, length - got))
            if not block:
                raise InvalidInput("the body is shorter than its Content-Length")
            w.write(block)
            got += len(block)
    info = w.info
    try:
        row, created, drop = _record(svc, sender, binary_id, info, content_type[:128])
    except BaseException:
        svc.blobs.delete(info.key)
        raise
    if drop:
        svc.blobs.delete(drop)
    return row, created


def _record(svc: Services, sender: str, binary_id: str, info, content_type: str):
    """Insert or replace the row; return (row, created, blob key no longer used)."""
    with svc.db.session() as s:
        row = s.scalars(select(ReceivedBinary).filter_by(sender=sender, binary_id=binary_id)
                        .with_for_update()).first()
        if row is None:
            try:
                with s.begin_nested():
                    row = ReceivedBinary(sender=sender, binary_id=binary_id, content_type=content_type,
                                         sha256=info.sha256, size=info.size, blob_key=info.key)
                    s.add(row)
            except IntegrityError:  # a concurrent PUT of the same id: the sender retries
                raise Conflict(f"Binary/{binary_id} is being uploaded by another request") from None
            drop, created = None, True
        elif row.sha256 == info.sha256:
            drop, created = info.key, False  # the same bytes again: keep what we hold
        elif row.bundle_id is not None:
            raise UploadMismatch(f"Binary/{binary_id} belongs to an accepted bundle; "
                                 "its bytes cannot change")
        else:
            drop, created = row.blob_key, False
            row.sha256, row.size, row.blob_key = info.sha256, info.size, info.key
            row.content_type = content_type
        audit.record(s, "receive.binary.stored", actor=sender, role="peer", binary_id=binary_id,
                     sha256=row.sha256, size=row.size, replaced=not created and drop != info.key)
    return row, created, drop


def held(svc: Services, sender: str, binary_id: str) -> ReceivedBinary:
    with svc.db.session() as s:
        row = s.scalars(select(ReceivedBinary).filter_by(sender=sender, binary_id=binary_id)).first()
    if row is None:
        raise NotFound(f"no Binary/{binary_id}")
    return row


def check(svc: Services, sender: str, data: dict, only: set[int] | None = None) -> dict[str, dict]:
    """Every `Binary/{id}` attachment of the bundle against the sender's uploads;
    returns ref -> {"sha256", "size"} of what this gateway holds, or raises UploadMismatch.
    `only`: the indexes of the entries that may hold one (the others are not walked)."""
    found: dict[str, dict] = {}
    with svc.db.session() as s:
        for n, entry in enumerate(data.get("entry") or []):
            if only is not None and n not in only:
                continue
            for att in referenced(entry["resource"]):
                ref = att["url"]
                binary_id = ref.split("/", 1)[1]
                row = s.scalars(select(ReceivedBinary).filter_by(sender=sender, binary_id=binary_id)
                                ).first() if FHIR_ID.fullmatch(binary_id) else None
                if row is None:
                    raise UploadMismatch(f"the bundle references {ref[:80]}, which was not uploaded "
                                         "before it; nothing stored")
                declared = declared_sha256(att)
                if declared is None:
                    raise UploadMismatch(f"the attachment {ref} names no sha256 of its bytes")
                if declared != row.sha256:
                    raise UploadMismatch(f"the bytes uploaded as {ref} differ from the sha256 its "
                                         "DocumentReference names; nothing stored")
                if att.get("size") is not None and att.get("size") != row.size:
                    raise UploadMismatch(f"the bytes uploaded as {ref} differ in size from its "
                                         "DocumentReference; nothing stored")
                found[ref] = {"sha256": row.sha256, "size": row.size}
    return found


def bind(s, sender: str, found: dict[str, dict], bundle_row_id: str) -> None:
    """Inside the acceptance transaction: the checked uploads are this bundle's now, and
    unchanged since the check (a PUT in between would have replaced them)."""
    for ref, want in found.items():
        row = s.scalars(select(ReceivedBinary).filter_by(
            sender=sender, binary_id=ref.split("/", 1)[1]).with_for_update()).one()
        if row.sha256 != want["sha256"]:
            raise UploadMismatch(f"{ref} was replaced while the bundle was checked; send it again")
        if row.bundle_id is None:
            row.bundle_id = bundle_row_id


def open_for(svc: Services, sender: str, ref: str) -> ReceivedBinary | None:
    """The upload a received bundle's attachment names (inbox)."""
    binary_id = ref.split("/", 1)[1]
    if not FHIR_ID.fullmatch(binary_id):
        return None
    with svc.db.session() as s:
        return s.scalars(select(ReceivedBinary).filter_by(sender=sender, binary_id=binary_id)).first()


def sweep_now(svc: Services) -> int:
    def record_expiry(s, rows):
        for row in rows:
            audit.record(s, "receive.binary.expired", actor="system", binary_id=row.binary_id,
                         sender=row.sender, sha256=row.sha256, size=row.size)
    return expire_unbound(svc, ReceivedBinary, record_expiry)
