"""HTTP sessions for the bodies sent to a recipient (bundles, uploads, STOW-RS), whose
read timeout must measure the recipient, not this machine's kernel.

A socket's send buffer grows to megabytes (Linux autotuning): a whole bundle is handed
to the kernel at once, and the wait for the answer (the read timeout) starts while a
slow recipient is still taking it: at 10 KB/s, a 1 MB bundle would time out while
making progress. TCP_NOTSENT_LOWAT keeps at most UNSENT bytes not yet sent in the
kernel, so the sender's writes follow the recipient's reads (each write then waits
under the request's timeout, and the read timeout covers only those last bytes); data
in flight on a long link is not limited, so throughput is not."""
from __future__ import annotations

import socket

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection

UNSENT = 16 * 1024
# Linux and macOS; elsewhere the kernel's buffering stands (the timeout then must cover it)
_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", None)


class _PacedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        options = list(HTTPConnection.default_socket_options)
        if _LOWAT is not None:
            options.append((socket.IPPROTO_TCP, _LOWAT, UNSENT))
        kwargs["socket_options"] = options
        super().init_poolmanager(*args, **kwargs)


def paced_session() -> requests.Session:
    """A session whose writes go at the pace the peer reads them (module docstring)."""
    session = requests.Session()
    adapter = _PacedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
