"""A full disk under the blob store (a real tmpfs of 1 MB, tests/faults/servers.py):
the write fails with StorageFull (transient, so the step is retried), no `.part` file
or half blob is left behind, and once there is room the same write succeeds."""
from __future__ import annotations

import hashlib
import os

import pytest

from gateway.errors import StorageFull
from gateway.storage.blobstore import BlobStore
from tests.faults.servers import SizeLimitedFolder


@pytest.mark.parametrize("size", [300_000, 3_000_000])  # fails in a chunk's write, or at close
def test_a_full_blob_store_raises_storage_full_and_leaves_nothing(tmp_path, size):
    with SizeLimitedFolder(tmp_path / "blobs", size_mb=1) as folder:
        store = BlobStore(folder.path, os.urandom(32))
        folder.fill(leave_bytes=150_000)
        data = os.urandom(size)
        with pytest.raises(StorageFull) as raised:
            store.put_bytes(data)
        assert raised.value.transient and raised.value.http_status == 507
        assert "no space left" in str(raised.value)
        left = [p.name for p in folder.path.rglob("*") if p.is_file() and p.name != ".filler"]
        assert left == []  # neither the .part nor a final blob
        folder.make_room()
        if size < folder.free_bytes():
            info = store.put_bytes(data)
            assert info.sha256 == hashlib.sha256(data).hexdigest()
            assert store.read_bytes(info.key) == data
