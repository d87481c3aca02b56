"""Fixtures for the FHIR connector: real sekmet-fhir servers loaded with Synthea patients,
the oidc-provider authorization server with a JWT-checking front, and the fault peer."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from joserfc.jwk import ECKey, RSAKey

from connectors.base import PatientIdentifier, RecordQuery
from connectors.fhir.smart import public_jwks
from tests.fhir.fault_peer import FaultPeer
from tests.fhir.fhir_peers import (AUTH_DIR, JwtProxy, OidcProvider, SekmetServer, free_port,
                                   synthea_patients)

MRN_SYSTEM = "http://hospital.smarthealthit.org"


def mrn_of(patient: dict) -> PatientIdentifier:
    ident = next(i for i in patient["identifier"] if i.get("system") == MRN_SYSTEM)
    return PatientIdentifier(ident["system"], ident["value"])


def query_for(patient: dict, **kw) -> RecordQuery:
    return RecordQuery("auth-1", "transfer-1", identifiers=(mrn_of(patient),), **kw)


@pytest.fixture(scope="session")
def synthea_files() -> list[Path]:
    return synthea_patients(2, 42)


@pytest.fixture(scope="session")
def sekmet(tmp_path_factory, synthea_files):
    """A sekmet server with two Synthea patients; `.patients` = [{"id", "patient"}]."""
    server = SekmetServer(tmp_path_factory.mktemp("sekmet")).start()
    server.patients = [server.load(f) for f in synthea_files]
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client_keys():
    return {"rsa": RSAKey.generate_key(2048), "ec": ECKey.generate_key("P-384"),
            "stranger": RSAKey.generate_key(2048)}


@pytest.fixture(scope="session")
def smart_stack(tmp_path_factory, synthea_files, client_keys):
    """sekmet behind a proxy that only takes JWT access tokens from oidc-provider."""
    if not (AUTH_DIR / "node_modules" / "oidc-provider").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=AUTH_DIR, check=True)
    work = tmp_path_factory.mktemp("smart")
    proxy_port = free_port()
    base = f"http://127.0.0.1:{proxy_port}/fhir"
    server = SekmetServer(work, public_base=base).start()
    loaded = server.load(synthea_files[0])
    clients = [
        {"client_id": "gateway-rsa", "alg": "RS384", "jwks": public_jwks(client_keys["rsa"], "rsa-1")},
        {"client_id": "gateway-ec", "alg": "ES384", "jwks": public_jwks(client_keys["ec"])},
    ]
    auth = OidcProvider(work, clients, resource=base).start()
    proxy = JwtProxy(work, server.direct, auth.issuer, base, port=proxy_port).start(auth.token_endpoint)
    yield {"base": base, "auth": auth, "proxy": proxy, "sekmet": server, "patient": loaded["patient"]}
    proxy.stop()
    auth.stop()
    server.stop()


@pytest.fixture
def fault_peer():
    peer = FaultPeer().start()
    yield peer
    peer.stop()
