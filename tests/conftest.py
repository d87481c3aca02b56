"""Shared fixtures: gateway settings in a temp dir, the Flask app and client, issuer keys,
throwaway PostgreSQL databases, and real gateway processes (workers, receivers)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from gateway.authorizations import example_claims, new_issuer_key, sign_authorization
from gateway.blobstore import new_master_key
from gateway.trust import trust_document

ISSUER = "https://esign.test.invalid"
SENDER_ORG, RECEIVER_ORG = "org-test-hospital", "org-test-center"
PG_ADMIN = os.environ.get("GATEWAY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379")


_ROOT_CONFTEST = sys.modules[__name__]


def pytest_collectstart(collector):
    """Test modules here `from conftest import ...`; a sub-folder's conftest.py (also
    named conftest) replaces this one in sys.modules when pytest loads it, so put this
    one back before each test module is imported."""
    if isinstance(collector, pytest.Module):
        sys.modules["conftest"] = _ROOT_CONFTEST


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float = 30, interval: float = 0.1, what: str = "condition"):
    """Poll `check` until it returns a truthy value (returned) or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class GatewayProcess:
    """A real `records-gateway` process (serve or worker) with its own config file."""

    def __init__(self, config: dict, workdir: Path, name: str):
        self.config, self.name = config, name
        self.config_file = workdir / f"{name}.json"
        self.config_file.write_text(json.dumps(config, default=str))
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
                    "GATEWAY_CONFIG_FILE": str(self.config_file)}

    def start(self, *args: str) -> "GatewayProcess":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", *args], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def wait_http(self, timeout: float = 30) -> "GatewayProcess":
        url = f"http://127.0.0.1:{self.config['port']}/health"

        def up():
            assert self.proc.poll() is None, f"{self.name} exited: {self.log_path.read_text()[-2000:]}"
            try:
                return requests.get(url, timeout=1).ok
            except requests.RequestException:
                return False

        wait_until(up, timeout, what=f"{self.name} to answer /health")
        return self

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(15)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc:
            self.log.close()


@pytest.fixture
def processes():
    """Start processes through this; each is stopped by PID at teardown."""
    started: list[GatewayProcess] = []

    def start(config: dict, workdir: Path, name: str, *args: str) -> GatewayProcess:
        proc = GatewayProcess(config, workdir, name).start(*args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def issuer_private_key():
    return new_issuer_key("test-esign-1")


@pytest.fixture
def trust_file(tmp_path, issuer_private_key) -> Path:
    path = tmp_path / "issuers.json"
    path.write_text(json.dumps(trust_document({ISSUER: [issuer_private_key]})))
    return path


@pytest.fixture
def sign(issuer_private_key):
    return lambda claims: sign_authorization(claims, issuer_private_key)


@pytest.fixture
def receiver_url() -> str:
    """Where the test recipient gateway listens (started only by tests that need it)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def drop_dir(tmp_path) -> Path:
    path = tmp_path / "drop"
    path.mkdir()
    return path


@pytest.fixture
def claims_for(receiver_url, drop_dir):
    """Build authorization claims covering the test source and recipient."""

    def build(jti: str | None = None, **kw):
        return example_claims(
            ISSUER, jti or f"auth-{uuid.uuid4().hex[:12]}",
            disclosers=[{"id": SENDER_ORG, "name": "Test Hospital",
                         "endpoints": [{"type": "pdf-folder", "address": str(drop_dir)}]}],
            recipient={"id": RECEIVER_ORG, "name": "Test Center",
                       "endpoint": {"type": "gateway", "address": receiver_url}}, **kw)

    return build


@pytest.fixture
def sender_config(tmp_path, trust_file, receiver_url, drop_dir) -> dict:
    data = tmp_path / "sender"
    data.mkdir()
    (data / "peer-token").write_text("not-yet-issued")
    return {
        "data_dir": str(data), "blob_key": new_master_key(), "trust_file": str(trust_file),
        "organization": SENDER_ORG, "port": free_port(),
        "sources": {"records": {"kind": "pdf-folder", "organization": SENDER_ORG,
                                "endpoint": str(drop_dir), "data_class": "notes",
                                "options": {"path": str(drop_dir)}}},
        "peers": {"center": {"base_url": receiver_url, "organization": RECEIVER_ORG,
                             "token_file": str(data / "peer-token")}},
        "retry": {"base_delay_s": 0.2, "max_delay_s": 1.0, "max_attempts": 1000},
        "step_lease_s": 5, "reconcile_interval_s": 1,
    }


@pytest.fixture
def receiver_config(tmp_path, receiver_url) -> dict:
    data = tmp_path / "receiver"
    data.mkdir()
    return {"data_dir": str(data), "blob_key": new_master_key(), "organization": RECEIVER_ORG,
            "mode": "receive", "port": int(receiver_url.rsplit(":", 1)[1]),
            "base_url": receiver_url,
            # the sending gateway's public keys, written by the `app` fixture
            "senders": {"test-hospital": {"organization": SENDER_ORG,
                                          "jwks_file": str(tmp_path / "sender-jwks.json")}}}


@pytest.fixture
def app(sender_config):
    from gateway import create_app

    app = create_app(sender_config)
    app.extensions["gateway"].keys.ensure()
    Path(sender_config["data_dir"]).parent.joinpath("sender-jwks.json").write_text(
        json.dumps(app.extensions["gateway"].keys.jwks()))
    yield app
    app.extensions["gateway"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(sender_config, tmp_path, monkeypatch):
    """CliRunner with GATEWAY_CONFIG_FILE pointing at the sender's settings."""
    path = tmp_path / "cli-config.json"
    path.write_text(json.dumps(sender_config))
    for key in [k for k in os.environ if k.startswith("GATEWAY_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("GATEWAY_CONFIG_FILE", str(path))
    return CliRunner()


def make_token(app, role: str, name: str | None = None) -> str:
    from gateway.tokens import create_token

    svc = app.extensions["gateway"]
    with svc.db.session() as s:
        _, plain = create_token(s, name or f"test-{role}", role, actor="test")
    return plain


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def operator(app) -> dict:
    return bearer(make_token(app, "operator"))


@pytest.fixture
def pg_url():
    """A throwaway PostgreSQL database, dropped afterwards."""
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def write_pdfs(folder: Path, count: int = 3, patient: dict | None = None) -> dict[str, str]:
    """Synthetic PDFs, written elsewhere and renamed into place; returns sha256 -> name."""
    import hashlib

    from gateway.demo import make_pdf

    staging = folder.parent / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    patient = patient or {"name": {"family": "Testperson", "given": ["Avery"]}, "birthDate": "1970-01-01"}
    out = {}
    for n in range(count):
        path = staging / f"document-{n}.pdf"
        make_pdf(path, f"Synthetic report {n}", [f"line {n}", "synthetic"], patient)
        out[hashlib.sha256(path.read_bytes()).hexdigest()] = path.name
    staging.rename(folder)
    return out
