"""The standing DICOM receiver: one C-MOVE destination for every worker.

`records-gateway dicom-receiver` (gateway/cli/dicom_receiver.py) runs the Storage SCP of
connectors.dicom.scp on a stable AE title, host and port, with the C-STORE routing of
`ReceiverRouter` instead of the SCP's in-process one. The rest is the SCP's own code, the
same as in a worker: only a configured DICOM source may associate (its AE title and
addresses); a C-STORE is taken only when an open C-MOVE (written by the worker that sent
it, gateway.engine.dicom_moves) came from that source, carries our Move Originator AE
title and Message ID where the PACS sends them, and expects that SOP Instance UID;
every refusal is the same answer (0x0124). An instance taken streams into the shared
encrypted blob store (BlobStoreSink), is checked by the intake (the study and patient
of the move, the UIDs the command announced), and is recorded in `dicom_arrivals`,
where the worker reads it.

One Retrieval per transfer and source (the intake's dedup): a second copy of an instance
already taken, by this process or before a restart (loaded from the database), is
hashed and answered as stored when the bytes are the same, refused (0x0111) and recorded
as a conflict when they differ. Nothing is kept in memory that the database does not
hold: a receiver killed at any point loses only the instances it had not recorded,
which the PACS counted failed or the worker finds missing and asks for again.

`sweep()` (the receiver runs it every SWEEP_EVERY seconds) forgets what it took for a
transfer settled (completed or cancelled) an hour ago: every blob no item kept (a copy
nobody adopted) is deleted, then the records; and expectations a dead worker left expire.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from connectors.dicom.intake import InstanceError, Received, Retrieval
from connectors.dicom.scp import SourcePeer, from_move
from gateway.runtime.services import Services
from gateway.storage.models import (
    DicomArrival,
    DicomMove,
    DicomMoveInstance,
    Item,
    Transfer,
    dicom_sop_key,
    utcnow,
)
from gateway.storage.sealed import keys_of

from .dicom_sink import BlobStoreSink

log = logging.getLogger(__name__)

IDLE_S = 3600.0  # a transfer's retrieval unused this long is dropped from memory
SWEEP_EVERY = 600.0  # seconds between sweeps of settled transfers' records
SETTLED = ("completed", "cancelled")
_PLAIN = (str, int, float, bool, type(None))


def _header(header: dict) -> dict:
    """The header attributes as JSON values (lists of them kept)."""
    return {k: v for k, v in header.items() if isinstance(v, _PLAIN) or (
        isinstance(v, list) and all(isinstance(x, _PLAIN) for x in v))}


class RecordedRetrieval(Retrieval):
    """The intake's Retrieval for one transfer's source, recording in the database
    everything it takes, refuses or finds in conflict (module docs)."""

    def __init__(self, svc: Services, transfer_id: str, source: str, spool: Path):
        super().__init__(transfer_id, BlobStoreSink(svc.blobs), spool=spool)
        self.svc, self.source = svc, source
        self.used = time.monotonic()
        self._keys = keys_of(svc.db.engine.dialect)
        self.on_received = self._received

    def load(self) -> "RecordedRetrieval":
        """What this receiver took for the transfer's source before (a restart)."""
        with self.svc.db.session() as s:
            rows = s.scalars(select(DicomArrival).filter_by(
                transfer_id=self.key, source=self.source, state="received")).all()
            for r in rows:
                d = r.detail
                self.received[d["sop_instance_uid"]] = Received(
                    d["sop_instance_uid"], d["sop_class_uid"], d["study_uid"],
                    d["series_uid"], r.sha256, r.size, r.blob_key,
                    d.get("transfer_syntax", ""), d.get("header") or {}, d.get("via", "c-move"))
        return self

    def widen(self, scope: dict) -> None:
        """Accept the studies and patients of another open move of this transfer."""
        with self._cond:
            self.studies = self.studies | frozenset(scope.get("studies") or ())
            self.patient_ids = self.patient_ids | frozenset(scope.get("patient_ids") or ())
            self.used = time.monotonic()

    def _insert(self, sop: str, state: str, detail: dict, sha256: str = "", size: int = 0,
                blob_key: str = "") -> None:
        try:
            with self.svc.db.session() as s:
                s.add(DicomArrival(transfer_id=self.key, source=self.source,
                                   sop_key=dicom_sop_key(self._keys, sop), state=state,
                                   sha256=sha256, size=size, blob_key=blob_key, detail=detail))
        except IntegrityError:
            pass  # recorded already (the same instance, or its first error)

    def _received(self, item: Received) -> None:
        detail = {"sop_instance_uid": item.sop_instance_uid, "sop_class_uid": item.sop_class_uid,
                  "study_uid": item.study_uid, "series_uid": item.series_uid,
                  "transfer_syntax": item.transfer_syntax, "via": item.via,
                  "header": _header(item.header)}
        try:
            self._insert(item.sop_instance_uid, "received", detail, item.sha256, item.size,
                         str(item.location))
        except Exception:
            # not recorded: not held either, so the copy the worker asks for again is taken
            log.exception("recording a received instance failed: it will be asked for again")
            with self._cond:
                self.received.pop(item.sop_instance_uid, None)
                self.bytes -= item.size
            self.svc.blobs.delete(str(item.location))

    def error(self, sop_uid: str, reason: str, via: str, study: str = "", series: str = "",
              permanent: bool = True) -> InstanceError:
        err = super().error(sop_uid, reason, via, study, series, permanent)
        if sop_uid and sop_uid not in self.received:
            try:
                self._insert(sop_uid, "error", {
                    "sop_instance_uid": sop_uid, "reason": reason, "via": via,
                    "study_uid": study, "series_uid": series, "permanent": permanent})
            except Exception:
                log.exception("recording a refused instance failed")
        return err

    def duplicate(self, sop_uid: str, sha256: str, via: str,
                  timeout: float = 300.0) -> bool | None:
        same = super().duplicate(sop_uid, sha256, via, timeout)
        if same is False:
            conflict = self.conflicts[-1]
            try:
                self._insert(sop_uid, "conflict", {
                    "sop_instance_uid": sop_uid, "reason": conflict.reason, "via": via,
                    "study_uid": conflict.study_uid, "series_uid": conflict.series_uid})
            except Exception:
                log.exception("recording a conflicting copy failed")
        return same


class ReceiverRouter:
    """`StorageSCP(router=...)`: the retrieval a C-STORE belongs to, from the open moves
    in the database (module docs), or None."""

    def __init__(self, svc: Services, spool: Path):
        self.svc, self.spool = svc, Path(spool)
        self.spool.mkdir(parents=True, exist_ok=True)
        self._keys = keys_of(svc.db.engine.dialect)
        self._lock = threading.Lock()
        self._retrievals: dict[tuple[str, str], RecordedRetrieval] = {}

    def __call__(self, calling: str, address: str, originator_aet, originator_id,
                 sop) -> Retrieval | None:
        if not sop:
            return None
        with self.svc.db.session() as s:
            moves = s.scalars(select(DicomMove).join(
                DicomMoveInstance, DicomMoveInstance.move_id == DicomMove.id).where(
                DicomMoveInstance.sop_key == dicom_sop_key(self._keys, sop),
                DicomMove.peer_aet == calling, DicomMove.expires_at > utcnow())).all()
            found = [(m.transfer_id, m.source, m.scope) for m in moves if from_move(
                SourcePeer(m.peer_aet, frozenset(m.peer_addresses)), m.originator_aet,
                m.message_id, calling, address, originator_aet, originator_id)]
        retrievals = [self._retrieval(*f) for f in found]
        # several only without a Message ID: two transfers moving the same study
        return next((r for r in retrievals if sop not in r.received),
                    retrievals[0] if retrievals else None)

    def _retrieval(self, transfer_id: str, source: str, scope: dict) -> RecordedRetrieval:
        with self._lock:
            self._forget_idle()
            retrieval = self._retrievals.get((transfer_id, source))
            if retrieval is None:
                retrieval = RecordedRetrieval(self.svc, transfer_id, source, self.spool).load()
                self._retrievals[(transfer_id, source)] = retrieval
        retrieval.widen(scope)
        return retrieval

    def _forget_idle(self) -> None:
        now = time.monotonic()
        for key, r in list(self._retrievals.items()):
            if now - max(r.used, r.last_activity) > IDLE_S and r.pending() == 0:
                r.close()
                del self._retrievals[key]

    def close(self) -> None:
        """Wait until every instance received is stored and recorded."""
        with self._lock:
            retrievals, self._retrievals = list(self._retrievals.values()), {}
        for r in retrievals:
            r.wait_settled(60)
            r.close()

    def sweep(self, older_than: float = 3600.0) -> int:
        """`sweep()`, and forget the swept transfers' retrievals here too."""
        deleted, swept = sweep(self.svc, older_than)
        with self._lock:
            for key in swept:
                retrieval = self._retrievals.pop(key, None)
                if retrieval is not None:
                    retrieval.close()
        return deleted


def sweep(svc: Services, older_than: float = 3600.0) -> tuple[int, set[tuple[str, str]]]:
    """Delete expired expectations, and the records of transfers settled more than
    `older_than` seconds ago with every blob of theirs no item kept. Returns (blobs
    deleted, the (transfer, source) pairs swept)."""
    now = utcnow()
    with svc.db.session() as s:
        expired = select(DicomMove.id).where(DicomMove.expires_at < now)
        s.execute(delete(DicomMoveInstance).where(DicomMoveInstance.move_id.in_(expired)))
        s.execute(delete(DicomMove).where(DicomMove.expires_at < now))
    with svc.db.session() as s:
        settled = select(Transfer.id).where(Transfer.state.in_(SETTLED),
                                            Transfer.updated_at < now - timedelta(seconds=older_than))
        rows = s.execute(select(DicomArrival.id, DicomArrival.transfer_id, DicomArrival.source,
                                DicomArrival.blob_key)
                         .where(DicomArrival.transfer_id.in_(settled))).all()
        keys = {r.blob_key for r in rows if r.blob_key}
        kept = set(s.scalars(select(Item.blob_key).where(Item.blob_key.in_(keys)))) if keys else set()
    deleted = 0
    for key in keys - kept:
        svc.blobs.delete(key)
        deleted += 1
    ids = [r.id for r in rows]
    for i in range(0, len(ids), 500):
        with svc.db.session() as s:
            s.execute(delete(DicomArrival).where(DicomArrival.id.in_(ids[i:i + 500])))
    if rows:
        log.info("DICOM receiver sweep: %d record(s) of settled transfers, %d blob(s) deleted",
                 len(rows), deleted)
    return deleted, {(r.transfer_id, r.source) for r in rows}
