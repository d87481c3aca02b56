"""DICOM instances straight into the encrypted blob store.

`gateway/engine/sources.py` plugs `BlobStoreSink` into every DICOM connector (`options["sink"]`,
see connectors/dicom/intake.py): each received instance streams from the socket (or the
WADO-RS response) into an encrypting blob writer, once; there is no plaintext spool file
and no second copy. The blob store's sha256 of the plaintext is the per-instance sha256.
The connector's record for such an instance names the blob (`metadata["location"]`, a
blob key); `adopt` lets the pull step keep that blob instead of storing the bytes again.
"""
from __future__ import annotations

import os

from connectors.base import RawRecord
from connectors.dicom.intake import Stored
from gateway.storage.blobstore import BlobInfo, BlobStore, _valid_key


class BlobStoreSink:
    hashes = True  # BlobStore hashes what it stores: the intake need not read files again

    def __init__(self, store: BlobStore):
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


def adopt(store: BlobStore, record: RawRecord) -> BlobInfo | None:
    """The blob a DICOM instance record was received into, or None when the record is a
    plain file (another sink). The sha256 and size are the sink's, measured on the way in."""
    key = str(record.metadata.get("location", ""))
    if record.kind != "dicom" or not _valid_key(key) or not store.exists(key):
        return None
    return BlobInfo(key, record.sha256, record.size)
