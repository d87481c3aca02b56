"""Bodies sent to a recipient go at the pace it reads them: against a peer that reads
nothing, the paced session's write waits (and times out) with little handed to the
kernel, where a plain session hands it megabytes and would wait for the answer while
they drain (tests the socket option on a real loopback connection)."""
from __future__ import annotations

import socket

import pytest
import requests

from gateway.outbound.sockets import paced_session

CHUNK = 16 * 1024


def _taken(session: requests.Session) -> int:
    """Bytes of a 8 MB body the session took before its write gave up."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    taken = 0

    def body():
        nonlocal taken
        for _ in range(8 * 1024 * 1024 // CHUNK):
            taken += CHUNK
            yield b"x" * CHUNK

    try:
        with pytest.raises(requests.RequestException):
            session.post(f"http://127.0.0.1:{listener.getsockname()[1]}/fhir", data=body(),
                         headers={"Content-Length": str(8 * 1024 * 1024)}, timeout=(1, 1))
    finally:
        listener.close()
        session.close()
    return taken


def test_a_paced_session_hands_the_kernel_only_what_the_peer_reads():
    assert _taken(paced_session()) <= 256 * 1024
    assert _taken(requests.Session()) >= 1024 * 1024  # what the kernel would swallow otherwise
