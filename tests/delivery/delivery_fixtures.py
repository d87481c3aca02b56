"""Delivery fixtures (imported by the test modules; not a conftest, whose module name
would shadow tests/conftest.py): a fault-injecting proxy in front of the receiving gateway, a real
plain FHIR server (sekmet-fhir) as a second recipient, and the two-gateway stack."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from delivery_support import free_port, wait_until  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402

PLAIN_ORG = "org-plain-fhir"


@pytest.fixture(scope="session")
def sekmet(tmp_path_factory):
    """sekmet-fhir serving FHIR R4 on a free loopback port, its simulator off."""
    exe = shutil.which("sekmet")
    assert exe, "sekmet-fhir is not installed (pip install -e '.[test]')"
    root = tmp_path_factory.mktemp("sekmet")
    port = free_port()
    (root / "settings.yaml").write_text(
        f"data_dir: {root / 'data'}\nsimulator:\n  enabled: false\n"
        "validation:\n  inbound: warn\nlog_inbound: false\n")
    base = f"http://127.0.0.1:{port}/fhir"
    env = {**os.environ, "SEKMET_DB": str(root / "sekmet.db"), "SEKMET_BASE_URL": base}
    log = open(root / "sekmet.log", "wb")
    proc = subprocess.Popen([exe, "serve", "-c", str(root / "settings.yaml"), "--host", "127.0.0.1",
                             "--port", str(port)], env=env, cwd=root, stdout=log,
                            stderr=subprocess.STDOUT)

    def up():
        assert proc.poll() is None, (root / "sekmet.log").read_text()[-2000:]
        try:
            return requests.get(f"{base}/metadata", timeout=1).ok
        except requests.RequestException:
            return False

    wait_until(up, 60, 0.2, "sekmet to serve /metadata")
    yield base
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture
def proxy(receiver_config, receiver_url):
    """Listens where the sender expects the receiver; the receiver moves behind it."""
    upstream = free_port()
    receiver_config["port"] = upstream
    receiver_config["receive_claim_s"] = 1.0
    p = FaultProxy(int(receiver_url.rsplit(":", 1)[1]), upstream).start()
    yield p
    p.stop()


@pytest.fixture
def plain_peer(sender_config, sekmet):
    sender_config["peers"]["plain"] = {"base_url": sekmet, "kind": "fhir", "organization": PLAIN_ORG}
    return sekmet


@pytest.fixture
def dstack(proxy, plain_peer, app, client, operator, processes, sender_config, receiver_config,
           tmp_path):
    from test_transfer_flow import Stack

    stack = Stack(app, client, operator, processes, sender_config, receiver_config, tmp_path)
    stack.proxy = proxy
    return stack


@pytest.fixture
def two_sources(sender_config, tmp_path):
    """A second PDF folder of the same hospital ("copies"), e.g. the fax copies."""
    copies = tmp_path / "copies"
    copies.mkdir()
    sender_config["sources"]["copies"] = {
        "kind": "pdf-folder", "organization": "org-test-hospital", "endpoint": str(copies),
        "data_class": "notes", "options": {"path": str(copies)}}
    return copies
