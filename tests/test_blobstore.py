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


def test_half_written_blobs_of_a_killed_writer_are_removed(store):
    """A process killed while writing leaves `<key>.part`; the sweep removes it once it has
    been untouched long enough, and never a live writer's file or a finished blob."""
    kept = store.put_bytes(b"finished").key
    dead = store.writer()
    dead.write(b"x" * (CHUNK + 10))  # one chunk sealed, then the process died
    dead._fh._fh.flush()
    old = os.path.getmtime(dead._fh._tmp) - 7200
    os.utime(dead._fh._tmp, (old, old))
    live = store.writer()
    live.write(b"still coming")
    assert store.remove_abandoned(3600) == 1
    assert not os.path.exists(dead._fh._tmp) and os.path.exists(live._fh._tmp)
    assert store.read_bytes(kept) == b"finished"
    live_key = live.close().key
    assert store.read_bytes(live_key) == b"still coming"
    assert store.remove_abandoned(0) == 0
    assert sorted(p.name for p in store.backend.root.rglob("*") if p.is_file()) == sorted([kept, live_key])
