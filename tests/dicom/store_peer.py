"""A Storage SCP with a knob, for the one fault a real PACS cannot be made to show on
demand: it stores `accept` instances, then answers "out of resources" (0xA700) until
`open_up()`. It counts every C-STORE it gets and keeps each accepted instance's bytes'
sha256 (the data set as sent, after the file meta), so a test can see exactly what a
resumed delivery sent again."""
from __future__ import annotations

import hashlib
import struct
import threading

from pynetdicom import AE, AllStoragePresentationContexts, evt

from tests.dicom.dicom_peers import free_port


class RefusingStoreSCP:
    def __init__(self, accept: int, aet: str = "REFUSING"):
        self.accept, self.aet = accept, aet
        self.port = free_port()
        self.c_stores = 0
        self.stored: dict[str, str] = {}  # SOP Instance UID -> sha256 of the data set
        self.refused = 0
        self._lock = threading.Lock()
        self._server = None

    def open_up(self) -> None:
        with self._lock:
            self.accept = None

    def _on_store(self, event) -> int:
        with self._lock:
            self.c_stores += 1
            if self.accept is not None and len(self.stored) >= self.accept:
                self.refused += 1
                return 0xA700
            sop = str(event.request.AffectedSOPInstanceUID)
            self.stored[sop] = hashlib.sha256(_received(event)).hexdigest()
            return 0x0000

    def start(self) -> "RefusingStoreSCP":
        ae = AE(ae_title=self.aet)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


def data_set(body: bytes) -> bytes:
    """A Part 10 file's data set (after the file meta group, which each writer makes)."""
    assert body[128:132] == b"DICM"
    (meta_len,) = struct.unpack_from("<I", body, 132 + 8)
    return body[132 + 12 + meta_len:]


def _received(event) -> bytes:
    """The data set as sent, whether pynetdicom received it in memory or, with
    STORE_RECV_CHUNKED_DATASET (set process-wide by our own SCP), into a Part 10 file."""
    try:
        path = event.dataset_path
    except AttributeError:
        path = None
    if path is None:
        return event.request.DataSet.getvalue()
    with open(path, "rb") as fh:
        return data_set(fh.read())
