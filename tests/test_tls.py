"""Gateways talk over TLS: the receiving gateway serves HTTPS with a certificate from its
configuration and, with a client CA, requires the sending gateway's certificate (mutual
TLS); the sender checks the receiver against a configured CA bundle. The test makes its
own CA and certificates; TLS below 1.2 and clients without a trusted certificate are
refused."""
from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import warnings
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.helpers import free_port, wait_until, write_pdfs
from tests.test_transfer_flow import TERMINAL, Stack, binaries


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(folder: Path, stem: str, key, cert) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _issue(ca_key, ca_cert, cn: str, usage, san=None):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _ca("Test gateways CA")
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server = _write(folder, "center", *_issue(
        ca_key, ca_cert, "center.test", ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]))
    client = _write(folder, "hospital", *_issue(ca_key, ca_cert, "hospital.test",
                                                ExtendedKeyUsageOID.CLIENT_AUTH))
    rogue_key, rogue_cert = _ca("Someone else's CA")
    rogue = _write(folder, "rogue", *_issue(rogue_key, rogue_cert, "hospital.test",
                                            ExtendedKeyUsageOID.CLIENT_AUTH))
    return {"ca": ca_file, "server": server, "client": client, "rogue": rogue}


@pytest.fixture
def receiver_url() -> str:
    return f"https://127.0.0.1:{free_port()}"


@pytest.fixture
def receiver_config(receiver_config, pki) -> dict:
    return {**receiver_config, "tls_cert_file": str(pki["server"][0]),
            "tls_key_file": str(pki["server"][1]), "tls_client_ca_file": str(pki["ca"])}


@pytest.fixture
def sender_config(sender_config, pki) -> dict:
    center = {**sender_config["peers"]["center"], "ca_file": str(pki["ca"]),
              "client_cert_file": str(pki["client"][0]), "client_key_file": str(pki["client"][1])}
    return {**sender_config, "peers": {"center": center}}


def _get(url: str, pki: dict, cert=None, **kw):
    return requests.get(url, verify=str(pki["ca"]), cert=cert, timeout=5, **kw)


def test_records_go_over_mutual_tls_and_strangers_are_refused(
        app, client, operator, processes, sender_config, receiver_config, tmp_path, claims_for,
        sign, drop_dir, pki):
    stack = Stack(app, client, operator, processes, sender_config, receiver_config, tmp_path)
    stack.receiver = processes(receiver_config, tmp_path, "receiver", "serve", "--receive")
    base = receiver_config["base_url"]
    mine = tuple(str(p) for p in pki["client"])

    def up():
        assert stack.receiver.proc.poll() is None, stack.receiver.log_path.read_text()[-2000:]
        try:
            return _get(f"{base}/health", pki, cert=mine).ok
        except requests.RequestException:
            return False

    wait_until(up, 30, what="the receiver to answer over HTTPS")
    # no client certificate, one from another CA, plain HTTP, TLS 1.1: all refused
    for cert in (None, tuple(str(p) for p in pki["rogue"])):
        with pytest.raises(requests.exceptions.ConnectionError):
            _get(f"{base}/health", pki, cert=cert)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(base.replace("https:", "http:") + "/health", timeout=5)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(pki["ca"])
    old.load_cert_chain(*mine)
    with warnings.catch_warnings():  # setting an old TLS version is deprecated: the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", receiver_config["port"]), timeout=5) as raw:
        with pytest.raises(ssl.SSLError):
            old.wrap_socket(raw, server_hostname="127.0.0.1").do_handshake()

    tid = stack.transfer(stack.authorize(claims_for(), sign))
    sent = write_pdfs(drop_dir / tid, count=2)
    view = stack.wait_state(tid, TERMINAL)
    assert view["state"] == "completed", view["reason"]
    assert view["receipt"] and view["bundles"][0]["signedReceipt"] is True
    [item] = _get(f"{base}/inbox", pki, cert=mine, headers=stack.inbox_headers).json()["received"]
    bundle = _get(f"{base}/inbox/{item['id']}/bundle", pki, cert=mine,
                  headers=stack.inbox_headers).json()
    assert binaries(bundle) == set(sent)
