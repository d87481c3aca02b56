"""Faster pynetdicom plumbing: small documented subclasses, no monkeypatching.

Stock pynetdicom (3.0.4) polls. Its DUL thread sleeps 1 ms whenever it finds no work, its
association thread sleeps 1 ms between looks at the DIMSE queue, it reads the socket in
4 KB `recv` calls and copies each PDU several times, and its server notices a shutdown
only every 0.5 s. Receiving a study that is a few hundred C-STORE sub-operations, the
receiving thread spends about half its time asleep. The subclasses here keep pynetdicom's
state machine, ACSE and DIMSE code as they are and change only how threads wait and read:

- `FastDUL` waits in `select()` on the socket and on a wake-up socket pair that every
  other thread pokes when it queues work for the DUL, so it reacts at once and idles at
  no cost; it reads each PDU with `recv_into` into one buffer and skips the copies.
- `FastAssociation` waits on an event set when a DIMSE message or an ACSE primitive is
  queued, instead of sleeping 1 ms per loop, and serves C-STORE requests directly in the
  DUL thread that decoded them (acceptor and C-GET requestor alike), so an instance costs
  no hand-over between threads before its response. Its handlers must therefore be quick
  (ours rename the received file and queue it for the intake workers). It binds none of pynetdicom's standard logging handlers,
  which format every message (and would log identifiers at INFO).
- `FastDIMSE` (connectors.dicom.dimse_store) receives C-STORE requests without
  pynetdicom's per-message pydicom work when the association has a `store_begin` hook.
- `PeerACSE` lets the acceptor refuse an association by its calling AE title and the
  peer's network address together (pynetdicom checks the title alone), with the
  A-ASSOCIATE-RJ reason "calling AE title not recognized".
- `FastAE.associate` (requestor) and `FastRequestHandler` (acceptor) build those.
- `serve(ae, ...)` runs the Storage SCP's server loop with a short poll so it stops fast,
  without the full `gc.collect()` pynetdicom's server runs every 60 polls.

They override private methods of pynetdicom, so they are written for the version pinned
in pyproject.toml (`PYNETDICOM_VERSION`); `check_version()` refuses any other, and
tests/dicom/test_dicom_net.py checks that they still behave.
"""
from __future__ import annotations

import logging
import os
import queue
import select
import socket
import struct
import threading
import time
from datetime import datetime
from typing import Callable

import pynetdicom
from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR, MODE_REQUESTOR
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.acse import ACSE
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem
from pynetdicom.transport import (
    AddressInformation,
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

from .dimse_store import FastDIMSE

LOGGER = logging.getLogger(__name__)

#: the pynetdicom release these subclasses were written and tested against
PYNETDICOM_VERSION = "3.0.4"

#: longest the DUL sleeps without a wake-up (timers such as ARTIM are checked this often)
DUL_IDLE_WAIT = 0.05
#: longest the association thread sleeps without a wake-up (release/abort/idle checks)
ASSOC_IDLE_WAIT = 0.05


def check_version() -> None:
    """Raise if the installed pynetdicom is not the release these subclasses target."""
    if pynetdicom.__version__ != PYNETDICOM_VERSION:
        raise RuntimeError(
            f"connectors.dicom.net was written for pynetdicom {PYNETDICOM_VERSION}, "
            f"found {pynetdicom.__version__}; re-check the subclasses before changing the pin")


class _NotifyingQueue(queue.Queue):
    """A queue that calls `notify` after every put (the waiter's wake-up)."""

    def __init__(self, notify: Callable[[], None]):
        super().__init__()
        self._notify = notify

    def put(self, item, block=True, timeout=None):
        super().put(item, block, timeout)
        self._notify()


MAX_CONTROL_PDU = 1 << 20  # A-ASSOCIATE-RQ/AC/RJ, release, abort: kilobytes in practice
MAX_PDATA = 64 << 20  # P-DATA-TF when no maximum length was announced
PIECE = 1 << 20  # larger PDU bodies are read in pieces of this size


class FastSocket(AssociationSocket):
    """`AssociationSocket` that reads a whole PDU with `recv_into` on one buffer."""

    def recv(self, nr_bytes: int) -> bytearray:
        buf = bytearray(nr_bytes)
        got = self.recv_into(memoryview(buf))
        return buf if got == nr_bytes else buf[:got]

    def recv_into(self, view: memoryview) -> int:
        """Fill `view` from the socket; return the bytes read (fewer if the peer closed)."""
        sock = self.socket
        got, want = 0, len(view)
        while got < want:
            n = sock.recv_into(view[got:], want - got)
            if not n:
                break
            got += n
        return got


class FastDUL(DULServiceProvider):
    """DUL provider that sleeps in `select()` until the socket or another thread has work."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_lock = threading.Lock()
        self._thread_id: int | None = None
        # other threads queue work for this thread: wake it when they do
        self.to_provider_queue = _NotifyingQueue(self._poke)
        self.event_queue = _NotifyingQueue(self._poke)

    def _poke(self) -> None:
        if threading.get_ident() == self._thread_id:
            return  # this thread queued it: it loops again without waiting
        with self._wake_lock:
            if self._wake_w is None:
                return
            try:
                self._wake_w.send(b"\0")
            except (BlockingIOError, OSError):
                pass  # already poked (buffer full) or closing

    def kill_dul(self) -> None:
        self._kill_thread = True
        self._poke()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            self.kill_dul()
            if threading.get_ident() != self._thread_id:
                self.join()
            return True
        return False

    def _wait_for_work(self) -> None:
        readers = [self._wake_r]
        sock = self.socket.socket if self.socket is not None else None
        if sock is not None and self.socket._is_connected:
            readers.append(sock)
        try:
            ready, _, _ = select.select(readers, [], [], DUL_IDLE_WAIT)
        except (OSError, ValueError):
            time.sleep(0.001)  # the socket closed under us: the next loop sees it
            return
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass

    def _read_pdu_data(self) -> None:
        """Read one PDU into a single buffer; decode P-DATA-TF without extra copies."""
        sock = self.socket
        header = bytearray(6)
        try:
            got = sock.recv_into(memoryview(header))
        except (OSError, TimeoutError) as exc:
            LOGGER.error("Connection closed before the entire PDU was received: %s", exc)
            self.event_queue.put("Evt17")
            return
        if got != 6:
            self.event_queue.put("Evt17")
            return
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
            LOGGER.error("Unknown PDU type received '0x%02X'", pdu_type)
            self.event_queue.put("Evt19")
            return
        limit = self._pdu_limit(pdu_type)
        if length > limit:  # checked before a byte is allocated: the claim costs nothing
            LOGGER.error("PDU of type 0x%02X claims %d bytes, over the %d byte limit",
                         pdu_type, length, limit)
            self.event_queue.put("Evt19")
            return
        try:
            body, got = self._read_body(sock, length)
        except (OSError, TimeoutError) as exc:
            LOGGER.error("Connection closed before the entire PDU was received: %s", exc)
            self.event_queue.put("Evt17")
            return
        if got != length:
            LOGGER.error("The received PDU is shorter than expected (%d of %d bytes)",
                         got + 6, length + 6)
            self.event_queue.put("Evt17")
            return
        try:
            if pdu_type == 0x04:
                pdu = self._decode_p_data(body)
                event = "Evt10"
            else:
                pdu, event = self._decode_pdu(header + body)
        except Exception as exc:
            LOGGER.error("Unable to decode the received PDU data: %s", exc)
            self.event_queue.put("Evt19")
            return
        self._recv_pdu.put(pdu)
        self.event_queue.put(event)

    def _pdu_limit(self, pdu_type: int) -> int:
        """The most a PDU of this type may hold: association negotiation and release are
        small; P-DATA-TF at most the maximum length we announced (or MAX_PDATA)."""
        if pdu_type != 0x04:
            return MAX_CONTROL_PDU
        mine = self.assoc.acceptor if self.assoc.is_acceptor else self.assoc.requestor
        return min(mine.maximum_length or MAX_PDATA, MAX_PDATA)

    @staticmethod
    def _read_body(sock: "FastSocket", length: int) -> tuple[bytearray, int]:
        """A PDU body in one buffer when small; a large one in pieces as they arrive, so
        memory follows the bytes a peer really sends, not the length it claims."""
        if length <= PIECE:
            body = bytearray(length)
            return body, sock.recv_into(memoryview(body))
        pieces, got = [], 0
        while got < length:
            piece = bytearray(min(PIECE, length - got))
            n = sock.recv_into(memoryview(piece))
            pieces.append(piece if n == len(piece) else piece[:n])
            got += n
            if n < len(piece):
                break  # the peer closed early
        return bytearray().join(pieces), got

    def _decode_p_data(self, body: bytearray) -> P_DATA_TF:
        """P-DATA-TF from its body; PDV values are memoryviews into `body`."""
        assoc = self.assoc
        if assoc.get_handlers(evt.EVT_DATA_RECV):
            evt.trigger(assoc, evt.EVT_DATA_RECV, {"data": bytes(struct.pack(
                ">BBL", 4, 0, len(body)) + body)})
        view = memoryview(body)
        items = []
        offset, end = 0, len(body)
        while offset < end:
            if end - offset < 6:
                raise ValueError("truncated PDV item")
            item_length = int.from_bytes(view[offset:offset + 4], "big")
            if item_length < 2 or offset + 4 + item_length > end:
                raise ValueError("PDV item length out of range")
            item = PresentationDataValueItem()
            item.presentation_context_id = view[offset + 4]
            item.presentation_data_value = view[offset + 5:offset + 4 + item_length]
            items.append(item)
            offset += 4 + item_length
        pdu = P_DATA_TF()
        pdu.presentation_data_value_items = items
        if assoc.get_handlers(evt.EVT_PDU_RECV):
            evt.trigger(assoc, evt.EVT_PDU_RECV, {"pdu": pdu})
        return pdu

    def run_reactor(self) -> None:
        """pynetdicom's DUL loop, waiting in `select()` instead of sleeping 1 ms."""
        self._thread_id = threading.get_ident()
        self._idle_timer.start()
        try:
            while True:
                if not self.assoc._dul_ready.is_set():
                    self.assoc._dul_ready.set()
                if self._kill_thread:
                    break
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    if self._process_recv_primitive():
                        pass
                    elif self._is_transport_event():
                        self._idle_timer.restart()
                except Exception as exc:
                    LOGGER.error("Exception in DUL.run(), aborting association: %s", exc)
                    abort_pdu = A_ABORT_RQ()
                    abort_pdu.source = 0x02
                    abort_pdu.reason_diagnostic = 0x00
                    try:
                        self.socket.send(abort_pdu.encode())
                    except Exception:
                        pass
                    self.assoc.is_aborted = True
                    self.assoc.is_established = False
                    self.assoc._kill = True
                    self._kill_thread = True
                    return
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    self._wait_for_work()
                    continue
                self.state_machine.do_action(event)
        finally:
            self.assoc._drop_partial()
            with self._wake_lock:
                wake_w, self._wake_w = self._wake_w, None
            wake_w.close()
            self._wake_r.close()
            self.assoc._wake()


_STANDARD_HANDLERS = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)


class _MessageQueue(_NotifyingQueue):
    """DIMSE message queue that serves C-STORE requests in the putting (DUL) thread."""

    def __init__(self, assoc: "FastAssociation"):
        super().__init__(assoc._wake)
        self._assoc = assoc

    def put(self, item, block=True, timeout=None):
        context_id, msg = item
        assoc = self._assoc
        # Only once the association thread has marked the association established: a
        # peer may send its first C-STORE the instant our A-ASSOCIATE-AC leaves, and
        # pynetdicom's storage SCP drops the response of a request served before then.
        if (type(msg) is C_STORE and msg.MessageIDBeingRespondedTo is None
                and assoc.is_established
                and threading.get_ident() == assoc.dul._thread_id):
            assoc._serve_store_inline(msg, context_id)
            return
        super().put(item, block, timeout)


#: A-ASSOCIATE-RJ (result, source, reason): rejected-permanent, by the service user,
#: calling AE title not recognized (PS3.8 9.3.4)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)


class PeerACSE(ACSE):
    """ACSE whose acceptor asks `assoc.accept_peer(calling_ae_title, address)` before
    anything else is negotiated; False rejects with `REJECT_CALLING_AE`."""

    def _negotiate_as_acceptor(self) -> None:
        accept = getattr(self.assoc, "accept_peer", None)
        if accept is not None:
            calling = (self.requestor.primitive.calling_ae_title or "").strip()
            self.requestor.ae_title = calling
            try:
                allowed = bool(accept(calling, self.assoc.requestor.address))
            except Exception:
                LOGGER.exception("accept_peer failed: association rejected")
                allowed = False
            if not allowed:
                self.send_reject(*REJECT_CALLING_AE)
                evt.trigger(self.assoc, evt.EVT_REJECTED, {})
                self.assoc.kill()
                return
        super()._negotiate_as_acceptor()


class FastAssociation(Association):
    """Association whose reactor waits on an event instead of sleeping 1 ms per loop."""

    def __init__(self, ae: ApplicationEntity, mode: str) -> None:
        self._work = threading.Event()
        super().__init__(ae, mode)
        self.dul = FastDUL(self)
        self.dimse = FastDIMSE(self)
        self.acse = PeerACSE(self)
        self.dul.to_user_queue = _NotifyingQueue(self._wake)
        self.dimse.msg_queue = _MessageQueue(self)
        # the timeouts were applied to the replaced DUL: apply them again
        self.network_timeout = self.ae.network_timeout
        for event, handler in _STANDARD_HANDLERS:
            self.unbind(event, handler)

    #: called as on_partial(assoc, command_set) when the association ends in the middle
    #: of a C-STORE request pynetdicom was receiving (its temp file is removed)
    on_partial: Callable | None = None
    #: store_begin(assoc, context_id, StoreCommand) -> StoreTicket | status: receive
    #: C-STORE requests on the fast path (connectors.dicom.dimse_store)
    store_begin: Callable | None = None
    #: accept_peer(calling_ae_title, address) -> bool: who may associate (acceptor)
    accept_peer: Callable | None = None

    def _wake(self) -> None:
        self._work.set()

    def _drop_partial(self) -> None:
        """Remove the temp file of a C-STORE cut off by an abort or a broken connection
        (pynetdicom leaves it behind) and report the lost instance."""
        self.dimse.drop()
        msg = self.dimse.message
        if msg is None:
            return
        tmp = getattr(msg, "_data_set_file", None)
        if tmp is not None:
            try:
                tmp.close()
                os.unlink(tmp.name)
            except OSError:
                pass
        command = getattr(msg, "command_set", None)
        if self.on_partial is not None and command is not None and \
                getattr(command, "CommandField", None) == 0x0001:
            try:
                self.on_partial(self, command)
            except Exception:
                LOGGER.exception("on_partial failed")

    def _serve_store_inline(self, msg: C_STORE, context_id: int) -> None:
        """Serve a C-STORE request in the DUL thread that just decoded it."""
        if self.is_acceptor:
            self._serve_request(msg, context_id)
        else:
            self._c_store_scp(msg)  # C-GET sub-operation on our own association

    def _abort_blocking(self, block: bool = True) -> None:
        # A blocking abort waits for the DUL thread to stop: never from that thread.
        if threading.get_ident() == self.dul._thread_id:
            block = False
        super()._abort_blocking(block)

    def kill(self) -> None:
        self._kill = True
        self._wake()
        super().kill()

    def _run_reactor(self) -> None:
        """pynetdicom's acceptor/requestor loop; only the wait differs."""
        self._is_paused = False
        while not self._kill:
            # Idle while waiting: a thread that pauses the reactor to send a request
            # (Association.send_*) sees `_is_paused` at once rather than after a timeout.
            self._is_paused = True
            self._work.wait(ASSOC_IDLE_WAIT)
            self._work.clear()
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, context_id)
                self._work.set()  # look again at once: more may be queued

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                LOGGER.info("Association Aborted")
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class FastRequestHandler(RequestHandler):
    """Acceptor side: a `FastAssociation` on a `FastSocket` for each connection."""

    #: seconds a peer may stall in the middle of a PDU before the association is dropped
    socket_timeout: float | None = 120.0

    def _create_association(self) -> Association:
        from copy import deepcopy

        server = self.server
        assoc = FastAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        timeout = getattr(server, "socket_timeout", self.socket_timeout)
        self.request.settimeout(timeout)
        assoc.set_socket(FastSocket(assoc, client_socket=self.request))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(server.contexts)
        assoc.requestor.address_info = self.remote
        assoc.on_partial = getattr(server, "on_partial", None)
        assoc.store_begin = getattr(server, "store_begin", None)
        assoc.accept_peer = getattr(server, "accept_peer", None)
        for event, handlers in server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in handlers:
                    assoc.bind(event, handler, args)
        return assoc


class FastServer(ThreadedAssociationServer):
    """Threaded association server using `FastRequestHandler`."""

    daemon_threads = True
    socket_timeout: float | None = 120.0

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("request_handler", FastRequestHandler)
        super().__init__(*args, **kwargs)
        for event, handler in _STANDARD_HANDLERS:
            self.unbind(event, handler)

    def service_actions(self) -> None:
        """No forced `gc.collect()` (pynetdicom's runs one every 60 polls, ~0.1 s each)."""


def serve(ae: ApplicationEntity, address: tuple[str, int], *, evt_handlers=None,
          ae_title: str | None = None, contexts=None,
          poll_interval: float = 0.02) -> FastServer:
    """Start a `FastServer` in a daemon thread; `server.shutdown()` returns within
    about `poll_interval` seconds (pynetdicom's default loop polls every 0.5 s)."""
    server = ae.make_server(address, ae_title=ae_title, contexts=contexts,
                            evt_handlers=evt_handlers, server_class=FastServer)
    thread = threading.Thread(target=server.serve_forever, args=(poll_interval,),
                              name=f"StorageSCP@{server.server_address[1]}", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server


class FastAE(ApplicationEntity):
    """`ApplicationEntity` whose `associate()` builds a `FastAssociation` (requestor)."""

    def associate(self, addr: str, port: int, contexts=None, ae_title: str = "ANY-SCP",
                  max_pdu: int = 0, ext_neg=None, bind_address=None, tls_args=None,
                  evt_handlers=None) -> Association:
        from copy import deepcopy

        remote = AddressInformation.from_addr_port(addr, port)
        local = AddressInformation.from_tuple(bind_address or ("", 0))
        assoc = FastAssociation(self, MODE_REQUESTOR)
        assoc.name = f"RequestorThread@{datetime.now():%Y%m%d%H%M%S}"
        sock = FastSocket(assoc, address=local)
        sock.tls_args = tls_args
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assoc.set_socket(sock)
        assoc.acceptor.ae_title = ae_title
        assoc.acceptor.address_info = remote
        assoc.requestor.address_info = local
        assoc.requestor.ae_title = self.ae_title
        assoc.requestor.maximum_length = max_pdu
        assoc.requestor.implementation_class_uid = self.implementation_class_uid
        assoc.requestor.implementation_version_name = self.implementation_version_name
        for item in ext_neg or []:
            assoc.requestor.add_negotiation_item(item)
        contexts = contexts or self.requested_contexts
        self._validate_requested_contexts(contexts)
        if not contexts:
            raise RuntimeError("At least one requested presentation context is required")
        contexts = deepcopy(contexts)
        for ii, context in enumerate(contexts):
            context.context_id = 2 * ii + 1
        assoc.requestor.requested_contexts = contexts
        for handler in evt_handlers or []:
            assoc.bind(*handler)
        assoc.request()
        if assoc.is_established:
            assoc.start()
        return assoc
