"""Where encrypted blobs live in an S3-compatible object store (AWS S3, MinIO, Ceph RGW).

The bytes are the same as in a folder: `BlobStore` encrypts before anything leaves the
process, so the object store only ever holds ciphertext. A blob goes up as it is sealed:
ciphertext is buffered to one part (`part_size`, at least S3's 5 MiB minimum) and sent
with UploadPart, so a 2 GB record never sits in memory; a blob smaller than one part
goes up in one PutObject. An object is visible only once complete (CompleteMultipartUpload
is atomic), so readers on other hosts never see a partial blob; an aborted write aborts
its multipart upload; those of writers killed mid-blob are aborted by the hourly sweep
(`remove_abandoned`), or by a bucket lifecycle rule for incomplete uploads. Reads stream the object's body.

Credentials come from files (`access_key_file`, `secret_key_file`), never from the
settings text; a client is made per process (Celery forks its workers).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from gateway.errors import BlobStoreUnavailable, ConfigError, NotFound

MIN_PART = 5 * 1024 * 1024  # S3's smallest part other than the last


def _secret(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError:
        raise ConfigError(f"blob_store {what} {path} cannot be read") from None


class S3Backend:
    """Blob bytes as objects `<prefix><key>` in one bucket."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None, access_key_file: Path | None = None,
                 secret_key_file: Path | None = None, ca_file: Path | None = None,
                 part_size: int = 8 * 1024 * 1024):
        if part_size < MIN_PART:
            raise ConfigError(f"blob_store part_size must be at least {MIN_PART} bytes (S3's minimum)")
        self.bucket, self.prefix, self.part_size = bucket, prefix, part_size
        self._options = dict(endpoint_url=endpoint_url, region_name=region,
                             aws_access_key_id=_secret(access_key_file, "access_key_file"),
                             aws_secret_access_key=_secret(secret_key_file, "secret_key_file"),
                             verify=str(ca_file) if ca_file else None)
        self._client = None
        self._pid = 0

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def client(self):
        """This process's S3 client (made after a fork: clients do not cross processes)."""
        if self._client is None or self._pid != os.getpid():
            import boto3
            from botocore.config import Config
            # few quick retries here: an outage is the step's to retry, with its backoff
            config = Config(signature_version="s3v4", retries={"max_attempts": 3, "mode": "standard"},
                            s3={"addressing_style": "path"})
            self._client = boto3.session.Session().client("s3", config=config, **self._options)
            self._pid = os.getpid()
        return self._client

    def name(self, key: str) -> str:
        return self.prefix + key

    def create(self, key: str) -> "_S3Sink":
        return _S3Sink(self, self.name(key))

    def open(self, key: str) -> BinaryIO:
        with _errors(key):
            return self.client.get_object(Bucket=self.bucket, Key=self.name(key))["Body"]

    def delete(self, key: str) -> None:
        with _errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self.name(key))

    def exists(self, key: str) -> bool:
        try:
            with _errors(key):
                self.client.head_object(Bucket=self.bucket, Key=self.name(key))
        except NotFound:
            return False
        return True

    def remove_abandoned(self, older_than_s: float) -> int:
        """Abort multipart uploads begun over `older_than_s` ago under our prefix: writers
        that died mid-blob (their parts cost storage until aborted). Returns how many."""
        from datetime import datetime, timedelta, timezone

        cutoff, removed = datetime.now(timezone.utc) - timedelta(seconds=older_than_s), 0
        with _errors("(incomplete uploads)"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for upload in page.get("Uploads") or []:
                    if upload["Initiated"] <= cutoff:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])
                        removed += 1
        return removed


class _errors:
    """botocore's errors as ours: a missing object is NotFound, the rest is an outage."""

    def __init__(self, key: str):
        self.key = key

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, (NotFound, BlobStoreUnavailable)):
            return False
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
        if isinstance(exc, NoCredentialsError):
            raise ConfigError("blob_store has no credentials: set access_key_file and "
                              "secret_key_file (or give the host an instance role)") from None
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"no blob {self.key}") from None
            raise BlobStoreUnavailable(f"the object store refused blob {self.key} ({code}): "
                                       "check the bucket, its permissions and the credentials") from None
        if isinstance(exc, BotoCoreError):
            raise BlobStoreUnavailable(f"the object store is unreachable ({type(exc).__name__}): "
                                       "check blob_store.endpoint_url and the network") from None
        return False


class _S3Sink:
    """A blob's ciphertext going up: one buffered part at a time, completed on commit.

    The buffer grows to one part, then is refilled in place: deleting sent bytes from the
    front of a bytearray and appending makes CPython copy it whole, twice the memory."""

    def __init__(self, backend: S3Backend, name: str):
        self._b, self._name = backend, name
        self._buf = bytearray()
        self._used = 0
        self._upload: str | None = None
        self._parts: list[dict] = []

    def write(self, data) -> None:
        part = self._b.part_size  # parts of one size: some stores insist
        view = memoryview(data)
        while len(view):
            n = min(len(view), part - self._used)
            if len(self._buf) < part:  # the first part: small blobs stay small
                self._buf += view[:n]
            else:
                self._buf[self._used:self._used + n] = view[:n]
            self._used += n
            view = view[n:]
            if self._used == part:
                self._send_part()

    def _body(self) -> bytes:
        with memoryview(self._buf) as view:
            return bytes(view[:self._used])

    def _send_part(self) -> None:
        client, bucket = self._b.client, self._b.bucket
        with _errors(self._name):
            if self._upload is None:
                self._upload = client.create_multipart_upload(Bucket=bucket, Key=self._name)["UploadId"]
            number = len(self._parts) + 1
            answer = client.upload_part(Bucket=bucket, Key=self._name, UploadId=self._upload,
                                        PartNumber=number, Body=self._body())
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        self._used = 0

    def commit(self) -> None:
        client, bucket = self._b.client, self._b.bucket
        try:
            if self._upload is None:  # smaller than one part: one request
                with _errors(self._name):
                    client.put_object(Bucket=bucket, Key=self._name, Body=self._body())
                return
            if self._used:
                self._send_part()
            with _errors(self._name):
                client.complete_multipart_upload(Bucket=bucket, Key=self._name, UploadId=self._upload,
                                                 MultipartUpload={"Parts": self._parts})
        except BaseException:
            self.abort()
            raise
        finally:
            self._buf = bytearray()  # a writer kept after commit holds no part

    def abort(self) -> None:
        self._used, self._buf = 0, bytearray()
        if self._upload is not None:
            upload, self._upload = self._upload, None
            try:
                self._b.client.abort_multipart_upload(Bucket=self._b.bucket, Key=self._name,
                                                      UploadId=upload)
            except Exception:  # noqa: BLE001 - best effort; the lifecycle rule cleans up
                pass
