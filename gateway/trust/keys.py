"""The gateway's own keys: signing keys per purpose (bundles, receipts, log checkpoints),
the SMART client key, and the secret patient keys in the audit log are made with.

Signing keys live as JWK files in `data_dir/keys/signing/`, their purposes and states
in `keys.json` there (see `SigningKeys`). Rotation adds a key and retires the old one:
old public keys stay in the published JWKS (`/.well-known/jwks.json`) so old signatures
still verify; a revoked key is left out, so nothing it signed verifies.
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

from connectors.files import write_atomic
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


# What each signed object is, and the purpose of the key that may sign it: one key per
# purpose, so a key that signs bundles cannot vouch for a receipt or a log checkpoint.
BUNDLE_TYP = "fhir-bundle+jws"
RECEIPT_TYP = "delivery-receipt+jwt"
OPENED_TYP = "opened-receipt+jwt"
PURPOSES = ("bundle", "receipt", "checkpoint")
PURPOSE_OF_TYP = {BUNDLE_TYP: "bundle", RECEIPT_TYP: "receipt", OPENED_TYP: "receipt"}


class SigningKeys:
    """The gateway's signing keys: one current key per purpose (bundles, receipts, log
    checkpoints), JWK files in `keys/signing/`, their purposes and states in `keys.json`.

    A key is active (signs), retired (still verifies what it signed, signs nothing new)
    or revoked (verifies nothing: left out of the published JWKS). Key files without an
    entry (from before purposes) count as retired. The JWKS names each key's purpose.
    """

    def __init__(self, keys_dir: Path):
        self.dir = Path(keys_dir) / "signing"
        self._index_path = self.dir / "keys.json"

    def _index(self) -> dict:
        try:
            return json.loads(self._index_path.read_text())
        except FileNotFoundError:
            return {"current": {}, "keys": {}}

    def _save(self, index: dict) -> None:
        write_atomic(self._index_path, json.dumps(index, indent=1, sort_keys=True).encode())

    def ensure(self) -> dict[str, str]:
        """Make a key for each purpose that has none; return purpose -> current key id."""
        self.dir.mkdir(parents=True, exist_ok=True)
        index = self._index()
        for purpose in PURPOSES:
            if purpose not in index["current"]:
                self._new(index, purpose)
        self._save(index)
        return dict(index["current"])

    def rotate(self, purpose: str | None = None) -> dict[str, str]:
        """New current keys (for one purpose, or all); the old ones are retired."""
        if purpose is not None and purpose not in PURPOSES:
            raise ConfigError(f"unknown key purpose {purpose!r}; one of {', '.join(PURPOSES)}")
        self.dir.mkdir(parents=True, exist_ok=True)
        index = self._index()
        made = {}
        for p in [purpose] if purpose else PURPOSES:
            old = index["current"].get(p)
            if old:
                index["keys"][old].update(state="retired", retired_at=_now())
            made[p] = self._new(index, p)
        self._save(index)
        return made

    def retire(self, kid: str) -> None:
        """Sign nothing new with `kid`; it still verifies what it signed."""
        self._set_state(kid, "retired")

    def revoke(self, kid: str) -> None:
        """`kid` leaked: it verifies nothing from now on (gone from the JWKS)."""
        self._set_state(kid, "revoked")

    def _set_state(self, kid: str, state: str) -> None:
        index = self._index()
        entry = index["keys"].get(kid)
        if entry is None:
            if not (self.dir / f"{kid}.jwk").exists():
                raise ConfigError(f"no signing key {kid}")
            entry = index["keys"][kid] = {"purpose": None, "state": "retired"}
        entry.update(state=state, **{f"{state}_at": _now()})
        for purpose, current in list(index["current"].items()):
            if current == kid:  # its purpose needs a new key at once
                self._new(index, purpose)
        self._save(index)

    def _new(self, index: dict, purpose: str) -> str:
        kid = f"{purpose}-{datetime.now(timezone.utc):%Y%m%d}-{uuid.uuid4().hex[:8]}"
        key = OKPKey.generate_key("Ed25519", parameters={"kid": kid, "use": "sig", "alg": ALG})
        _write_private(self.dir / f"{kid}.jwk", key.as_dict(private=True))
        index["keys"][kid] = {"purpose": purpose, "state": "active", "created_at": _now()}
        index["current"][purpose] = kid
        return kid

    def _load(self, kid: str) -> OKPKey:
        try:
            return OKPKey.import_key(json.loads((self.dir / f"{kid}.jwk").read_text()))
        except FileNotFoundError:
            raise ConfigError(f"signing key {kid} is missing from {self.dir} "
                              "(run `records-gateway init`)") from None

    def current(self, purpose: str) -> OKPKey:
        """The key that signs for `purpose` now."""
        kid = self._index()["current"].get(purpose)
        if kid is None:
            raise ConfigError(f"no {purpose} signing key in {self.dir} (run `records-gateway init`)")
        return self._load(kid)

    def states(self) -> list[dict]:
        """Every key with its purpose and state, newest first."""
        index = self._index()
        out = [{"kid": path.stem, **index["keys"].get(path.stem, {"purpose": None,
                                                                   "state": "retired"})}
               for path in self.dir.glob("*.jwk")]
        return sorted(out, key=lambda k: k.get("created_at") or "", reverse=True)

    def jwks(self) -> dict:
        """The public keys that may verify: active and retired ones, with their purpose."""
        keys = []
        for entry in sorted(self.states(), key=lambda k: k["kid"]):
            if entry["state"] == "revoked":
                continue
            jwk = self._load(entry["kid"]).as_dict(private=False)
            if entry.get("purpose"):
                jwk["purpose"] = entry["purpose"]
            if entry["state"] == "retired":
                jwk["retired"] = True
            keys.append(jwk)
        return {"keys": keys}

    def sign(self, claims: dict, typ: str) -> str:
        """A compact JWS of `claims`, signed with the current key of `typ`'s purpose."""
        key = self.current(PURPOSE_OF_TYP[typ])
        header = {"alg": ALG, "kid": key.kid, "typ": typ}
        payload = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
        return jws.serialize_compact(header, payload, key, algorithms=[ALG])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_purpose(jwks: dict, kid: str | None, typ: str) -> None:
    """A signature must come from a key published for that purpose (keys published
    without a purpose, by gateways from before purposes, are taken for any)."""
    jwk = next((k for k in jwks.get("keys", []) if k.get("kid") == kid), None)
    wanted = PURPOSE_OF_TYP.get(typ)
    if jwk is not None and jwk.get("purpose") and jwk["purpose"] != wanted:
        raise ReceiptInvalid(f"a {typ} signed with a key for {jwk['purpose']}s, not {wanted}s")


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
    check_purpose(jwks, obj.headers().get("kid"), typ)
    try:
        return json.loads(obj.payload)
    except ValueError:
        raise ReceiptInvalid("signed payload is not JSON") from None
