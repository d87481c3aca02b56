import hashlib
import os
import struct

import pytest

from gateway.storage.blobstore import (CHUNK, HEADER_LEN, BlobStore, load_master_key,
                                       new_master_key)
from gateway.errors import BlobCorrupted, ConfigError, NotFound


@pytest.fixture
def store(tmp_path):
    return BlobStore(tmp_path / "blobs", os.urandom(32))


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
def test_round_trip_and_hash(store, size):
    data = os.urandom(size)
    info = store.put_bytes(data)
    assert info.size == size
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert store.read_bytes(info.key) == data
    assert store.open(info.key).read(7) == data[:7]


def test_stored_bytes_are_encrypted(store):
    data = b"PATIENT-NAME " * 1000
    info = store.put_bytes(data)
    raw = store.path(info.key).read_bytes()
    assert b"PATIENT-NAME" not in raw
    assert len(raw) > len(data)  # header, lengths and tags


def test_streamed_write_holds_one_chunk(store):
    digest = hashlib.sha256()
    with store.writer() as w:
        for _ in range(5):
            block = os.urandom(CHUNK // 2 + 3)
            digest.update(block)
            w.write(block)
            assert len(w._buf) <= CHUNK
    assert w.info.sha256 == digest.hexdigest()


def _chunk_offsets(raw: bytes) -> list[int]:
    offsets, pos = [], HEADER_LEN
    while pos < len(raw):
        offsets.append(pos)
        (n,) = struct.unpack(">I", raw[pos:pos + 4])
        pos += 4 + n
    return offsets


def test_tampering_is_detected(store):
    data = os.urandom(2 * CHUNK + 5)
    cases = {}
    for name in ("flip", "truncate_chunk", "drop_last_chunk", "swap_chunks", "header"):
        info = store.put_bytes(data)
        path = store.path(info.key)
        raw = bytearray(path.read_bytes())
        offs = _chunk_offsets(bytes(raw))
        if name == "flip":
            raw[offs[1] + 100] ^= 1
        elif name == "truncate_chunk":
            raw = raw[:-10]
        elif name == "drop_last_chunk":
            raw = raw[:offs[-1]]
        elif name == "swap_chunks":
            a, b = bytes(raw[offs[0]:offs[1]]), bytes(raw[offs[1]:offs[2]])
            raw[offs[0]:offs[2]] = b + a
        elif name == "header":
            raw[6] ^= 1
        path.write_bytes(bytes(raw))
        with pytest.raises(BlobCorrupted):
            store.read_bytes(info.key)
        cases[name] = True
    assert len(cases) == 5


def test_a_blob_put_in_another_blobs_place_is_refused(store):
    """Two whole, valid blob files swapped on disk: each key must still read only its
    own record (the key is bound into the encryption), never the other's."""
    first, second = store.put_bytes(b"record of patient A"), store.put_bytes(b"record of patient B")
    a, b = store.path(first.key).read_bytes(), store.path(second.key).read_bytes()
    store.path(first.key).write_bytes(b)
    store.path(second.key).write_bytes(a)
    for key in (first.key, second.key):
        with pytest.raises(BlobCorrupted):
            store.read_bytes(key)


def test_wrong_key_fails_authentication(tmp_path):
    a = BlobStore(tmp_path / "b", os.urandom(32))
    info = a.put_bytes(b"x" * 100)
    b = BlobStore(tmp_path / "b", os.urandom(32))
    with pytest.raises(BlobCorrupted):
        b.read_bytes(info.key)


def test_hostile_keys_are_not_paths(store):
    for key in ["../../etc/passwd", "", "A" * 32, "0" * 31, "/abs"]:
        with pytest.raises(NotFound):
            store.read_bytes(key)


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
    files = [p for p in store.root.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == sorted(keys)
    assert all(p.parent.name == p.name[0] and p.parent.parent == store.root for p in files)
    assert len({p.parent for p in files}) <= 16


def test_half_written_blobs_of_a_killed_writer_are_removed(store):
    """A process killed while writing leaves `<key>.part`; the sweep removes it once it has
    been untouched long enough, and never a live writer's file or a finished blob."""
    kept = store.put_bytes(b"finished").key
    dead = store.writer()
    dead.write(b"x" * (CHUNK + 10))  # one chunk sealed, then the process died
    dead._fh.flush()
    old = os.path.getmtime(dead._tmp) - 7200
    os.utime(dead._tmp, (old, old))
    live = store.writer()
    live.write(b"still coming")
    assert store.remove_abandoned(3600) == 1
    assert not os.path.exists(dead._tmp) and os.path.exists(live._tmp)
    assert store.read_bytes(kept) == b"finished"
    live_key = live.close().key
    assert store.read_bytes(live_key) == b"still coming"
    assert store.remove_abandoned(0) == 0
    assert sorted(p.name for p in store.root.rglob("*") if p.is_file()) == sorted([kept, live_key])
