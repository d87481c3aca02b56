"""Where encrypted blobs live on a file system: a local folder or a shared volume.

Blobs live in 16 folders by the first hex digit of their key, each made by the first
blob that needs it. Making a folder costs more than writing a blob's data (on a busy
ext4 file system, 1-2 ms of CPU), so a young store should make few: two levels of 256
made one or two per blob until the tree filled up. ext4 folders stay fast with millions
of entries. A blob is written as `<key>.part` in its own folder and renamed when
complete: writers in parallel then seldom wait on one folder's lock (creating a file
holds it, and takes about as long as making a folder), and no reader, on this host or
another, ever sees a partial blob.

On a shared volume (several hosts mounting one folder): the rename is atomic on NFSv3/v4
within one export, and the data is fsynced before it, so a blob another host finds is
complete. NFS clients cache attributes: a blob written on host A may show as missing on
host B for up to `actimeo` seconds (mount with `lookupcache=positive` or a short
`actimeo` where workers hand blobs to each other at once). Blob keys are random, so two
hosts never write one name; no file locks are used (NFS locking is the fragile part).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import BinaryIO

from gateway.errors import NotFound


def _private_file(path: str):
    """A new file readable by this user only (0600), open for writing."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


class FolderBackend:
    """Blob bytes as files under `root` (made 0700; files 0600)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def __str__(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        return self.root / key[:1] / key

    def create(self, key: str) -> "_FolderSink":
        return _FolderSink(os.path.join(self.root, key[:1], key))  # str: no pathlib

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except FileNotFoundError:
            raise NotFound(f"no blob {key}") from None

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def remove_abandoned(self, older_than_s: float) -> int:
        """Delete `.part` files untouched for `older_than_s`: a live writer touches its
        file with every chunk."""
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


class _FolderSink:
    """A blob's bytes going into `<key>.part`, renamed into place on commit."""

    def __init__(self, final: str):
        self._final = final
        self._tmp = final + ".part"  # per blob; writers write hundreds a second
        try:
            self._fh = _private_file(self._tmp)
        except FileNotFoundError:  # the first blob in its folder
            os.makedirs(os.path.dirname(self._tmp), mode=0o700, exist_ok=True)
            self._fh = _private_file(self._tmp)

    def write(self, data) -> None:
        self._fh.write(data)

    def commit(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self._final)

    def abort(self) -> None:
        try:
            self._fh.close()  # flushing what is buffered may fail on a full disk: closed anyway
        except OSError:
            pass
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass
