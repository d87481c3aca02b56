"""The gateway's own signing keys (bundles, receipts, log checkpoints).

Private keys live as JWK files in `data_dir/keys/signing/`, one per key id; `current`
names the key that signs. Rotation adds a key and moves `current`; old public keys
stay in the published JWKS (`/.well-known/jwks.json`) so old signatures still verify.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import uuid
from datetime import datetime, timezone
from pathlib import Path

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, OKPKey
from joserfc.jws import JWSRegistry

from gateway.errors import ConfigError, ReceiptInvalid

ALG = "Ed25519"  # fully-specified EdDSA (RFC 9864)


class _Registry(JWSRegistry):
    # joserfc refuses payloads over 128 kB by default; a receipt lists a hash per entry
    # (thousands for one patient) and a detached bundle signature covers the whole bundle
    max_payload_length = 1 << 30


REGISTRY = _Registry(algorithms=[ALG])


def _write_private(path: Path, data: dict) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)


def patient_key_secret(keys_dir: Path) -> bytes:
    """The deployment's secret for patient keys in the audit log (see `audit.patient_key`):
    made on first use beside the other keys (0600), never stored in the database."""
    path = Path(keys_dir) / "patient-key.secret"
    try:
        text = path.read_text()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return patient_key_secret(keys_dir)
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(secrets.token_bytes(32)).decode())
        return patient_key_secret(keys_dir)
    try:
        secret = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        secret = b""
    if len(secret) < 32:
        raise ConfigError(f"{path} must hold at least 32 random bytes in base64")
    return secret


class SigningKeys:
    def __init__(self, keys_dir: Path):
        self.dir = Path(keys_dir) / "signing"

    def ensure(self) -> str:
        """Create the first key if there is none; return the current key id."""
        self.dir.mkdir(parents=True, exist_ok=True)
        current = self.dir / "current"
        if not current.exists():
            return self.rotate()
        return current.read_text().strip()

    def rotate(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        kid = datetime.now(timezone.utc).strftime("%Y%m%d") + "-" + uuid.uuid4().hex[:8]
        key = OKPKey.generate_key("Ed25519", parameters={"kid": kid, "use": "sig", "alg": ALG})
        _write_private(self.dir / f"{kid}.jwk", key.as_dict(private=True))
        tmp = self.dir / "current.tmp"
        tmp.write_text(kid)
        os.replace(tmp, self.dir / "current")
        return kid

    def _load(self, kid: str) -> OKPKey:
        try:
            return OKPKey.import_key(json.loads((self.dir / f"{kid}.jwk").read_text()))
        except FileNotFoundError:
            raise ConfigError(f"signing key {kid} is missing from {self.dir} "
                              "(run `records-gateway init`)") from None

    def current(self) -> OKPKey:
        try:
            kid = (self.dir / "current").read_text().strip()
        except FileNotFoundError:
            raise ConfigError(f"no signing key in {self.dir} (run `records-gateway init`)") from None
        return self._load(kid)

    def jwks(self) -> dict:
        keys = []
        for path in sorted(self.dir.glob("*.jwk")):
            keys.append(OKPKey.import_key(json.loads(path.read_text())).as_dict(private=False))
        return {"keys": keys}

    def sign(self, claims: dict, typ: str) -> str:
        """A compact JWS of `claims` signed with the current key."""
        key = self.current()
        header = {"alg": ALG, "kid": key.kid, "typ": typ}
        payload = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
        return jws.serialize_compact(header, payload, key, algorithms=[ALG])


class ClientKeys:
    """The gateway's SMART Backend Services client key (ES384, P-384), one JWK file in
    `data_dir/keys/smart/`. Its public half is published beside the signing keys."""

    def __init__(self, keys_dir: Path):
        self.path = Path(keys_dir) / "smart" / "client.jwk"

    def ensure(self) -> str:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kid = "smart-" + uuid.uuid4().hex[:12]
            key = ECKey.generate_key("P-384", parameters={"kid": kid, "alg": "ES384", "use": "sig"})
            _write_private(self.path, key.as_dict(private=True))
        return self.kid()

    def kid(self) -> str:
        try:
            return json.loads(self.path.read_text())["kid"]
        except FileNotFoundError:
            raise ConfigError(f"no SMART client key at {self.path} (run `records-gateway init`)") from None

    def public_jwks(self) -> dict:
        if not self.path.exists():
            return {"keys": []}
        return {"keys": [ECKey.import_key(json.loads(self.path.read_text())).as_dict(private=False)]}


def verify_jws(token: str, jwks: dict, typ: str) -> dict:
    """Verify a compact JWS made by `SigningKeys.sign` against a trusted JWKS."""
    try:
        keyset = KeySet.import_key_set(jwks)
        obj = jws.deserialize_compact(token, keyset, registry=REGISTRY)
    except (JoseError, ValueError, TypeError) as exc:
        raise ReceiptInvalid(f"signature does not verify: {exc.__class__.__name__}") from None
    if obj.headers().get("typ") != typ:
        raise ReceiptInvalid(f"signed object is not a {typ}")
    try:
        return json.loads(obj.payload)
    except ValueError:
        raise ReceiptInvalid("signed payload is not JSON") from None
