"""The encrypted blob store on both places blobs live: a folder (a volume several hosts may
share) and an S3-compatible object store (a real S3 HTTP server process, moto's). Same
format on both: round trip, encryption at rest, tampering, swapped blobs, wrong key,
hostile keys; multipart uploads streamed as the ciphertext is made, with bounded memory;
DICOM instances adopted from the store; a whole transfer whose sender keeps blobs in S3."""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tracemalloc
from pathlib import Path

import pytest
from pydantic import ValidationError

from connectors.base import RawRecord
from gateway.config import S3StoreConfig, load_settings
from gateway.engine.dicom_sink import BlobStoreSink, adopt
from gateway.errors import BlobCorrupted, NotFound
from gateway.runtime.services import blob_backend
from gateway.storage.blob_folder import FolderBackend
from gateway.storage.blob_s3 import S3Backend
from gateway.storage.blobstore import CHUNK, HEADER_LEN, BlobStore

from tests import s3_server
from tests.test_transfer_flow import TERMINAL, Stack, binaries
from tests.helpers import write_pdfs

PART = 5 * 1024 * 1024  # S3's smallest part: small enough for tests to make several


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = s3_server.start(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    s3_server.stop(server)


class Raw:
    """The stored (encrypted) bytes of a blob, read and written behind the store's back."""

    def __init__(self, store: BlobStore, s3=None, bucket: str = ""):
        self.store, self.s3, self.bucket = store, s3, bucket

    def get(self, key: str) -> bytes:
        if self.s3 is None:
            return self.store.backend.path(key).read_bytes()
        return self.s3.get_object(Bucket=self.bucket, Key=self.store.backend.name(key))["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        if self.s3 is None:
            self.store.backend.path(key).write_bytes(data)
        else:
            self.s3.put_object(Bucket=self.bucket, Key=self.store.backend.name(key), Body=data)

    def names(self) -> list[str]:
        """Every stored object or file, partial or not."""
        if self.s3 is None:
            return sorted(p.name for p in self.store.backend.root.rglob("*") if p.is_file())
        listed = self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        uploads = self.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return sorted([o["Key"] for o in listed] + [u["Key"] + " (partial)" for u in uploads])


def _s3_backend(s3, bucket: str, secrets: Path, prefix: str = "gw/") -> S3Backend:
    conf = s3.store_config(bucket, secrets, prefix=prefix)
    conf.pop("kind")
    return S3Backend(part_size=PART, **conf)


@pytest.fixture(params=["folder", "s3"])
def place(request, tmp_path):
    """A function making a (store, raw view) pair over one shared place, per master key."""
    if request.param == "folder":
        root = tmp_path / "blobs"
        return lambda key: (lambda st: (st, Raw(st)))(BlobStore(FolderBackend(root), key))
    s3 = request.getfixturevalue("s3")
    bucket = s3.new_bucket()
    backend = _s3_backend(s3, bucket, tmp_path)
    return lambda key: (lambda st: (st, Raw(st, s3.client(), bucket)))(BlobStore(backend, key))


@pytest.fixture
def store_raw(place):
    return place(os.urandom(32))


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
def test_round_trip_and_hash(store_raw, size):
    store, _ = store_raw
    data = os.urandom(size)
    info = store.put_bytes(data)
    assert info.size == size
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert store.read_bytes(info.key) == data
    assert store.open(info.key).read(7) == data[:7]
    assert store.exists(info.key)
    store.delete(info.key)
    assert not store.exists(info.key)
    with pytest.raises(NotFound):
        store.read_bytes(info.key)


def test_file_in_and_out(store_raw, tmp_path):
    store, _ = store_raw
    src, dest = tmp_path / "in.bin", tmp_path / "out.bin"
    src.write_bytes(os.urandom(2 * CHUNK + 99))
    info = store.put_file(src)
    store.copy_to(info.key, dest)
    assert dest.read_bytes() == src.read_bytes()
    assert info.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()


def test_another_host_reads_what_one_wrote(place):
    """Two gateways (hosts) on one place and one master key see each other's blobs."""
    key = os.urandom(32)
    (a, _), (b, _) = place(key), place(key)
    info = a.put_bytes(b"written on host A" * 1000)
    assert b.exists(info.key)
    assert b.read_bytes(info.key) == b"written on host A" * 1000


def test_stored_bytes_are_encrypted(store_raw):
    store, raw = store_raw
    data = b"PATIENT-NAME " * 1000
    info = store.put_bytes(data)
    stored = raw.get(info.key)
    assert b"PATIENT-NAME" not in stored
    assert len(stored) > len(data)  # header, lengths and tags


def _chunk_offsets(raw: bytes) -> list[int]:
    offsets, pos = [], HEADER_LEN
    while pos < len(raw):
        offsets.append(pos)
        (n,) = struct.unpack(">I", raw[pos:pos + 4])
        pos += 4 + n
    return offsets


@pytest.mark.parametrize("change", ["flip", "truncate_chunk", "drop_last_chunk", "swap_chunks",
                                    "header", "appended"])
def test_tampering_is_detected(store_raw, change):
    store, raw = store_raw
    info = store.put_bytes(os.urandom(2 * CHUNK + 5))
    stored = bytearray(raw.get(info.key))
    offs = _chunk_offsets(bytes(stored))
    if change == "flip":
        stored[offs[1] + 100] ^= 1
    elif change == "truncate_chunk":
        stored = stored[:-10]
    elif change == "drop_last_chunk":
        stored = stored[:offs[-1]]
    elif change == "swap_chunks":
        a, b = bytes(stored[offs[0]:offs[1]]), bytes(stored[offs[1]:offs[2]])
        stored[offs[0]:offs[2]] = b + a
    elif change == "header":
        stored[6] ^= 1
    elif change == "appended":
        stored += stored[offs[0]:offs[1]]
    raw.put(info.key, bytes(stored))
    with pytest.raises(BlobCorrupted):
        store.read_bytes(info.key)


def test_a_blob_put_in_another_blobs_place_is_refused(store_raw):
    """Two whole, valid blobs swapped where they are stored: each key must still read only
    its own record (the key is bound into the encryption), never the other's."""
    store, raw = store_raw
    first, second = store.put_bytes(b"record of patient A"), store.put_bytes(b"record of patient B")
    a, b = raw.get(first.key), raw.get(second.key)
    raw.put(first.key, b)
    raw.put(second.key, a)
    for key in (first.key, second.key):
        with pytest.raises(BlobCorrupted):
            store.read_bytes(key)


def test_wrong_key_fails_authentication(place):
    a, _ = place(os.urandom(32))
    info = a.put_bytes(b"x" * 100)
    b, _ = place(os.urandom(32))
    with pytest.raises(BlobCorrupted):
        b.read_bytes(info.key)


def test_hostile_keys_are_never_names(store_raw):
    store, raw = store_raw
    kept = store.put_bytes(b"kept").key
    before = raw.names()
    for key in ["../../etc/passwd", "", "A" * 32, "0" * 31, "/abs", "../" + kept[3:], kept + "/x"]:
        with pytest.raises(NotFound):
            store.read_bytes(key)
        with pytest.raises(NotFound):
            store.delete(key)
        assert store.exists(key) is False
    assert raw.names() == before and store.read_bytes(kept) == b"kept"


def test_no_partial_blob_is_ever_visible(store_raw):
    store, raw = store_raw
    kept = store.put_bytes(b"done").key
    aborted = store.writer()
    aborted.write(os.urandom(PART + 3 * CHUNK))  # past one part: a multipart upload began
    assert not store.exists(aborted.key)
    aborted.abort()
    with pytest.raises(RuntimeError), store.writer() as failed:
        failed.write(b"half a record")
        raise RuntimeError("writer died")
    assert not store.exists(failed.key) and not store.exists(aborted.key)
    assert [n.rsplit("/", 1)[-1] for n in raw.names()] == [kept]


def test_multipart_upload_is_streamed_part_by_part(s3, tmp_path):
    bucket = s3.new_bucket()
    store = BlobStore(_s3_backend(s3, bucket, tmp_path), os.urandom(32))
    client, size = s3.client(), 3 * PART + CHUNK // 2
    digest = hashlib.sha256()
    with store.writer() as w:
        name = store.backend.name(w.key)
        for _ in range(2 * PART // CHUNK + 1):  # a little over two parts of plaintext
            block = os.urandom(CHUNK)
            digest.update(block)
            w.write(block)
        # parts went up while the blob is still being written; the object is not there yet
        [upload] = client.list_multipart_uploads(Bucket=bucket)["Uploads"]
        parts = client.list_parts(Bucket=bucket, Key=name, UploadId=upload["UploadId"])["Parts"]
        assert upload["Key"] == name and len(parts) == 2
        assert all(p["Size"] == PART for p in parts)
        assert not store.exists(w.key)
        rest = os.urandom(size - (2 * PART // CHUNK + 1) * CHUNK)
        digest.update(rest)
        w.write(rest)
    assert w.info.sha256 == digest.hexdigest() and w.info.size == size
    head = client.head_object(Bucket=bucket, Key=name, PartNumber=1)
    stored = client.head_object(Bucket=bucket, Key=name)["ContentLength"]
    assert head["PartsCount"] == -(-stored // PART) == 4
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert hashlib.sha256(store.read_bytes(w.key)).hexdigest() == digest.hexdigest()
    small = store.put_bytes(b"one request")  # under one part: a plain PutObject
    assert "PartsCount" not in client.head_object(Bucket=bucket, Key=store.backend.name(small.key),
                                                  PartNumber=1)


def test_a_64_mib_blob_goes_up_and_down_in_bounded_memory(s3, tmp_path):
    store = BlobStore(_s3_backend(s3, s3.new_bucket(), tmp_path), os.urandom(32))
    block, size = os.urandom(CHUNK), 64 * CHUNK
    store.put_bytes(b"warm")  # the process's S3 client (service models) is made once, first
    tracemalloc.start()
    try:
        with store.writer() as w:
            for _ in range(64):
                w.write(block)
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest, got = hashlib.sha256(), 0
        for chunk in store.chunks(w.key):
            digest.update(chunk)
            got += len(chunk)
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert w.info.size == got == size
    assert digest.hexdigest() == w.info.sha256 == hashlib.sha256(block * 64).hexdigest()
    # a part being sent and the next filling, a chunk or two: never the blob (64 MiB)
    assert put_peak < 4 * PART, put_peak
    assert get_peak < 4 * CHUNK, get_peak


def test_dicom_instances_stream_into_s3_and_are_adopted(s3, tmp_path):
    store = BlobStore(_s3_backend(s3, s3.new_bucket(), tmp_path), os.urandom(32))
    sink = BlobStoreSink(store)
    data = b"DICM" + os.urandom(PART + 1000)
    stream = sink.open("transfer", {})
    for at in range(0, len(data), 65536):
        stream.write(data[at:at + 65536])
    stored = stream.commit()
    record = RawRecord(source="pacs", kind="dicom", media_type="application/dicom",
                       path=tmp_path / "unused", sha256=stored.sha256, size=stored.size,
                       origin="1.2.3.4", metadata={"location": stored.location})
    info = adopt(store, record)
    assert info is not None and info.key == stored.location
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert store.read_bytes(info.key) == data
    gone = RawRecord(**{**record.__dict__, "metadata": {"location": "0" * 32}})
    assert adopt(store, gone) is None


def test_blob_store_settings(tmp_path, monkeypatch):
    keys = tmp_path / "k"
    keys.mkdir()
    (keys / "a").write_text("AK\n")
    (keys / "s").write_text("SK\n")
    monkeypatch.setenv("GATEWAY_BLOB_STORE__KIND", "s3")
    monkeypatch.setenv("GATEWAY_BLOB_STORE__BUCKET", "records")
    monkeypatch.setenv("GATEWAY_BLOB_STORE__ENDPOINT_URL", "https://objects.example.org")
    monkeypatch.setenv("GATEWAY_BLOB_STORE__ACCESS_KEY_FILE", str(keys / "a"))
    monkeypatch.setenv("GATEWAY_BLOB_STORE__SECRET_KEY_FILE", str(keys / "s"))
    settings = load_settings({"data_dir": str(tmp_path / "d")})
    backend = blob_backend(settings)
    assert isinstance(backend, S3Backend) and backend.bucket == "records"
    assert backend._options["aws_access_key_id"] == "AK"  # from the file, stripped
    assert backend._options["aws_secret_access_key"] == "SK"
    for env in ("KIND", "BUCKET", "ENDPOINT_URL", "ACCESS_KEY_FILE", "SECRET_KEY_FILE"):
        monkeypatch.delenv(f"GATEWAY_BLOB_STORE__{env}")
    shared = load_settings({"data_dir": str(tmp_path / "d"),
                            "blob_store": {"kind": "folder", "path": str(tmp_path / "shared")}})
    assert blob_backend(shared).root == tmp_path / "shared"
    with pytest.raises(ValidationError, match="plain HTTP"):
        S3StoreConfig(kind="s3", bucket="records", endpoint_url="http://objects.example.org")
    with pytest.raises(ValidationError, match="go together"):
        S3StoreConfig(kind="s3", bucket="records", access_key_file=keys / "a")
    with pytest.raises(ValidationError, match="part_size"):
        S3StoreConfig(kind="s3", bucket="records", part_size=1024)


@pytest.fixture
def sender_config(sender_config, s3, tmp_path):
    """The sending gateway keeps its blobs in S3 (the test config of tests/conftest.py)."""
    bucket = s3.new_bucket()
    sender_config["blob_store"] = s3.store_config(bucket, tmp_path / "s3-keys", prefix="sender/",
                                                  part_size=PART)
    return sender_config


@pytest.fixture
def stack(app, client, operator, processes, sender_config, receiver_config, tmp_path):
    return Stack(app, client, operator, processes, sender_config, receiver_config, tmp_path)


def test_a_whole_transfer_with_the_senders_blobs_in_s3(stack, s3, sender_config, claims_for, sign,
                                                       drop_dir):
    stack.start_receiver()
    tid = stack.transfer(stack.authorize(claims_for(), sign))
    sent = write_pdfs(drop_dir / tid, count=3)
    view = stack.wait_state(tid, TERMINAL)
    assert view["state"] == "completed", view["reason"]
    [received] = stack.inbox()
    assert received["sha256"] == view["bundle"]["sha256"]
    assert binaries(stack.received_bundle(received["id"])) == set(sent)
    # the worker process kept every blob in the bucket, encrypted; none in its data folder
    client, bucket = s3.client(), sender_config["blob_store"]["bucket"]
    names = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert names and all(n.startswith("sender/") for n in names)
    pdfs = [p.read_bytes() for p in (drop_dir / tid).iterdir()]
    for name in names:
        stored = client.get_object(Bucket=bucket, Key=name)["Body"].read()
        assert not any(pdf[:64] in stored or pdf[-64:] in stored for pdf in pdfs)
        assert b"resourceType" not in stored
    folder = Path(sender_config["data_dir"]) / "blobs"
    assert not folder.exists() or not [p for p in folder.rglob("*") if p.is_file()]
    assert json.loads(stack.worker.config_file.read_text())["blob_store"]["kind"] == "s3"


def test_an_unreachable_object_store_is_a_transient_error(tmp_path):
    from gateway.errors import BlobStoreUnavailable
    from tests.helpers import free_port

    conf = {**s3_server.S3Server("", None).store_config("records", tmp_path),
            "endpoint_url": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    conf.pop("kind")
    backend = S3Backend(part_size=PART, **conf)
    store = BlobStore(backend, os.urandom(32))
    with pytest.raises(BlobStoreUnavailable, match="endpoint_url") as caught:
        store.put_bytes(b"record")
    assert caught.value.transient
    with pytest.raises(BlobStoreUnavailable):
        store.read_bytes("0" * 32)
