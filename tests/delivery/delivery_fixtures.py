"""Delivery fixtures (registered by tests/delivery/conftest.py): a fault-injecting proxy in front of the receiving gateway, a real
plain FHIR server (sekmet-fhir) as a second recipient, and the two-gateway stack."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import requests

from tests.delivery.faultproxy import FaultProxy
from tests.helpers import free_port, wait_until

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
def plain_proxy(sekmet):
    """A fault proxy in front of the plain FHIR server."""
    upstream = int(sekmet.split(":")[2].split("/")[0])
    p = FaultProxy(free_port(), upstream).start()
    p.base = f"http://127.0.0.1:{p.server.server_address[1]}/fhir"
    yield p
    p.stop()


@pytest.fixture
def plain_peer(sender_config, plain_proxy):
    """The plain FHIR server as the sender's peer "plain", reached through its proxy."""
    sender_config["peers"]["plain"] = {"base_url": plain_proxy.base, "kind": "fhir",
                                       "organization": PLAIN_ORG}
    return plain_proxy.base


def _stack_class():
    from tests.test_transfer_flow import Stack

    class DeliveryStack(Stack):
        """The foundation's two-gateway stack, with the receiver's keys and tokens made in
        process rather than by three command-line runs (the same code, faster)."""

        def __init__(self, app, client, operator, processes, sender_config, receiver_config,
                     tmp_path, worker_args=("worker", "--beat")):
            from gateway import create_app
            from gateway.trust.tokens import create_token

            self.app, self.client, self.operator = app, client, operator
            self.processes, self.tmp = processes, tmp_path
            self.sender_config, self.receiver_config = sender_config, receiver_config
            self.worker_args = worker_args
            self.receiver = None
            self.worker = self.start_worker()
            receiver = create_app(receiver_config)
            svc = receiver.extensions["gateway"]
            svc.keys.ensure()
            with svc.db.session() as s:
                _, peer_token = create_token(s, "test-hospital", "peer", "test")
                _, staff = create_token(s, "staff", "recipient", "test")
            svc.close()
            (tmp_path / "sender" / "peer-token").write_text(peer_token)
            self.inbox_headers = {"Authorization": f"Bearer {staff}"}

    return DeliveryStack


@pytest.fixture
def dstack(proxy, plain_peer, app, client, operator, processes, sender_config, receiver_config,
           tmp_path):
    stack = _stack_class()(app, client, operator, processes, sender_config, receiver_config, tmp_path)
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
