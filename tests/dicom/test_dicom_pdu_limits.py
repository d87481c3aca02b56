"""The Storage SCP reads what a peer sends, not what it claims: a PDU header claiming
hundreds of MB is refused before anything is allocated, and the SCP listens on loopback
unless told otherwise."""
from __future__ import annotations

import socket
import struct
import tracemalloc

from connectors.dicom.scp import StorageSCP
from tests.helpers import free_port, wait_until


def _refused(port: int, header: bytes) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(header)
        try:
            return conn.recv(1 << 16) is not None  # an A-ABORT, or the connection closed
        except (ConnectionResetError, TimeoutError):
            return True


def test_a_pdu_claiming_hundreds_of_mb_costs_nothing():
    port = free_port()
    scp = StorageSCP("GATEWAY", port).start()
    try:
        assert scp.host == "127.0.0.1"  # not every interface by default
        tracemalloc.start()
        try:
            for pdu_type in (0x01, 0x04):  # before an association, and as P-DATA
                assert _refused(port, struct.pack(">BBL", pdu_type, 0, 500_000_000))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 32 << 20, f"{peak >> 20} MiB allocated for a claim"
        # the SCP still serves the next peer
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=5).close() or True,
                   10, what="the SCP to accept again")
    finally:
        scp.stop()
