"""C-MOVEs whose destination is the standing DICOM receiver, from the worker's side.

With a receiver configured (`dicom_receiver`, docs/dicom.md) the worker that pulls a
DICOM source listens on no port: it sends each C-MOVE with the receiver's AE title as
the move destination, and `MoveBoard` stands where the in-process Storage SCP would
(connectors.dicom.backends calls `expect`, `on_response`, `settle` on either):

- `expect()` writes what the C-MOVE may bring into the database before it is sent (the
  source's AE title and addresses, our AE title and the Message ID, the studies and
  patients of the retrieval, and the SOP Instance UIDs by their keyed HMAC), so the
  receiver routes a C-STORE by the same rules as the in-worker SCP; the row is deleted
  when the C-MOVE ends, and expires by itself (`move_ttl_s`) if this worker dies;
- at every C-MOVE response the worker reads what the receiver has recorded for this
  transfer's source (gateway.engine.dicom_receiver) into the connector's Retrieval: the
  instances stored in the shared blob store (the pull step adopts those blobs, nothing
  is copied), the refused ones and the conflicting second copies;
- after the final response, `settle` waits until the receiver has recorded as many
  instances as the PACS counted sent (the receiver answers a C-STORE once the instance
  is received, and stores it while the next one arrives), for at most `settle_s` without
  progress. What is still missing then is judged missing and asked for again.

An instance the receiver already holds for this transfer's source (sent by an earlier
C-MOVE, before a worker or receiver restart) is read as received when the C-MOVE that
expects it begins: a re-sent copy is deduplicated by the receiver, not stored twice.
"""
from __future__ import annotations

import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import delete, select

from connectors.base import SourceUnavailable
from connectors.dicom.intake import InstanceError, Received, Retrieval
from connectors.dicom.scp import SourcePeer
from gateway.config import DicomReceiverConfig
from gateway.runtime.services import Services
from gateway.storage.models import (
    DicomArrival,
    DicomMove,
    DicomMoveInstance,
    dicom_sop_key,
    utcnow,
)
from gateway.storage.sealed import keys_of

POLL_EVERY = 0.25  # seconds between reads of the receiver's records while a move runs


@dataclass
class _Open:
    row: int  # DicomMove.id
    retrieval: Retrieval
    instances: frozenset[str]
    keys: list[str]  # their keyed HMACs, as DicomArrival.sop_key
    # DicomArrival ids read (not a high-water mark: the receiver's intake threads commit
    # rows out of id order)
    done: set[int] = field(default_factory=set)
    accounted: set[str] = field(default_factory=set)  # expected instances the receiver took
    polled: float = 0.0


class MoveBoard:
    """The open C-MOVEs of one source in this process, kept in the database (see the
    module docs). One per connector; `Retrieval.key` is the transfer id."""

    def __init__(self, svc: Services, source: str, conf: DicomReceiverConfig):
        self.svc, self.source, self.conf = svc, source, conf
        self._open: dict[int, _Open] = {}
        self._lock = threading.Lock()

    @contextmanager
    def expect(self, retrieval: Retrieval, peer: SourcePeer, instances, originator_aet: str):
        """Open a C-MOVE for `instances` from `peer`; yields its Message ID."""
        instances = frozenset(instances)
        keys = keys_of(self.svc.db.engine.dialect)
        with self._lock:  # unique among this process's open moves (module docs of scp.py)
            message_id = next(n for n in iter(lambda: random.randint(1, 65535), None)
                              if n not in self._open)
            self._open[message_id] = None  # reserved
        try:
            with self.svc.db.session() as s:
                move = DicomMove(
                    transfer_id=retrieval.key, source=self.source, message_id=message_id,
                    peer_aet=peer.ae_title, peer_addresses=sorted(peer.addresses),
                    originator_aet=originator_aet.strip(),
                    scope={"studies": sorted(retrieval.studies),
                           "patient_ids": sorted(retrieval.patient_ids)},
                    expires_at=utcnow() + timedelta(seconds=self.conf.move_ttl_s))
                s.add(move)
                s.flush()
                sop_keys = sorted(dicom_sop_key(keys, sop) for sop in instances)
                s.add_all(DicomMoveInstance(move_id=move.id, sop_key=k) for k in sop_keys)
                state = _Open(move.id, retrieval, instances, sop_keys)
            with self._lock:
                self._open[message_id] = state
            self._read(state)  # what an earlier move of this transfer's source brought
            yield message_id
        finally:
            with self._lock:
                state = self._open.pop(message_id, None)
            if state is not None:
                with self.svc.db.session() as s:
                    s.execute(delete(DicomMoveInstance).where(DicomMoveInstance.move_id == state.row))
                    s.execute(delete(DicomMove).where(DicomMove.id == state.row))

    def on_response(self, message_id: int) -> None:
        """A C-MOVE response: read what arrived since the last read (at most every
        POLL_EVERY seconds; the final response is followed by `settle`)."""
        state = self._open.get(message_id)
        if state is not None and time.monotonic() - state.polled >= POLL_EVERY:
            self._read(state)

    def settle(self, message_id: int, status) -> None:
        """After the final response: wait until the receiver recorded what the PACS
        counted sent, or until nothing new came for `settle_s`."""
        state = self._open.get(message_id)
        if state is None:
            return
        want = (status.completed + status.warning) if status.status is not None else 0
        last, progress = len(state.accounted), time.monotonic()
        while True:
            self._read(state)
            if len(state.accounted) >= min(want, len(state.instances)):
                return
            if len(state.accounted) > last:
                last, progress = len(state.accounted), time.monotonic()
            elif time.monotonic() - progress > self.conf.settle_s:
                return
            time.sleep(POLL_EVERY)

    def check(self) -> None:
        """A C-MOVE brought nothing: raise SourceUnavailable when the receiver does not
        answer (the pull is tried again later, and the PACS is not blamed)."""
        from gateway.runtime.health import check_dicom_receiver

        answer = check_dicom_receiver(self.conf, timeout=10)
        if not answer.ok:
            raise SourceUnavailable(f"the DICOM receiver: {answer.detail}")

    def _read(self, state: _Open) -> None:
        """Hand the receiver's new records for this move's instances to its Retrieval."""
        state.polled = time.monotonic()
        retrieval = state.retrieval
        with self.svc.db.session() as s:
            ids = []  # the rows of this move's instances not read yet (ids only: cheap)
            for i in range(0, len(state.keys), 500):
                ids += [n for n in s.scalars(select(DicomArrival.id).where(
                    DicomArrival.transfer_id == retrieval.key,
                    DicomArrival.source == self.source,
                    DicomArrival.sop_key.in_(state.keys[i:i + 500]))) if n not in state.done]
            found = []
            for i in range(0, len(ids), 500):
                found += [(r.id, r.state, r.sha256, r.size, r.blob_key, r.detail)
                          for r in s.scalars(select(DicomArrival).where(
                              DicomArrival.id.in_(ids[i:i + 500])))]
        found.sort(key=lambda row: row[0])
        for row_id, kind, sha256, size, blob_key, d in found:
            state.done.add(row_id)
            sop = d.get("sop_instance_uid", "")
            if sop not in state.instances:
                continue  # the keys are this move's: only an HMAC collision gets here
            state.accounted.add(sop)
            if kind == "received":
                retrieval.add(Received(sop, d["sop_class_uid"], d["study_uid"], d["series_uid"],
                                       sha256, size, blob_key, d.get("transfer_syntax", ""),
                                       d.get("header") or {}, d.get("via", "c-move")))
            elif kind == "error":
                retrieval.error(sop, d.get("reason", ""), d.get("via", "c-move"),
                                d.get("study_uid", ""), d.get("series_uid", ""),
                                bool(d.get("permanent", True)))
            elif kind == "conflict" and not any(c.sop_instance_uid == sop
                                                for c in retrieval.conflicts):
                retrieval.conflicts.append(InstanceError(
                    sop, d.get("reason", ""), d.get("study_uid", ""), d.get("series_uid", ""),
                    d.get("via", "c-move")))
