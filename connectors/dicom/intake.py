"""Taking in received instances: check, hash, hand to a sink, and account for each one.

Every path in (the Storage SCP for C-MOVE, our own association for C-GET, WADO-RS parts)
ends in `Retrieval.take(path, ...)` with a file on local disk:

1. read the header (connectors.dicom.header) and check it: UIDs valid by the grammar, the
   instance is the one the command announced, the study and patient are the ones this
   retrieval asked for;
2. zero the 128-byte preamble, hash the file (sha256) and measure it;
3. hand it to the retrieval's sink, which moves it where it belongs (a folder by default;
   the gateway plugs in its encrypted blob store) and returns where it went;
4. record a `Received` (or an `InstanceError` naming the instance and why) against the
   retrieval, so completeness can be judged per study, series and instance.

A sink is any callable `sink(transfer_key, tmp_path, sha256, size, meta) -> location`;
it may move or consume `tmp_path`. Files are named by content hash, never by a UID. A
sink that hashes what it stores anyway (the gateway's blob store does) sets
`sink.hashes = True`: it is then called with sha256=None and size=None and returns
`Stored(location, sha256, size)`, and the file is read once instead of twice.

A sink may also stream: `sink.open(transfer_key, meta)` returns a writer with
`write(data)`, `commit() -> Stored` and `abort()`. Then nothing is spooled: the bytes go
from the socket into the writer (an encrypting blob writer, say) as they arrive. The
receiving thread only queues them (`InstanceStream`); intake workers open the writer,
feed it, keep the first 256 KB to check the header at the end, and commit (which may
fsync) or abort.

One instance per SOP Instance UID: a receiver `claim()`s the UID when a C-STORE for it
begins. A second copy while the first is held or being taken is only hashed
(`duplicate()`): the same bytes are answered as stored without storing them twice;
different bytes are refused and listed in `conflicts` (the first one is kept: two
different instances under one UID mean one of them is not what the PACS holds).
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from connectors.base import safe_name

from .header import PREAMBLE, MalformedDicom, read_header
from .streaming import HEAD as _HEAD
from .streaming import InstanceStream
from .uids import clean_uid, describe, is_uid


class Sink(Protocol):
    def __call__(self, transfer_key: str, tmp_path: Path, sha256: str, size: int,
                 meta: dict) -> Path | str: ...


@dataclass(frozen=True)
class Stored:
    """What a hashing sink returns: where the file went, its sha256 and size."""

    location: Path | str
    sha256: str
    size: int


class FolderSink:
    """Moves each instance to `root/<transfer>/<sha256>.dcm` (renamed where the file
    system allows, copied otherwise); returns the new path."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __call__(self, transfer_key, tmp_path, sha256, size, meta) -> Path:
        folder = self.root / (safe_name(transfer_key) or hashlib.sha256(
            transfer_key.encode()).hexdigest()[:32])
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / f"{sha256}.dcm"
        try:
            os.replace(tmp_path, dest)
        except OSError:
            shutil.move(str(tmp_path), dest)
        return dest


@dataclass(frozen=True)
class Received:
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    sha256: str
    size: int
    location: Path | str
    transfer_syntax: str
    header: dict  # attributes from connectors.dicom.header.WANTED
    via: str  # "c-move", "c-get", "wado-rs"


@dataclass(frozen=True)
class InstanceError:
    sop_instance_uid: str  # "" when the instance could not even be named
    reason: str
    study_uid: str = ""
    series_uid: str = ""
    via: str = ""
    # True: the instance itself is unacceptable (malformed, another patient's, ...), a
    # retry would get the same; False: storing it failed here, a retry may succeed
    permanent: bool = True


def file_sha256(path: Path, chunk: int = 1 << 20) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(chunk)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            digest.update(view[:n])
            size += n
    return digest.hexdigest(), size


@dataclass
class Retrieval:
    """What one transfer expects from one source, and what has arrived so far.

    Thread-safe: the SCP's association threads, C-GET and WADO workers all report here.
    """

    key: str  # the transfer's key (its id); routed to, and passed to the sink
    sink: Sink
    studies: frozenset[str] = frozenset()  # only these studies are accepted (empty: any)
    patient_ids: frozenset[str] = frozenset()  # and only for these patients (empty: any)
    spool: Path | None = None  # where received files wait (same file system as temp files)
    workers: int = 4  # threads checking, hashing and storing (a sink may fsync each file)
    max_waiting: int = 6  # files or stream drains waiting for a worker before receiving pauses
    received: dict[str, Received] = field(default_factory=dict)
    errors: dict[str, InstanceError] = field(default_factory=dict)
    conflicts: list[InstanceError] = field(default_factory=list)  # second copies refused
    bytes: int = 0
    on_received: Callable[[Received], None] | None = None

    def __post_init__(self):
        self._cond = threading.Condition()
        self._pending = 0
        self._taking: set[str] = set()  # SOP Instance UIDs claimed, not yet settled
        self._slots = threading.BoundedSemaphore(self.max_waiting)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.last_activity = time.monotonic()
        if self.spool is None:
            import tempfile

            self.spool = Path(tempfile.gettempdir())

    # -- bookkeeping -------------------------------------------------------------------
    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def begin(self) -> None:
        with self._cond:
            self._pending += 1
            self.touch()

    def _end(self, sop_uid: str = "") -> None:
        with self._cond:
            self._pending -= 1
            self._taking.discard(sop_uid)
            self.touch()
            self._cond.notify_all()

    def claim(self, sop_uid: str) -> bool:
        """True when `sop_uid` is new here: the caller takes the instance (the claim ends
        when it is settled, `_end`, or `release`d). False: a second copy (`duplicate`)."""
        with self._cond:
            if sop_uid in self.received or sop_uid in self._taking:
                return False
            self._taking.add(sop_uid)
            return True

    def release(self, sop_uid: str) -> None:
        """Drop a claim whose instance never reached the intake (cut off, refused)."""
        with self._cond:
            self._taking.discard(sop_uid)
            self._cond.notify_all()

    def duplicate(self, sop_uid: str, sha256: str, via: str,
                  timeout: float = 300.0) -> bool | None:
        """A second copy of `sop_uid` arrived, hashed `sha256` (as the first would be
        stored). Waits until the first is settled. True: the same bytes (nothing to
        store); False: other bytes, refused and recorded in `conflicts`, the first kept;
        None: no first copy was kept (the sender may send it again)."""
        with self._cond:
            self._cond.wait_for(lambda: sop_uid in self.received
                                or sop_uid not in self._taking, timeout)
            first = self.received.get(sop_uid)
            if first is None:
                return None
            if first.sha256 == sha256:
                return True
            self.conflicts.append(InstanceError(
                sop_uid, f"a second instance with this SOP Instance UID and other content "
                f"(sha256 {sha256}) was refused; the first received (sha256 {first.sha256}) "
                "is kept", first.study_uid, first.series_uid, via))
            return False

    def wait_settled(self, timeout: float | None = None) -> bool:
        """Wait until every instance handed over so far has been checked and stored."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def error(self, sop_uid: str, reason: str, via: str, study: str = "",
              series: str = "", permanent: bool = True) -> InstanceError:
        err = InstanceError(sop_uid, reason, study, series, via, permanent)
        with self._cond:
            if sop_uid not in self.received:
                self.errors[sop_uid or f"unnamed-{uuid.uuid4().hex[:8]}"] = err
        return err

    def stage(self, path: Path) -> Path:
        """Move a freshly received temp file into this retrieval's spool (a rename)."""
        dest = Path(self.spool) / f"rx-{uuid.uuid4().hex}.part"
        try:
            os.replace(path, dest)
        except OSError:
            shutil.copyfile(path, dest)
            os.unlink(path)
        return dest

    def submit(self, path: Path, **kwargs) -> None:
        """`take()` the file in a worker thread (after `begin()`). Blocks while
        `max_waiting` files already wait, so a slow sink slows the sender down instead
        of filling the disk."""
        self.submit_call(functools.partial(self.take, path, **kwargs))

    def submit_call(self, fn, *args) -> None:
        """Run `fn(*args)` in an intake worker (bounded like `submit`)."""
        self._slots.acquire()
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dicom-intake")
            pool = self._pool

        def run():
            try:
                fn(*args)
            finally:
                self._slots.release()

        pool.submit(run)

    def streams(self) -> bool:
        """True when the sink takes instances as streams (no spool file)."""
        return callable(getattr(self.sink, "open", None))

    def stream(self, via: str, sop_uid: str = "", sop_class: str = "") -> InstanceStream:
        return InstanceStream(self, via, sop_uid, sop_class)

    def close(self) -> None:
        """Wait for the workers to finish and stop them."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    # -- the work ----------------------------------------------------------------------
    def take(self, path: Path, *, via: str, sop_uid: str = "", sop_class: str = "",
             hashed: tuple[str, int] | None = None) -> Received | InstanceError:
        """Check, hash and store one received file (consumed in every case).

        `sop_uid`/`sop_class` are what the protocol announced (the C-STORE command);
        the file's own header must agree. `hashed` is (sha256, size) when the writer
        already hashed the file on the way in (its preamble zeroed). Call `begin()`
        first; `take` ends it.
        """
        try:
            return self._take(Path(path), via, sop_uid, sop_class, hashed)
        except Exception as exc:  # never let one instance break the association
            return self.error(sop_uid, f"could not store: {type(exc).__name__}: {exc}", via,
                              permanent=False)
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass
            self._end(sop_uid)

    def _take(self, path: Path, via: str, sop_uid: str, sop_class: str, hashed):
        # One pass over the file: its head gives the header, the preamble and the start
        # of the hash; the rest is hashed in 1 MB blocks.
        digest = hashlib.sha256()
        with open(path, "r+b", buffering=0) as fh:
            head = fh.read(_HEAD)
            if len(head) >= PREAMBLE and head[:PREAMBLE].count(0) != PREAMBLE:
                fh.seek(0)
                fh.write(bytes(PREAMBLE))  # the preamble can hide another file format
                head = bytes(PREAMBLE) + head[PREAMBLE:]
                fh.seek(len(head))
            try:
                header = read_header(path, head)
            except MalformedDicom as exc:
                return self.error(sop_uid, f"malformed dataset: {exc}", via)
            if hashed is None and not getattr(self.sink, "hashes", False):
                digest.update(head)
                size = len(head)
                buf = bytearray(1 << 20)
                view = memoryview(buf)
                while n := fh.readinto(buf):
                    digest.update(view[:n])
                    size += n
                hashed = (digest.hexdigest(), size)
        problem = self._check(header, via, sop_uid, sop_class)
        if problem is not None:
            return problem
        sop = clean_uid(header.get("SOPInstanceUID"))
        study = clean_uid(header.get("StudyInstanceUID"))
        series = clean_uid(header.get("SeriesInstanceUID"))
        klass = clean_uid(header.get("SOPClassUID"))
        sha256, size = hashed or (None, None)
        meta = {"sop_instance_uid": sop, "sop_class_uid": klass, "study_uid": study,
                "series_uid": series, "transfer_syntax": header.get("TransferSyntaxUID", ""),
                "via": via}
        location = self.sink(self.key, path, sha256, size, meta)
        return self._record(header, via, location, sha256, size)

    def _check(self, header: dict, via: str, sop_uid: str, sop_class: str):
        """None if the header is acceptable for this retrieval, else the InstanceError."""
        sop = clean_uid(header.get("SOPInstanceUID"))
        study = clean_uid(header.get("StudyInstanceUID"))
        series = clean_uid(header.get("SeriesInstanceUID"))
        klass = clean_uid(header.get("SOPClassUID"))
        for name, value in (("SOPInstanceUID", sop), ("StudyInstanceUID", study),
                            ("SeriesInstanceUID", series), ("SOPClassUID", klass)):
            if value is None:
                return self.error(sop_uid, f"malformed dataset: {name} "
                                  f"{describe(header.get(name))} is not a valid UID", via)
        if sop_uid and sop != sop_uid:
            return self.error(sop_uid, f"dataset SOPInstanceUID {sop} differs from the "
                              f"announced {sop_uid}", via, study, series)
        if sop_class and klass != sop_class:
            return self.error(sop, f"dataset SOPClassUID {klass} differs from the "
                              f"announced {sop_class}", via, study, series)
        if self.studies and study not in self.studies:
            return self.error(sop, "instance of a study this transfer did not ask for",
                              via, study, series)
        if self.patient_ids and header.get("PatientID", "") not in self.patient_ids:
            return self.error(sop, "instance of another patient (PatientID differs)",
                              via, study, series)
        return None

    def _record(self, header: dict, via: str, location, sha256, size):
        sop = clean_uid(header.get("SOPInstanceUID"))
        study = clean_uid(header.get("StudyInstanceUID"))
        series = clean_uid(header.get("SeriesInstanceUID"))
        klass = clean_uid(header.get("SOPClassUID"))
        if isinstance(location, Stored):
            location, sha256, size = location.location, location.sha256, location.size
        if sha256 is None:
            raise RuntimeError("the sink stored the file but reported no sha256")
        return self.add(Received(sop, klass, study, series, sha256, size, location,
                                 header.get("TransferSyntaxUID", ""), header, via))

    def add(self, item: Received) -> Received:
        """Account for an instance stored and checked (here, or by another process that
        shares this retrieval's sink: the gateway's standing receiver); the first copy of
        a SOP Instance UID is kept."""
        sop, sha256, size = item.sop_instance_uid, item.sha256, item.size
        study, series, via = item.study_uid, item.series_uid, item.via
        with self._cond:
            first = self.received.get(sop)
            if first is not None:  # unclaimed paths (WADO-RS): the first is kept as well
                if first.sha256 != sha256:
                    self.conflicts.append(InstanceError(
                        sop, f"a second instance with this SOP Instance UID and other "
                        f"content (sha256 {sha256}) was not kept; the first received "
                        f"(sha256 {first.sha256}) is", study, series, via))
                return first
            self.received[sop] = item
            self.errors.pop(sop, None)
            self.bytes += size
            self.touch()
            self._cond.notify_all()
        if self.on_received:
            self.on_received(item)
        return item

    # -- views ---------------------------------------------------------------------------
    def received_in(self, study: str, series: str | None = None) -> list[Received]:
        with self._cond:
            return [r for r in self.received.values() if r.study_uid == study
                    and (series is None or r.series_uid == series)]

    def pending(self) -> int:
        with self._cond:
            return self._pending


def valid_uids(values) -> list[str]:
    """The values that are valid UIDs (order kept); others are dropped."""
    return [v for v in values if is_uid(v)]
