"""The gateway's Storage SCP: where a PACS sends the instances of a C-MOVE.

One SCP per process (AE title and port configured; the PACS must know them), shared by
every transfer in flight. Each C-STORE is routed to the transfer it belongs to by a key
designed for that:

1. C-MOVE sub-operations carry the Move Originator Message ID. Every C-MOVE we send uses
   a message ID unique among the moves in flight in this process (`expect()` allocates
   it), so the ID names the transfer. (The instance's patient and study are checked
   against the transfer's in any case, so a forged ID cannot slip in another's data.)
2. A PACS that leaves the originator out: the calling AE title of the incoming
   association names the source; if one transfer is moving from it, that is the one.
3. Otherwise the instance's own StudyInstanceUID picks among the transfers moving from
   that source that asked for the study.

Anything that matches no transfer is refused (0x0124 Not Authorized) and never stored.

The instance is never decoded: pynetdicom writes the incoming data set to a temp file as
it arrives (`STORE_RECV_CHUNKED_DATASET`), the handler renames that file into the
retrieval's spool and answers at once; checking, hashing and storing (a sink may fsync)
happen in the retrieval's intake workers while the PACS sends the next instance. A bad instance is a per-instance error; an aborted association
loses only the instance in flight; neither stops the SCP or other transfers.
"""
from __future__ import annotations

import itertools
import logging
import random
import tempfile
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pynetdicom import AllStoragePresentationContexts, _config, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from .header import read_header
from .intake import Retrieval
from .net import FastAE, check_version, serve
from .uids import clean_uid, describe

LOGGER = logging.getLogger(__name__)

# Receive data sets straight to a temp file (never in memory). A process-wide pynetdicom
# setting; the gateway only ever wants it on.
_config.STORE_RECV_CHUNKED_DATASET = True

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
#: transfer syntaxes accepted as they are (so files stay byte-identical to the source):
#: every syntax a storage SOP instance may be held in. A syntax missing here makes the
#: sender convert the instance (or leave it out) instead of sending what it holds.
ACCEPTED_SYNTAXES = [
    EXPLICIT_LE, IMPLICIT_LE,
    EXPLICIT_BE,  # Explicit VR Big Endian (retired, still held by old archives)
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",  # JPEG Baseline / Extended
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",  # JPEG Lossless
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",  # JPEG-LS
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101",  # MPEG2
    "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103",  # MPEG-4
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.106",  # MPEG-4
    "1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108",  # HEVC/H.265
    "1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112",  # JPEG XL
    "1.2.840.10008.1.2.4.52", "1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.55",  # JPEG, old
    "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2
    "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression
]
#: the syntaxes images are commonly held in, proposed for C-GET each in its own
#: presentation context when the PACS does not say which ones a study uses
COMMON_SYNTAXES = [
    EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5",
]
STORAGE_SOP_CLASSES = frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)

NOT_AUTHORIZED = 0x0124  # Refused: Not Authorized (PS3.7 C.5.1)
SOP_CLASS_NOT_SUPPORTED = 0x0122
CANNOT_UNDERSTAND = 0xC000


def storage_contexts(sop_classes=None) -> list:
    """Presentation contexts for storage SOP classes with every accepted syntax."""
    classes = sorted(sop_classes or STORAGE_SOP_CLASSES)
    return [build_context(uid, ACCEPTED_SYNTAXES) for uid in classes]


def store_handler(resolve, via: str):
    """An EVT_C_STORE handler that hands each instance to the retrieval `resolve(event)`
    names (None: refuse). Shared by the SCP (C-MOVE) and our own C-GET associations."""

    def on_store(event) -> int:
        req = event.request
        path = None
        try:
            path = event.dataset_path
        except AttributeError:
            pass
        try:
            sop = clean_uid(req.AffectedSOPInstanceUID)
            klass = clean_uid(req.AffectedSOPClassUID)
            retrieval = resolve(event)
            if retrieval is None:
                LOGGER.warning("C-STORE from %s matches no transfer: refused",
                               describe(event.assoc.requestor.ae_title))
                return NOT_AUTHORIZED
            if sop is None or klass is None:
                retrieval.error(sop or "", "C-STORE with an invalid SOP Instance/Class "
                                f"UID {describe(req.AffectedSOPInstanceUID)}", via)
                return CANNOT_UNDERSTAND
            if klass not in STORAGE_SOP_CLASSES:
                retrieval.error(sop, f"unexpected SOP class {klass}", via)
                return SOP_CLASS_NOT_SUPPORTED
            if path is None:
                retrieval.error(sop, "no data set received", via)
                return CANNOT_UNDERSTAND
            retrieval.begin()
            try:
                staged = retrieval.stage(path)
            except Exception:
                retrieval.take(path, via=via, sop_uid=sop, sop_class=klass)  # records why
                return 0xA700
            retrieval.submit(staged, via=via, sop_uid=sop, sop_class=klass)
            return 0x0000
        finally:
            # pynetdicom leaves the temp file open (and, for C-GET, on disk): close it.
            tmp = getattr(req, "_dataset_file", None)
            if tmp is not None:
                try:
                    tmp.close()
                except OSError:
                    pass

    return on_store


class _Ticket:
    """One C-STORE being received on the fast path (connectors.dicom.dimse_store): into
    the retrieval's streaming sink, or a file in its spool that `end()` hands over."""

    def __init__(self, spool: Path, retrieval: Retrieval | None, via: str, sop: str,
                 klass: str, late=None):
        self.retrieval, self.via, self.sop, self.klass, self.late = (
            retrieval, via, sop, klass, late)
        self.stream = None
        self.fh = None
        if retrieval is not None and retrieval.streams():
            self.stream = retrieval.stream(via, sop, klass)
        else:
            self.path = spool / f"rx-{uuid.uuid4().hex}.part"
            self.fh = open(self.path, "wb")

    def write(self, data) -> None:
        (self.stream or self.fh).write(data)

    def end(self, complete: bool) -> int:
        if self.stream is not None:
            self.stream.finish(complete)
            return 0x0000 if complete else 0xA700
        self.fh.close()
        path, retrieval = self.path, self.retrieval
        if not complete:
            path.unlink(missing_ok=True)
            if retrieval is not None:
                retrieval.error(self.sop, "association ended while this instance was being "
                                "received", self.via, permanent=False)
            return 0xA700
        if retrieval is None and self.late is not None:
            retrieval = self.late(path)
            if retrieval is not None:
                path = retrieval.stage(path)
        if retrieval is None:
            path.unlink(missing_ok=True)
            return NOT_AUTHORIZED
        retrieval.begin()
        retrieval.submit(path, via=self.via, sop_uid=self.sop, sop_class=self.klass)
        return 0x0000


LATER = object()  # the command alone cannot name the retrieval: the received file will


def store_begin(resolve, via: str, late=None):
    """A fast-path `store_begin(assoc, context_id, command)` hook: `resolve(assoc,
    command)` names the retrieval, None (refuse at once) or LATER (`late(path)` names it
    from the received file). The command's UIDs and SOP class are checked first."""

    def begin(assoc, context_id, command):
        retrieval = resolve(assoc, command)
        if retrieval is LATER:
            retrieval = None
        elif retrieval is None:
            LOGGER.warning("C-STORE from %s matches no transfer: refused",
                           describe(assoc.requestor.ae_title))
            return NOT_AUTHORIZED
        sop, klass = clean_uid(command.sop_instance), clean_uid(command.sop_class)
        if sop is None or klass is None:
            if retrieval is not None:
                retrieval.error(sop or "", "C-STORE with an invalid SOP Instance/Class UID "
                                f"{describe(command.sop_instance)}", via)
            return CANNOT_UNDERSTAND
        if klass not in STORAGE_SOP_CLASSES:
            if retrieval is not None:
                retrieval.error(sop, f"unexpected SOP class {klass}", via)
            return SOP_CLASS_NOT_SUPPORTED
        spool = Path(retrieval.spool) if retrieval is not None else Path(tempfile.gettempdir())
        return _Ticket(spool, retrieval, via, sop, klass, late)

    return begin


@dataclass
class _Expectation:
    retrieval: Retrieval
    peer_aet: str
    move_id: int
    studies: frozenset[str] = field(default_factory=frozenset)
    on_first: Callable[[], None] | None = None  # called at each instance routed here


class StorageSCP:
    """The shared C-MOVE destination. `start()`, then `expect()` around each C-MOVE."""

    def __init__(self, ae_title: str, port: int, host: str = "127.0.0.1", *,
                 allowed_peers: frozenset[str] | None = None, max_pdu: int = 0,
                 socket_timeout: float = 120.0):
        check_version()
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.allowed_peers = allowed_peers  # calling AE titles allowed to connect (None: any)
        self.socket_timeout = socket_timeout
        self._ae = FastAE(ae_title=ae_title)
        self._ae.maximum_pdu_size = max_pdu  # 0: the peer may send PDUs of any size
        self._ae.network_timeout = None  # stalls are caught per socket and per retrieval
        self._ae.dimse_timeout = None
        self._ae.maximum_associations = 64
        self._ae.require_calling_aet = sorted(allowed_peers) if allowed_peers else []
        self._server = None
        self._lock = threading.Lock()
        self._by_id: dict[int, _Expectation] = {}
        self._ids = itertools.count(random.randint(1, 60000))

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> "StorageSCP":
        if self._server is None:
            contexts = storage_contexts() + [build_context(Verification)]
            self._server = serve(self._ae, (self.host, self.port), contexts=contexts,
                                 evt_handlers=[(evt.EVT_C_STORE, store_handler(
                                     self._route, "c-move"))])
            self._server.socket_timeout = self.socket_timeout
            self._server.on_partial = self._on_partial
            self._server.store_begin = store_begin(self._route_command, "c-move",
                                                   self._route_late)
            self.port = self._server.server_address[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- routing -------------------------------------------------------------------------
    @contextmanager
    def expect(self, retrieval: Retrieval, peer_aet: str, studies=(), on_first=None):
        """Route instances from `peer_aet` to `retrieval` while the block runs; yields the
        message ID to send the C-MOVE with (the Move Originator Message ID it comes back
        as). Use one `expect()` per C-MOVE in flight. `on_first()` is called when an
        instance arrives for this move (at each one: make it idempotent)."""
        with self._lock:
            for _ in range(65535):
                move_id = next(self._ids) % 65535 + 1
                if move_id not in self._by_id:
                    break
            else:
                raise RuntimeError("too many C-MOVEs in flight")
            self._by_id[move_id] = _Expectation(retrieval, peer_aet.strip(), move_id,
                                                frozenset(studies), on_first)
        try:
            yield move_id
        finally:
            with self._lock:
                self._by_id.pop(move_id, None)

    def _on_partial(self, assoc, command) -> None:
        """An association ended mid-instance: tell the transfer which instance was lost."""
        retrieval = self._route_by(assoc, command.get("MoveOriginatorMessageID"))
        sop = clean_uid(command.get("AffectedSOPInstanceUID")) or ""
        if retrieval is not None:
            retrieval.error(sop, "association ended while this instance was being received",
                            "c-move", permanent=False)

    def _route_by(self, assoc, move_id) -> Retrieval | None:
        calling = (assoc.requestor.ae_title or "").strip()
        with self._lock:
            found = self._by_id.get(int(move_id)) if move_id is not None else None
        if found is not None:
            if found.on_first is not None:
                found.on_first()
            return found.retrieval
        with self._lock:
            candidates = [e for e in self._by_id.values() if e.peer_aet == calling]
        if len({id(e.retrieval) for e in candidates}) == 1:
            return candidates[0].retrieval
        return None

    def _route_command(self, assoc, command):
        """Fast path: the retrieval the command names, None if no transfer is moving
        from this peer, LATER if several are (the instance's study will decide)."""
        found = self._route_by(assoc, command.move_originator_id)
        if found is not None:
            return found
        calling = (assoc.requestor.ae_title or "").strip()
        with self._lock:
            several = any(e.peer_aet == calling for e in self._by_id.values())
        return LATER if several else None

    def _route_late(self, path: Path) -> Retrieval | None:
        """Fast path, several transfers moving from one peer: the file's study decides.
        (The calling AE is not known here: any transfer that asked for the study.)"""
        try:
            study = clean_uid(read_header(path).get("StudyInstanceUID"))
        except Exception:
            return None
        with self._lock:
            for e in self._by_id.values():
                if study in e.studies:
                    return e.retrieval
        return None

    def _route(self, event) -> Retrieval | None:
        req = event.request
        found = self._route_by(event.assoc, req.MoveOriginatorMessageID)
        if found is not None:
            return found
        calling = (event.assoc.requestor.ae_title or "").strip()
        with self._lock:
            candidates = [e for e in self._by_id.values() if e.peer_aet == calling]
        if not candidates:
            return None
        # several transfers moving from this peer: the instance's study decides
        try:
            study = clean_uid(read_header(Path(event.dataset_path)).get("StudyInstanceUID"))
        except Exception:
            return None
        for e in candidates:
            if study in e.studies:
                return e.retrieval
        return None
