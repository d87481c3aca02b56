"""Records in flight, encrypted at rest with AES-256-GCM, streamed in chunks.

Each blob gets its own key, derived with HKDF-SHA256 from the configured master key
and a random salt in the blob's header, so nonces never repeat across blobs. The
plaintext is cut into 1 MiB chunks; chunk i is sealed with nonce = i (8 bytes) + a
last-chunk flag, and the header and the blob's key as associated data, so chunks cannot
be reordered, dropped, the blob truncated, or one blob's file put in another's place
(another patient's record read under this key) without `BlobCorrupted` on read (the streaming AEAD
construction of Hoang, Reyhanitabar, Rogaway and Vizár, as in Tink). A 2 GB record
never sits in memory: writers and readers hold one chunk.

Where the bytes live is a backend with the same few verbs (`create` -> write, commit,
abort; `open`; `delete`; `exists`): `blob_folder.FolderBackend` (a local folder or a
volume several hosts share) or `blob_s3.S3Backend` (an S3-compatible object store). The
encrypted format is the same on both, so a blob moves between them byte for byte.
"""
from __future__ import annotations

import base64
import hashlib
import secrets
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import BlobCorrupted, ConfigError, NotFound, StorageFull, no_space

from .blob_folder import FolderBackend

MAGIC = b"RGB2"  # v2: the blob key is bound into every chunk
SALT_LEN = 16
HEADER_LEN = len(MAGIC) + SALT_LEN
CHUNK = 1 << 20
TAG = 16


@dataclass(frozen=True)
class BlobInfo:
    key: str
    sha256: str  # of the plaintext
    size: int  # plaintext bytes


def load_master_key(value: str | None, path: Path) -> bytes:
    """The 32-byte master key from a base64 value, else from `path` (base64 text)."""
    text = value if value is not None else None
    if text is None:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            raise ConfigError(f"blob encryption key file {path} does not exist "
                              "(run `records-gateway init` or set GATEWAY_BLOB_KEY)") from None
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError:
        raise ConfigError("blob encryption key is not valid base64") from None
    if len(key) != 32:
        raise ConfigError(f"blob encryption key must be 32 bytes, got {len(key)}")
    return key


def new_master_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _nonce(index: int, last: bool) -> bytes:
    return struct.pack(">QI", index, 1 if last else 0)


def _valid_key(key: str) -> bool:
    return len(key) == 32 and all(c in "0123456789abcdef" for c in key)


class Sink(Protocol):
    def write(self, data) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class Backend(Protocol):
    """Where a blob's encrypted bytes live; keys reach it already validated."""

    def create(self, key: str) -> Sink: ...
    def open(self, key: str) -> BinaryIO: ...  # NotFound when there is no such blob
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...


def _read(fh: BinaryIO, n: int) -> bytes:
    """Exactly n bytes, fewer only at the end (a network body may return short reads)."""
    out = fh.read(n)
    while 0 < len(out) < n:
        more = fh.read(n - len(out))
        if not more:
            break
        out += more
    return out


class BlobStore:
    """Encrypts and decrypts blobs; `place` is a Backend, or a folder for FolderBackend."""

    def __init__(self, place: "Backend | Path", master_key: bytes):
        self.backend: Backend = place if hasattr(place, "create") else FolderBackend(Path(place))
        self._master = master_key

    def _derive(self, salt: bytes) -> AESGCM:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"records-gateway blob v1")
        return AESGCM(hkdf.derive(self._master))

    def _checked(self, key: str) -> str:
        if not _valid_key(key):  # never a path or an object name from outside
            raise NotFound(f"no blob {key!r}")
        return key

    # writing ---------------------------------------------------------------
    def writer(self) -> "BlobWriter":
        return BlobWriter(self)

    def put_stream(self, stream: BinaryIO) -> BlobInfo:
        with self.writer() as w:
            while block := stream.read(CHUNK):
                w.write(block)
        return w.info

    def put_file(self, path: Path) -> BlobInfo:
        with open(path, "rb") as fh:
            return self.put_stream(fh)

    def put_bytes(self, data: bytes) -> BlobInfo:
        with self.writer() as w:
            w.write(data)
        return w.info

    # reading ---------------------------------------------------------------
    def chunks(self, key: str) -> Iterator[bytes]:
        """Decrypted plaintext chunks; BlobCorrupted if anything was changed."""
        fh = self.backend.open(self._checked(key))
        with fh:
            header = _read(fh, HEADER_LEN)
            if len(header) != HEADER_LEN or not header.startswith(MAGIC):
                raise BlobCorrupted(f"blob {key} has a bad header")
            aead = self._derive(header[len(MAGIC):])
            bound = header + key.encode()
            index = 0
            raw_len = _read(fh, 4)
            while True:
                if len(raw_len) != 4:
                    raise BlobCorrupted(f"blob {key} is truncated")
                (length,) = struct.unpack(">I", raw_len)
                if length > CHUNK + TAG:
                    raise BlobCorrupted(f"blob {key} has an oversized chunk")
                sealed = _read(fh, length)
                raw_len = _read(fh, 4)  # the next chunk's length, or nothing after the last
                last = raw_len == b""
                try:
                    plain = aead.decrypt(_nonce(index, last), sealed, bound)
                except InvalidTag:
                    raise BlobCorrupted(f"blob {key} failed authentication at chunk {index}") from None
                yield plain
                if last:
                    return
                index += 1

    def open(self, key: str) -> "BlobReader":
        return BlobReader(self.chunks(key))

    def read_bytes(self, key: str) -> bytes:
        return b"".join(self.chunks(key))

    def copy_to(self, key: str, dest: Path) -> None:
        with open(dest, "wb") as out:
            for block in self.chunks(key):
                out.write(block)

    def delete(self, key: str) -> None:
        self.backend.delete(self._checked(key))

    def exists(self, key: str) -> bool:
        return _valid_key(key) and self.backend.exists(key)

    def remove_abandoned(self, older_than_s: float) -> int:
        """Delete what writers that died left half-written (a process killed mid-upload),
        untouched for `older_than_s`; no row can name it. Returns how many."""
        return self.backend.remove_abandoned(older_than_s)


def _full(exc: OSError) -> Exception:
    """A full disk becomes StorageFull (retried); any other OSError stays as it is."""
    if no_space(exc):
        return StorageFull("the blob store has no space left: free space in its folder "
                           "(data_dir/blobs); transfers resume by themselves")
    return exc


class BlobWriter:
    """Stream plaintext in with write(); `info` is set once the context exits cleanly."""

    def __init__(self, store: BlobStore):
        self.store = store
        self.key = uuid.uuid4().hex
        self._fh = store.backend.create(self.key)
        salt = secrets.token_bytes(SALT_LEN)
        self._header = MAGIC + salt
        self._fh.write(self._header)
        self._bound = self._header + self.key.encode()  # associated data of every chunk
        self._aead = store._derive(salt)
        self._buf = bytearray()
        self._index = 0
        self._sha = hashlib.sha256()
        self._size = 0
        self.info: BlobInfo | None = None

    def write(self, data: bytes) -> None:
        self._sha.update(data)
        self._size += len(data)
        self._buf += data
        while len(self._buf) > CHUNK:  # keep one chunk back: the last must be flagged
            with memoryview(self._buf) as view:
                try:
                    self._seal(view[:CHUNK], last=False)
                except OSError as exc:  # the caller's `with` aborts: the .part goes
                    raise _full(exc) from None
            del self._buf[:CHUNK]

    def _seal(self, plain, last: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._index, last), plain, self._bound)
        self._fh.write(struct.pack(">I", len(sealed)))
        self._fh.write(sealed)
        self._index += 1

    def close(self) -> BlobInfo:
        try:
            with memoryview(self._buf) as view:
                self._seal(view, last=True)
            self._buf.clear()
            self._fh.commit()  # the blob appears whole, or not at all
        except OSError as exc:  # never committed: no half blob is read
            self.abort()
            raise _full(exc) from None
        self.info = BlobInfo(self.key, self._sha.hexdigest(), self._size)
        return self.info

    def abort(self) -> None:
        self._fh.abort()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class BlobReader:
    """A read(n) file-like view over decrypted chunks (for uploads and parsers)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                break
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def __iter__(self):
        if self._buf:
            yield self._buf
            self._buf = b""
        yield from self._chunks
