"""A sink that stores received instances in the gateway's encrypted blob store, the way
the gateway plugs it into the DICOM connector (`options["sink"]`): streaming (no plaintext
spool file), the blob store's sha256 of the plaintext as the per-instance sha256.

Used by the tests and by bench/dicom_retrieve.py; a candidate for gateway/ to adopt.
"""
from __future__ import annotations

import os

from connectors.dicom.intake import Stored


class BlobStoreSink:
    hashes = True  # BlobStore hashes what it stores: the intake need not read files again

    def __init__(self, store):
        self.store = store

    def __call__(self, transfer_key, tmp_path, sha256, size, meta) -> Stored:
        """A received file (when not streamed): encrypt it in, drop the plaintext."""
        info = self.store.put_file(tmp_path)
        os.unlink(tmp_path)
        return Stored(info.key, info.sha256, info.size)

    def open(self, transfer_key, meta) -> "_Stream":
        return _Stream(self.store.writer())


class _Stream:
    def __init__(self, writer):
        self.writer = writer

    def write(self, data) -> None:
        self.writer.write(data)

    def commit(self) -> Stored:
        info = self.writer.close()  # seals the last chunk, fsyncs, renames into place
        return Stored(info.key, info.sha256, info.size)

    def abort(self) -> None:
        self.writer.abort()
