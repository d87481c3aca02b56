"""A real S3-compatible HTTP server (moto's) on a free port of 127.0.0.1, for the
object-store blob backend: started by a fixture, stopped by PID."""
from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.helpers import free_port, wait_until

ACCESS_KEY, SECRET_KEY = "test-access-key", "test-secret-key"  # moto accepts any


@dataclass
class S3Server:
    url: str
    proc: subprocess.Popen

    def client(self):
        import boto3
        return boto3.session.Session().client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def new_bucket(self) -> str:
        name = f"blobs-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def store_config(self, bucket: str, secrets_dir: Path, **extra) -> dict:
        """The `blob_store` setting for `bucket`, credentials in files under secrets_dir."""
        secrets_dir.mkdir(parents=True, exist_ok=True)
        (secrets_dir / "s3-access-key").write_text(ACCESS_KEY)
        (secrets_dir / "s3-secret-key").write_text(SECRET_KEY)
        return {"kind": "s3", "bucket": bucket, "endpoint_url": self.url, "region": "us-east-1",
                "access_key_file": str(secrets_dir / "s3-access-key"),
                "secret_key_file": str(secrets_dir / "s3-secret-key"), **extra}


def start(log: Path) -> S3Server:
    port = free_port()
    out = open(log, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    url = f"http://127.0.0.1:{port}"

    def up():
        assert proc.poll() is None, f"moto server exited: {log.read_text()[-2000:]}"
        try:
            return requests.get(url + "/moto-api/", timeout=1).ok
        except requests.RequestException:
            return False

    wait_until(up, 60, 0.2, "the S3 server to answer")
    return S3Server(url, proc)


def stop(server: S3Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
