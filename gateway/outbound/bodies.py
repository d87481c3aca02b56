"""Request bodies streamed from the encrypted blob store: base64 chunk by chunk (a
Binary's data), and a body of known length that renews the step's lease as it is read."""
from __future__ import annotations

import base64
import itertools
from typing import Callable, Iterator


def base64_chunks(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Base64 of a byte stream, chunk by chunk (each piece a whole number of 3-byte groups)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        usable = len(pending) - len(pending) % 3
        yield base64.b64encode(pending[:usable])
        pending = pending[usable:]
    yield base64.b64encode(pending)


class StreamedBody:
    """A streamed request body of known length (requests sends Content-Length); renews
    the step's lease as it goes and keeps the error if that fails."""

    def __init__(self, head: list[bytes], middle: Iterator[bytes], tail: list[bytes], middle_size: int,
                 renew: Callable[[], None]):
        self._parts = itertools.chain(head, middle, tail)
        self._size = sum(map(len, head)) + middle_size + sum(map(len, tail))
        self._buf = b""
        self._pos = 0  # what of _buf was read (slicing off the rest each read copied it again)
        self._renew = renew
        self.error: BaseException | None = None

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        n = n if n and n > 0 else 1 << 20
        try:
            self._renew()
            while len(self._buf) - self._pos < n:
                block = next(self._parts, None)
                if block is None:
                    break
                self._buf = self._buf[self._pos:] + block
                self._pos = 0
        except BaseException as exc:
            self.error = exc
            raise
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out
