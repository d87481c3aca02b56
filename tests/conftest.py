"""Shared fixtures: gateway settings in a temp dir, the Flask app and client, issuer keys,
throwaway PostgreSQL databases, and real gateway processes (workers, receivers)."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.storage.blobstore import new_master_key
from gateway.trust.authorizations import example_claims, new_issuer_key, sign_authorization
from gateway.trust.issuers import trust_document
from tests.helpers import (
    ISSUER,
    RECEIVER_ORG,
    SENDER_ORG,
    GatewayProcess,
    bearer,
    free_port,
    make_token,
    stop_all,
    throwaway_database,
)


@pytest.fixture
def processes():
    """Start processes through this; each is stopped by PID at teardown."""
    started: list[GatewayProcess] = []

    def start(config: dict, workdir: Path, name: str, *args: str) -> GatewayProcess:
        proc = GatewayProcess(config, workdir, name).start(*args)
        started.append(proc)
        return proc

    yield start
    stop_all(started)


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
def fax_dir(tmp_path) -> Path:
    path = tmp_path / "fax-in"
    path.mkdir()
    return path


@pytest.fixture
def claims_for(receiver_url, drop_dir, fax_dir):
    """Build authorization claims covering the test source and recipient."""

    def build(jti: str | None = None, **kw):
        return example_claims(
            ISSUER, jti or f"auth-{uuid.uuid4().hex[:12]}",
            disclosers=[{"id": SENDER_ORG, "name": "Test Hospital",
                         "endpoints": [{"type": "pdf-folder", "address": str(drop_dir)},
                                       {"type": "fax", "address": str(fax_dir)}]}],
            recipient={"id": RECEIVER_ORG, "name": "Test Center",
                       "endpoint": {"type": "gateway", "address": receiver_url}}, **kw)

    return build


@pytest.fixture
def sender_config(tmp_path, trust_file, receiver_url, drop_dir, fax_dir) -> dict:
    data = tmp_path / "sender"
    data.mkdir()
    (data / "peer-token").write_text("not-yet-issued")
    (tmp_path / "fax-store").mkdir()
    return {
        "data_dir": str(data), "blob_key": new_master_key(), "trust_file": str(trust_file),
        "organization": SENDER_ORG, "port": free_port(),
        "sources": {"records": {"kind": "pdf-folder", "organization": SENDER_ORG,
                                "endpoint": str(drop_dir), "data_class": "notes",
                                "options": {"path": str(drop_dir)}},
                    "fax": {"kind": "fax-drop", "organization": SENDER_ORG, "endpoint": str(fax_dir),
                            "options": {"drop": str(fax_dir), "store": str(tmp_path / "fax-store"),
                                        "settle_seconds": 0, "file_settle_seconds": 0.3,
                                        "return_fax": "+1 555 0100"}}},
        "peers": {"center": {"base_url": receiver_url, "organization": RECEIVER_ORG,
                             "token_file": str(data / "peer-token")}},
        "retry": {"base_delay_s": 0.2, "max_delay_s": 1.0, "max_attempts": 1000},
        "step_lease_s": 5, "reconcile_interval_s": 1, "checkpoint_interval_s": 1,
        "fax_scan_interval_s": 0.5,
        "warm_up_fhir_models": False,  # a CPU-second a process start; tests/test_warmup.py has it
    }


@pytest.fixture
def receiver_config(tmp_path, receiver_url) -> dict:
    data = tmp_path / "receiver"
    data.mkdir()
    return {"data_dir": str(data), "blob_key": new_master_key(), "organization": RECEIVER_ORG,
            "mode": "receive", "port": int(receiver_url.rsplit(":", 1)[1]),
            "base_url": receiver_url, "warm_up_fhir_models": False,
            # the sending gateway's public keys, written by the `app` fixture
            "senders": {"test-hospital": {"organization": SENDER_ORG,
                                          "jwks_file": str(tmp_path / "sender-jwks.json")}}}


@pytest.fixture
def app(sender_config):
    from gateway import create_app
    from gateway.engine.faxes import ensure_cover_key

    app = create_app(sender_config)
    app.extensions["gateway"].keys.ensure()
    ensure_cover_key(app.extensions["gateway"].settings.keys_dir)
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


@pytest.fixture
def operator(app) -> dict:
    return bearer(make_token(app, "operator"))


@pytest.fixture
def pg_url():
    """A throwaway PostgreSQL database, dropped afterwards."""
    with throwaway_database() as url:
        yield url




# Files whose tests take a minute or more in all, heaviest first. tests/run.sh hands whole
# files to its processes in collection order (--no-loadscope-reorder), so these start
# first and no process is left working through one of them alone at the end.
SLOW_FILES = [
    "tests/test_cases.py", "tests/delivery/test_delivery_faults.py",
    "tests/delivery/test_attachment_delivery.py", "tests/faults/test_quick.py",
    "tests/test_transfer_flow.py", "tests/test_parallel_pulls.py",
    "tests/center/test_center_flow.py", "tests/dicom/test_dicom_receiver.py",
    "tests/test_demo.py", "tests/dicom/test_dicom_gateway_flow.py",
    "tests/security/test_at_rest.py", "tests/security/test_fuzz.py",
    "tests/audit/test_audit_tamper.py", "tests/test_operations.py",
    "tests/security/test_no_phi_in_logs.py", "tests/fhir/test_case_follow_up.py",
    "tests/test_topology.py", "tests/fax/test_fax_drop.py",
    "tests/security/test_schemathesis.py", "tests/test_blobstore_s3.py",
    "tests/test_fax_flow.py", "tests/delivery/test_same_document.py",
    "tests/security/test_fuzz_regressions.py", "tests/center/test_center_no_records.py",
]


def pytest_collection_modifyitems(items):
    rank = {path: n for n, path in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(SLOW_FILES)))
