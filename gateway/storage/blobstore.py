"""Records in flight, encrypted at rest with AES-256-GCM, streamed in chunks.

Each blob gets its own key, derived with HKDF-SHA256 from the configured master key
and a random salt in the blob's header, so nonces never repeat across blobs. The
plaintext is cut into 1 MiB chunks; chunk i is sealed with nonce = i (8 bytes) + a
last-chunk flag, and the header and the blob's key as associated data, so chunks cannot
be reordered, dropped, the blob truncated, or one blob's file put in another's place
(another patient's record read under this key) without `BlobCorrupted` on read (the streaming AEAD
construction of Hoang, Reyhanitabar, Rogaway and Vizár, as in Tink). A 2 GB record
never sits in memory: writers and readers hold one chunk.

Blobs live in 16 folders by the first hex digit of their key, each made by the first
blob that needs it. Making a folder costs more than writing a blob's data (on a busy
ext4 file system, 1-2 ms of CPU), so a young store should make few: two levels of 256
made one or two per blob until the tree filled up. ext4 folders stay fast with millions
of entries. A blob is written as `<key>.part` in its own folder and renamed when
complete: writers in parallel then seldom wait on one folder's lock (creating a file
holds it, and takes about as long as making a folder).
"""
from __future__ import annotations

import base64
import hashlib
import os
import secrets
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import BlobCorrupted, ConfigError, NotFound, StorageFull, no_space

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


def _private_file(path: str):
    """A new file readable by this user only (0600), open for writing."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def _valid_key(key: str) -> bool:
    return len(key) == 32 and all(c in "0123456789abcdef" for c in key)


class BlobStore:
    def __init__(self, root: Path, master_key: bytes):
        self.root = Path(root)
        self._master = master_key
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _derive(self, salt: bytes) -> AESGCM:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"records-gateway blob v1")
        return AESGCM(hkdf.derive(self._master))

    def path(self, key: str) -> Path:
        if not _valid_key(key):
            raise NotFound(f"no blob {key!r}")
        return self.root / key[:1] / key

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
        path = self.path(key)
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise NotFound(f"no blob {key}") from None
        with fh:
            header = fh.read(HEADER_LEN)
            if len(header) != HEADER_LEN or not header.startswith(MAGIC):
                raise BlobCorrupted(f"blob {key} has a bad header")
            aead = self._derive(header[len(MAGIC):])
            bound = header + key.encode()
            index = 0
            while True:
                raw_len = fh.read(4)
                if len(raw_len) != 4:
                    raise BlobCorrupted(f"blob {key} is truncated")
                (length,) = struct.unpack(">I", raw_len)
                if length > CHUNK + TAG:
                    raise BlobCorrupted(f"blob {key} has an oversized chunk")
                sealed = fh.read(length)
                last = fh.peek(1) == b"" if hasattr(fh, "peek") else False
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
        self.path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def remove_abandoned(self, older_than_s: float) -> int:
        """Delete `.part` files untouched for `older_than_s`: blobs whose writer died (a
        process killed mid-upload) and that no row can name. A live writer touches its
        file with every chunk. Returns how many."""
        import time

        cutoff, removed = time.time() - older_than_s, 0
        for folder in self.root.iterdir() if self.root.is_dir() else ():
            for part in folder.glob("*.part") if folder.is_dir() else ():
                try:
                    if part.stat().st_mtime <= cutoff:
                        part.unlink()
                        removed += 1
                except FileNotFoundError:  # finished or removed meanwhile
                    pass
        return removed


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
        self._final = os.path.join(store.root, self.key[:1], self.key)  # str: no pathlib
        self._tmp = self._final + ".part"  # per blob; writers write hundreds a second
        try:
            self._fh = _private_file(self._tmp)
        except FileNotFoundError:  # the first blob in its folder
            os.makedirs(os.path.dirname(self._tmp), mode=0o700, exist_ok=True)
            self._fh = _private_file(self._tmp)
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
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        except OSError as exc:  # the blob never gets its final name: no half blob is read
            self.abort()
            raise _full(exc) from None
        os.replace(self._tmp, self._final)
        self.info = BlobInfo(self.key, self._sha.hexdigest(), self._size)
        return self.info

    def abort(self) -> None:
        try:
            self._fh.close()  # flushing what is buffered may fail on a full disk: closed anyway
        except OSError:
            pass
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

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
