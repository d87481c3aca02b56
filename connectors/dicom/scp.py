"""The gateway's Storage SCP: where a PACS sends the instances of a C-MOVE.

One SCP per process (AE title and port configured; the PACS must know them), shared by
every transfer in flight. Who may send, and where each C-STORE goes:

1. Association: only a configured DICOM source may associate, and only from its own
   address: the calling AE title and the peer's IP address must both be a source's
   (`admit()`, with the addresses its host name resolves to). Anyone else gets an
   A-ASSOCIATE-RJ, "calling AE title not recognized", and a log line (title, address);
   `on_refused` (the gateway audits it) hears of it at most once a minute per address,
   with the count, so a scanner cannot flood the audit log.
2. C-STORE: routed to an open retrieve (`expect()`, one per C-MOVE in flight) only when
   the association's peer is that retrieve's source, the Move Originator AE title and
   Message ID (where the PACS sends them) are ours for that C-MOVE, and the SOP Instance
   UID is one the retrieve expects: the instance-level C-FIND listed it, or the C-MOVE
   named it. The message ID is 16 bits and a PACS may leave it out, so it only tells
   concurrent moves apart; what cannot be guessed is the expected set (the UIDs of the
   study being moved, known to the PACS and to us) together with the peer's identity.
   A random per-move destination AE title would be, but a PACS only sends to
   destinations configured on its side. Every refusal, whatever failed, is the same
   answer from the same code path (0x0124 Not Authorized, nothing stored), so a refusal
   tells a prober nothing about which part it got right.
3. One instance per SOP Instance UID in a retrieve (connectors.dicom.intake): a second
   copy with the same bytes is answered as stored, once; with other bytes it is refused
   (0x0111 Duplicate SOP Instance) and reported, the first kept.

The instance is never decoded: the data set is written to the retrieval's spool (or its
streaming sink) as it arrives and the handler answers at once; checking, hashing and
storing (a sink may fsync) happen in the retrieval's intake workers while the PACS sends
the next instance. A bad instance is a per-instance error; an aborted association loses
only the instance in flight; neither stops the SCP or other transfers.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import random
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pynetdicom import AllStoragePresentationContexts, _config, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from .header import PREAMBLE
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

#: a refusing address is reported to `on_refused` at most this often (seconds)
REFUSAL_REPORT_EVERY = 60.0

NOT_AUTHORIZED = 0x0124  # Refused: Not Authorized (PS3.7 C.5.1)
DUPLICATE_SOP = 0x0111  # Failure: Duplicate SOP Instance (PS3.7 C.4)
SOP_CLASS_NOT_SUPPORTED = 0x0122
CANNOT_UNDERSTAND = 0xC000


@functools.lru_cache(maxsize=1)
def _scp_contexts() -> tuple:
    # built once a process (~0.15 s): an SCP starts for each pull that retrieves by C-MOVE
    return (*[build_context(uid, ACCEPTED_SYNTAXES) for uid in sorted(STORAGE_SOP_CLASSES)],
            build_context(Verification))


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
                return _refused(event.assoc)
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
            if not retrieval.claim(sop):
                same = retrieval.duplicate(sop, _sha256_zeroed(Path(path)), via)
                Path(path).unlink(missing_ok=True)
                return _copy_status(same)
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

    def __init__(self, spool: Path, retrieval: Retrieval, via: str, sop: str, klass: str):
        self.retrieval, self.via, self.sop, self.klass = retrieval, via, sop, klass
        self.stream = None
        self.fh = None
        if retrieval.streams():
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
        retrieval = self.retrieval
        if not complete:
            self.path.unlink(missing_ok=True)
            retrieval.error(self.sop, "association ended while this instance was being "
                            "received", self.via, permanent=False)
            retrieval.release(self.sop)
            return 0xA700
        retrieval.begin()
        retrieval.submit(self.path, via=self.via, sop_uid=self.sop, sop_class=self.klass)
        return 0x0000


class _Copy:
    """A second C-STORE of an instance its retrieval holds or is taking: hashed as it
    arrives (the bytes the first was stored as), never stored."""

    def __init__(self, retrieval: Retrieval, via: str, sop: str):
        self.retrieval, self.via, self.sop = retrieval, via, sop
        self.digest = hashlib.sha256()

    def write(self, data) -> None:
        self.digest.update(data)

    def end(self, complete: bool) -> int:
        if not complete:
            return 0xA700
        return _copy_status(self.retrieval.duplicate(self.sop, self.digest.hexdigest(),
                                                     self.via))


def _copy_status(same: bool | None) -> int:
    """The answer to a second copy: stored (same bytes), refused (other bytes), or
    out of resources (the first was not kept: the sender may try again)."""
    return 0x0000 if same else DUPLICATE_SOP if same is False else 0xA700


def _sha256_zeroed(path: Path) -> str:
    """sha256 of a received file with its preamble zeroed (as the intake stores it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        head = fh.read(PREAMBLE)
        digest.update(bytes(len(head)))
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def store_begin(resolve, via: str):
    """A fast-path `store_begin(assoc, context_id, command)` hook: `resolve(assoc,
    command)` names the retrieval, or None (refused). The command's UIDs and SOP class
    are checked next; a second copy of an instance is only hashed (`_Copy`)."""

    def begin(assoc, context_id, command):
        retrieval = resolve(assoc, command)
        if retrieval is None:
            return _refused(assoc)
        sop, klass = clean_uid(command.sop_instance), clean_uid(command.sop_class)
        if sop is None or klass is None:
            retrieval.error(sop or "", "C-STORE with an invalid SOP Instance/Class UID "
                            f"{describe(command.sop_instance)}", via)
            return CANNOT_UNDERSTAND
        if klass not in STORAGE_SOP_CLASSES:
            retrieval.error(sop, f"unexpected SOP class {klass}", via)
            return SOP_CLASS_NOT_SUPPORTED
        if not retrieval.claim(sop):
            return _Copy(retrieval, via, sop)
        try:
            return _Ticket(Path(retrieval.spool), retrieval, via, sop, klass)
        except BaseException:
            retrieval.release(sop)  # nothing was taken: a later copy is a first one
            raise

    return begin


def _refused(assoc) -> int:
    """The one answer to a C-STORE that matches no open retrieve, whatever the reason."""
    LOGGER.warning("C-STORE from %s matches no open retrieve: refused",
                   describe(assoc.requestor.ae_title))
    return NOT_AUTHORIZED


def _address(value) -> str:
    """An IP address as compared here (IPv4-mapped IPv6 as plain IPv4)."""
    text = str(value or "").split("%")[0]
    return text[7:] if text.startswith("::ffff:") and "." in text else text


@dataclass(frozen=True)
class SourcePeer:
    """A configured DICOM source as this SCP knows it: the AE title it calls with and
    the addresses its C-STOREs come from."""

    ae_title: str
    addresses: frozenset[str]


def source_peer(ae_title: str, hosts) -> SourcePeer:
    """The peer for a source's AE title and host names or addresses (resolved now)."""
    addresses = set()
    for host in hosts:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            raise ValueError(f"cannot resolve the DICOM source host {host!r}: "
                             f"{exc.strerror}") from None
        addresses |= {_address(info[4][0]) for info in infos}
    return SourcePeer(ae_title.strip(), frozenset(addresses))


@dataclass
class _Expectation:
    retrieval: Retrieval
    peer: SourcePeer
    originator_aet: str  # the AE title our C-MOVE was sent from
    move_id: int
    instances: frozenset[str]  # SOP Instance UIDs this C-MOVE may bring

    def brings(self, calling: str, address: str, originator_aet, originator_id,
               sop) -> bool:
        return sop in self.instances and from_move(self.peer, self.originator_aet,
                                                   self.move_id, calling, address,
                                                   originator_aet, originator_id)


def from_move(peer: SourcePeer, our_aet: str, move_id: int, calling: str, address: str,
              originator_aet, originator_id) -> bool:
    """Whether a C-STORE (its association's calling AE title and address, the Move
    Originator AE title and Message ID it carries, where it carries them) may be a
    sub-operation of the C-MOVE `move_id` we sent from `our_aet` to `peer`."""
    return (calling == peer.ae_title and address in peer.addresses
            and (originator_id is None or originator_id == move_id)
            and (not originator_aet or originator_aet == our_aet))


class StorageSCP:
    """The shared C-MOVE destination. `start()`, `admit()` each source, then `expect()`
    around each C-MOVE.

    With a `router`, the open retrieves live elsewhere (the gateway's standing receiver
    keeps them in its database, shared with the workers that send the C-MOVEs):
    `router(calling, address, originator_aet, originator_id, sop)` names the retrieval a
    C-STORE belongs to, or None; everything else (who may associate, receiving, the
    checks, duplicates, the one refusal) is this class's, the same for both."""

    def __init__(self, ae_title: str, port: int, host: str = "127.0.0.1", *,
                 max_pdu: int = 0, socket_timeout: float = 120.0, router=None):
        check_version()
        self.router = router
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.socket_timeout = socket_timeout
        self._ae = FastAE(ae_title=ae_title)
        self._ae.maximum_pdu_size = max_pdu  # 0: the peer may send PDUs of any size
        self._ae.network_timeout = None  # stalls are caught per socket and per retrieval
        self._ae.dimse_timeout = None
        self._ae.maximum_associations = 64
        self._server = None
        self._lock = threading.Lock()
        self._peers: dict[SourcePeer, int] = {}  # admitted sources -> backends using them
        self._open: dict[int, _Expectation] = {}
        #: on_refused(calling_ae_title printable, address, refusals): an association
        #: refused, reported at most every REFUSAL_REPORT_EVERY seconds per address
        self.on_refused: Callable[[str, str, int], None] | None = None
        self._refusals: dict[str, list] = {}  # address -> [last reported, refused since]
        self._ids = itertools.count(random.randint(1, 60000))

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> "StorageSCP":
        if self._server is None:
            contexts = list(_scp_contexts())  # pynetdicom reads them, never changes them
            self._server = serve(self._ae, (self.host, self.port), contexts=contexts,
                                 evt_handlers=[(evt.EVT_C_STORE, store_handler(
                                     self._route, "c-move"))])
            self._server.socket_timeout = self.socket_timeout
            self._server.on_partial = self._on_partial
            self._server.accept_peer = self.accept_peer
            self._server.store_begin = store_begin(self._route_command, "c-move")
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

    # -- who may associate ----------------------------------------------------------------
    def admit(self, peer: SourcePeer) -> None:
        """Let `peer` (a configured source) associate while it is admitted."""
        with self._lock:
            self._peers[peer] = self._peers.get(peer, 0) + 1

    def withdraw(self, peer: SourcePeer) -> None:
        with self._lock:
            left = self._peers.get(peer, 0) - 1
            if left > 0:
                self._peers[peer] = left
            else:
                self._peers.pop(peer, None)

    def accept_peer(self, calling: str, address) -> bool:
        """Association check (connectors.dicom.net.PeerACSE): an admitted source's AE
        title from one of its addresses."""
        addr = _address(address)
        with self._lock:
            known = any(p.ae_title == calling and addr in p.addresses for p in self._peers)
        if not known:
            LOGGER.warning("association refused: calling AE title %s from %s is not a "
                           "configured DICOM source", describe(calling), addr)
            self._refused(describe(calling), addr)
        return known

    def _refused(self, calling: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._refusals) > 4096:  # many addresses: start counting afresh
                self._refusals.clear()
            entry = self._refusals.setdefault(address, [None, 0])
            entry[1] += 1
            if entry[0] is not None and now - entry[0] < REFUSAL_REPORT_EVERY:
                return
            entry[0], count, entry[1] = now, entry[1], 0
        if self.on_refused is not None:
            try:
                self.on_refused(calling, address, count)
            except Exception:
                LOGGER.exception("reporting a refused association failed")

    # -- routing -------------------------------------------------------------------------
    @contextmanager
    def expect(self, retrieval: Retrieval, peer: SourcePeer, instances, originator_aet: str):
        """Route the instances named in `instances` from `peer` to `retrieval` while the
        block runs; yields the message ID to send the C-MOVE with (from `originator_aet`),
        which the sub-operations carry back as the Move Originator Message ID."""
        with self._lock:
            for _ in range(65535):
                move_id = next(self._ids) % 65535 + 1
                if move_id not in self._open:
                    break
            else:
                raise RuntimeError("too many C-MOVEs in flight")
            self._open[move_id] = _Expectation(retrieval, peer, originator_aet.strip(),
                                               move_id, frozenset(instances))
        try:
            yield move_id
        finally:
            with self._lock:
                self._open.pop(move_id, None)

    # C-STOREs reach this process's retrievals directly: nothing to fetch while or after
    # a C-MOVE runs (the standing receiver's board does: gateway.engine.dicom_moves)
    def on_response(self, move_id: int) -> None:
        pass

    def settle(self, move_id: int, status) -> None:
        pass

    def check(self) -> None:
        """Raise SourceUnavailable when the move destination is not there (this SCP
        runs in this process: it is)."""

    def _match(self, assoc, originator_aet, originator_id, sop) -> Retrieval | None:
        """The open retrieve this C-STORE belongs to (see the module docs), or None."""
        calling = (assoc.requestor.ae_title or "").strip()
        address = _address(assoc.requestor.address)
        originator_aet = (originator_aet or "").strip() or None
        originator_id = int(originator_id) if originator_id is not None else None
        if self.router is not None:
            return self.router(calling, address, originator_aet, originator_id, sop)
        with self._lock:
            found = [e.retrieval for e in self._open.values()
                     if e.brings(calling, address, originator_aet, originator_id, sop)]
        # several only without a Message ID: two transfers moving the same study
        return next((r for r in found if sop not in r.received), found[0] if found else None)

    def _route_command(self, assoc, command) -> Retrieval | None:
        return self._match(assoc, command.move_originator_aet, command.move_originator_id,
                           clean_uid(command.sop_instance))

    def _route(self, event) -> Retrieval | None:
        req = event.request
        return self._match(event.assoc, req.MoveOriginatorApplicationEntityTitle,
                           req.MoveOriginatorMessageID, clean_uid(req.AffectedSOPInstanceUID))

    def _on_partial(self, assoc, command) -> None:
        """An association ended mid-instance: tell the transfer which instance was lost."""
        sop = clean_uid(command.get("AffectedSOPInstanceUID"))
        retrieval = self._match(assoc, command.get("MoveOriginatorApplicationEntityTitle"),
                                command.get("MoveOriginatorMessageID"), sop)
        if retrieval is not None:
            retrieval.error(sop or "", "association ended while this instance was being "
                            "received", "c-move", permanent=False)
