"""The folder place of the blob store, and its keys; the format on every place is tested
in tests/test_blobstore_s3.py (folder and S3 alike)."""
import hashlib
import os

import pytest

from gateway.storage.blobstore import CHUNK, BlobStore, load_master_key, new_master_key
from gateway.errors import ConfigError


@pytest.fixture
def store(tmp_path):
    return BlobStore(tmp_path / "blobs", os.urandom(32))


def test_streamed_write_holds_one_chunk(store):
    digest = hashlib.sha256()
    with store.writer() as w:
        for _ in range(5):
            block = os.urandom(CHUNK // 2 + 3)
            digest.update(block)
            w.write(block)
            assert len(w._buf) <= CHUNK
    assert w.info.sha256 == digest.hexdigest()


def test_master_key_loading(tmp_path):
    good = new_master_key()
    assert len(load_master_key(good, tmp_path / "unused")) == 32
    (tmp_path / "k").write_text(good + "\n")
    assert load_master_key(None, tmp_path / "k") == load_master_key(good, tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_master_key(None, tmp_path / "missing")
    with pytest.raises(ConfigError, match="32 bytes"):
        load_master_key("AAAA", tmp_path)
    with pytest.raises(ConfigError, match="base64"):
        load_master_key("not base64!", tmp_path)


def test_blobs_in_sixteen_folders_and_no_partial_files_left(store):
    keys = [store.put_bytes(os.urandom(100)).key for _ in range(40)]
    aborted = store.writer()
    aborted.write(b"never committed")
    aborted.abort()
    files = [p for p in store.backend.root.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == sorted(keys)
    assert all(p.parent.name == p.name[0] and p.parent.parent == store.backend.root for p in files)
    assert len({p.parent for p in files}) <= 16
