"""A fault-injecting DICOM proxy: a TCP relay in front of a real PACS (Orthanc) that reads
the PDUs the PACS sends and counts each instance it hands over (a C-STORE request and its
whole data set, as in a C-GET), by SOP Instance UID. Faults, which Orthanc cannot be made
to produce itself:

- `abort_after=N`: the first association to have carried N instances gets an A-ABORT
  (both ways) before the next one, as a PACS that gives up mid-retrieve;
- `stall_after=N`: the first association to have carried N instances goes silent (the
  PACS holds the association and sends nothing more) until the client hangs up;
- `interval=s`: at most one instance every `s` seconds over all associations (a slow
  PACS); the client sees steady progress.

`sent` lists every instance handed over, so a scenario can show what was fetched again."""
from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter

ABORT = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0])  # A-ABORT, source: service provider
C_STORE_RQ = 0x0001


def _command(data: bytes) -> tuple[int | None, str | None]:
    """(Command Field, Affected SOP Instance UID) of a command set (implicit VR little endian)."""
    field = uid = None
    at = 0
    while at + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, at)
        value = data[at + 8:at + 8 + length]
        if (group, element) == (0, 0x0100) and length == 2:
            field = struct.unpack("<H", value)[0]
        elif (group, element) == (0, 0x1000):
            uid = value.rstrip(b"\0 ").decode("ascii", "replace")
        at += 8 + length
    return field, uid


class DicomFaultProxy:
    def __init__(self, upstream_port: int, *, abort_after: int | None = None,
                 stall_after: int | None = None, interval: float = 0.0):
        self.upstream_port = upstream_port
        self.abort_after, self.stall_after, self.interval = abort_after, stall_after, interval
        self.sent: list[str] = []  # SOP Instance UIDs handed to a client, in order
        self.sent_at: list[float] = []  # when each was handed over (monotonic)
        self.associations = 0
        self.aborted = self.stalled = 0  # associations ended so
        self.fault_at: float | None = None  # when the fault was injected (monotonic)
        self._lock = threading.Lock()
        self._next_at = 0.0
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.listener.listen(32)
        self.closed = threading.Event()

    def start(self) -> "DicomFaultProxy":
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self.closed.set()
        self.listener.close()

    @property
    def counts(self) -> Counter:
        return Counter(self.sent)

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._from_pacs, args=(upstream, client), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src, dst)

    def _from_pacs(self, src: socket.socket, dst: socket.socket) -> None:
        """Relay the PACS's PDUs one by one, watching for each instance it hands over."""
        buf = b""
        command: dict[int, bytes] = {}  # presentation context -> command fragments so far
        storing: str | None = None  # the instance whose data set is on its way
        carried = 0
        counted = False
        try:
            while True:
                while len(buf) < 6 or len(buf) < 6 + struct.unpack_from(">I", buf, 2)[0]:
                    data = src.recv(65536)
                    if not data:
                        return
                    buf += data
                length = struct.unpack_from(">I", buf, 2)[0]
                pdu, buf = buf[:6 + length], buf[6 + length:]
                if not counted and pdu[0] == 0x02:  # A-ASSOCIATE-AC
                    counted = True
                    with self._lock:
                        self.associations += 1
                if pdu[0] == 0x04 and storing is None and carried:
                    # the next instance's request is about to go: faults strike here
                    if self._fault(carried, src, dst):
                        return
                done = []
                at = 6
                while pdu[0] == 0x04 and at + 6 <= len(pdu):
                    item = struct.unpack_from(">I", pdu, at)[0]
                    context, header = pdu[at + 4], pdu[at + 5]
                    fragment = pdu[at + 6:at + 4 + item]
                    at += 4 + item
                    if header & 1:  # a command fragment
                        command[context] = command.get(context, b"") + fragment
                        if header & 2:
                            field, uid = _command(command.pop(context))
                            if field == C_STORE_RQ:
                                storing = uid
                    elif header & 2 and storing is not None:  # an instance's last fragment
                        done.append(storing)
                        storing = None
                dst.sendall(pdu)
                for uid in done:
                    carried += 1
                    with self._lock:
                        self.sent.append(uid)
                        self.sent_at.append(time.monotonic())
                    self._pace()
        except OSError:
            pass
        finally:
            _close(src, dst)

    def _fault(self, carried: int, src: socket.socket, dst: socket.socket) -> bool:
        with self._lock:
            abort = (self.abort_after is not None and not self.aborted
                     and carried >= self.abort_after)
            stall = (not abort and self.stall_after is not None and not self.stalled
                     and carried >= self.stall_after)
            self.aborted += abort
            self.stalled += stall
            if abort or stall:
                self.fault_at = time.monotonic()
        if abort:
            for s in (dst, src):
                try:
                    s.sendall(ABORT)
                except OSError:
                    pass
            return True
        if stall:  # hold the association: nothing more until the client gives up (the
            while dst.fileno() != -1 and not self.closed.is_set():  # relay closes it then)
                time.sleep(0.1)
            return True
        return False

    def _pace(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            wait = max(0.0, self._next_at - now)
            self._next_at = max(now, self._next_at) + self.interval
        time.sleep(wait)


def _close(*sockets: socket.socket) -> None:
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            s.close()
        except OSError:
            pass
