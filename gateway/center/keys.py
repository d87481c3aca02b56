"""The center's intake issuer key: it signs the authorizations the intake makes from
patients' forms, and their revocations. Kept beside the gateway's other keys (0600),
never in the database; hospitals trust its public half for `center.issuer`
(`records-gateway requests issuer-jwks` prints the trust document to give them)."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from gateway.runtime.services import Services
from gateway.trust.authorizations import new_issuer_key, public_jwks
from gateway.trust.issuers import trust_document

FILE = "center-intake.jwk"


def _path(svc: Services) -> Path:
    return svc.settings.keys_dir / FILE


def intake_key(svc: Services) -> dict:
    """The private JWK (made on first use: Ed25519, a random kid)."""
    path = _path(svc)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = new_issuer_key(f"intake-{secrets.token_hex(4)}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return json.loads(path.read_text())
        with os.fdopen(fd, "w") as fh:
            json.dump(key, fh)
        return key


def issuer_jwks(svc: Services) -> dict:
    return public_jwks([intake_key(svc)])


def trust_entry(svc: Services) -> dict:
    """The issuers document (gateway/trust/issuers.py) a hospital adds to its trust file."""
    return trust_document({svc.settings.center.issuer: [intake_key(svc)]})
