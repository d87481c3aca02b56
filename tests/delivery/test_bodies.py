"""Request bodies streamed from the blob store give back exactly their parts, whatever
size the HTTP client reads them in, and renew the step's lease as they are read."""
from __future__ import annotations

import os

import pytest

from gateway.outbound.bodies import StreamedBody


@pytest.mark.parametrize("size", [1, 7, 8192, 65536, 1 << 21, -1])
def test_a_streamed_body_reads_back_its_parts(size):
    middle = [os.urandom(n) for n in (1 << 20, 5, 0, 300_001)]
    renewed = []
    body = StreamedBody([b"head", b"-"], iter(middle), [b"tail"], sum(map(len, middle)),
                        lambda: renewed.append(1))
    assert len(body) == 5 + sum(map(len, middle)) + 4
    pieces = []
    while piece := body.read(size):
        assert len(piece) <= (size if size > 0 else 1 << 20)
        pieces.append(piece)
    assert b"".join(pieces) == b"head-" + b"".join(middle) + b"tail"
    assert len(renewed) == len(pieces) + 1 and body.error is None


def test_a_failing_renewal_is_kept_and_raised():
    def renew():
        raise RuntimeError("lease lost")

    body = StreamedBody([b"x"], iter(()), [], 0, renew)
    with pytest.raises(RuntimeError):
        body.read(10)
    assert isinstance(body.error, RuntimeError)
