"""Instances streamed into a streaming sink (see connectors.dicom.intake): the receiving
thread queues the pieces as they arrive, intake workers write them into the sink's writer
(preamble zeroed), check the header at the end and commit, or abort.
"""
from __future__ import annotations

import threading

from .header import PREAMBLE, MalformedDicom, read_header_bytes

HEAD = 256 * 1024  # bytes kept for the header check


class InstanceStream:
    """One instance streamed into a streaming sink (see the module docs).

    The receiving thread only queues what arrives (`write`, then `finish`); intake
    workers open the sink's writer and feed it, so creating the blob, hashing and
    encrypting run beside the receive instead of holding it up. A worker is asked for
    once BATCH bytes wait (or at the end), writes what is there and leaves: no worker
    ever waits for a sender, so any number of associations or requests can share the
    workers. At most QUEUED bytes wait per instance; beyond that `write` waits. What is
    passed to `write` must not change afterwards: both receivers hand over views of
    buffers they never reuse.
    """

    QUEUED = 4 << 20
    BATCH = 256 << 10  # a worker is asked for this much (or the end), not for every PDV

    def __init__(self, retrieval, via: str, sop_uid: str, sop_class: str):
        self.retrieval, self.via, self.sop_uid, self.sop_class = (
            retrieval, via, sop_uid, sop_class)
        self._cond = threading.Condition()
        self._pieces: list = []
        self._queued = 0
        self.complete: bool | None = None  # set by finish()
        self._scheduled = False  # a drain is queued or running (one at a time)
        # the worker side, touched by one drain at a time
        self.writer = None
        self.failure: Exception | None = None
        self.head: list = []  # views of the first HEAD bytes, for the header check
        self.size = 0
        retrieval.begin()

    def write(self, data) -> None:
        if not len(data):
            return
        with self._cond:
            while self._queued >= self.QUEUED:
                self._cond.wait()
            self._pieces.append(data)
            self._queued += len(data)
            schedule = self._queued >= self.BATCH and not self._scheduled
            self._scheduled = self._scheduled or schedule
        if schedule:
            self.retrieval.submit_call(self._drain)

    def finish(self, complete: bool) -> None:
        """The instance ended (`complete`) or was cut off: a worker commits or aborts."""
        with self._cond:
            self.complete = complete
            schedule, self._scheduled = not self._scheduled, True
        if schedule:
            self.retrieval.submit_call(self._drain)

    def _drain(self) -> None:
        """Worker side: write what has arrived; after the end, settle the instance."""
        while True:
            with self._cond:
                pieces, self._pieces = self._pieces, []
                complete = self.complete
                if not pieces and complete is None:
                    self._scheduled = False  # a later write() asks for a worker again
                    return
            for piece in pieces:
                self._feed(piece)
            with self._cond:
                self._queued -= sum(len(p) for p in pieces)
                self._cond.notify_all()
            if complete is not None:
                self._settle()
                return

    def _feed(self, piece) -> None:
        if self.size < HEAD:
            self.head.append(memoryview(piece)[:HEAD - self.size])
        if self.writer is None and self.failure is None:
            self._open()
        if self.failure is None:
            try:
                _write_zeroing(self.writer, piece, self.size)
            except Exception as exc:
                self.failure = exc  # keep draining: the receiver must not block
        self.size += len(piece)

    def _open(self) -> None:
        try:
            self.writer = self.retrieval.sink.open(
                self.retrieval.key, {"via": self.via, "sop_instance_uid": self.sop_uid})
        except Exception as exc:
            self.failure = exc

    def _settle(self) -> None:
        """Worker side, once the instance ended: check the header, then commit,
        or abort what the writer has."""
        retrieval = self.retrieval
        try:
            if self.writer is None and self.failure is None:
                self._open()
            if self.failure is not None:
                raise self.failure
            if not self.complete:
                self.writer.abort()
                return retrieval.error(self.sop_uid, "association ended while this "
                                       "instance was being received", self.via,
                                       permanent=False)
            head = self.head
            try:
                header = read_header_bytes(head[0] if len(head) == 1 else b"".join(head))
            except MalformedDicom as exc:
                self.writer.abort()
                return retrieval.error(self.sop_uid, f"malformed dataset: {exc}", self.via)
            problem = retrieval._check(header, self.via, self.sop_uid, self.sop_class)
            if problem is not None:
                self.writer.abort()
                return problem
            stored = self.writer.commit()
            return retrieval._record(header, self.via, stored, None, None)
        except Exception as exc:
            if self.writer is not None:
                try:
                    self.writer.abort()
                except Exception:
                    pass
            return retrieval.error(self.sop_uid, f"could not store: {type(exc).__name__}: "
                                   f"{exc}", self.via, permanent=False)
        finally:
            self.head = []
            retrieval._end(self.sop_uid)


def _write_zeroing(writer, piece, offset: int) -> None:
    """Write `piece` (at `offset` in the file) with the preamble zeroed: it can hide
    another file format."""
    if offset >= PREAMBLE:
        writer.write(piece)
        return
    n = min(PREAMBLE - offset, len(piece))
    writer.write(bytes(n))
    if len(piece) > n:
        writer.write(memoryview(piece)[n:])
