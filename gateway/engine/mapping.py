"""Mapping one pulled item into the FHIR resources it delivers.

A source's records are mapped as its pull stores them (pulls.py), so the mapping of a
FHIR record or a fax overlaps the pulls of the other sources; the `mapping` step
(steps.py) maps whatever is still "pulled" after the last source (a study's manifest,
an item whose mapping was interrupted) and settles the DICOM instances. Both go
through `Mapper`: an item is mapped once, under its row's lock (its state moves on
from "pulled"; a second mapper after a takeover waits, then finds it mapped).
"""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from connectors.base import RawRecord
from gateway.exchange import jsontext
from gateway.exchange.ids import patient_urn
from gateway.outbound import same_document
from gateway.runtime.services import Services
from gateway.storage.models import Item, Transfer, TransferSource
from mappings import Mapped, MappingContext, MappingFailed, PartlyInvalid, map_record

from . import follow_ups, policy

# Records that become documents: with more than one source each gets a fingerprint read
# in the fax sandbox (a child process each, same_document.py)
DOCUMENT_KINDS = frozenset({"fax", "pdf", "fhir-attachment"})


class Mapper:
    """Maps a transfer's items, each in its own session (each commits its own outcome)."""

    def __init__(self, svc: Services, t: Transfer):
        self.svc, self.t = svc, t
        with svc.db.session() as s:  # documents are fingerprinted when there are several
            self.several = s.scalar(select(func.count()).select_from(TransferSource)
                                    .filter_by(transfer_id=t.id)) > 1
        self.context = MappingContext(patient_reference=patient_urn(t.id))
        self.tmpdir = svc.settings.work_dir / t.id / "mapping"
        self._delivered: set[tuple[str, str]] | None = None

    @property
    def delivered(self) -> set[tuple[str, str]]:
        """What earlier transfers delivered to this recipient (a follow-up sends the rest)."""
        if self._delivered is None:
            with self.svc.db.session() as s:
                earlier = follow_ups.delivered_earlier(s, self.t)
            self._delivered = follow_ups.delivered_resources(self.svc, self.t) if earlier else set()
        return self._delivered

    def map(self, item_id: int) -> str:
        """Map the item if it is still "pulled"; return its state after."""
        with self.svc.db.session() as s:
            item = s.get(Item, item_id, with_for_update=True)
            if item.state == "pulled":
                self.tmpdir.mkdir(parents=True, exist_ok=True)
                _map_item(self.svc, self.t, item, self.context, self.tmpdir / f"{item.id}.rec",
                          self.delivered, self.several)
            return item.state


def _map_item(svc: Services, t: Transfer, item: Item, context: MappingContext, tmp: Path,
              delivered: set[tuple[str, str]], several_sources: bool) -> None:
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
        if several_sources and any(m.carries_record_bytes for m in mapped):
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
