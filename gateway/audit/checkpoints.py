"""Signed checkpoints of the audit log: tree size, root hash and time, signed with Ed25519.

The signed body follows the C2SP checkpoint note layout with a timestamp extension line:

    <origin>\\n<tree size>\\n<root hash, base64>\\ntimestamp <unix milliseconds>\\n

A checkpoint is stored once per tree size; timestamps strictly increase. The signing key
is passed in (the caller owns key storage); `key_id` defaults to the key's RFC 7638 JWK
thumbprint so auditors can match it in the published JWKS.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.errors import InvalidInput, NotFound
from gateway.storage.models import AuditCheckpoint

from . import log, merkle

_log = logging.getLogger("gateway.audit")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(public_key: Ed25519PublicKey, kid: str | None = None) -> dict:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
    jwk["kid"] = kid or key_id_for(public_key)
    jwk.update({"use": "sig", "alg": "EdDSA"})
    return jwk


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint of the Ed25519 public key (base64url SHA-256)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    members = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)},
                         separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(members.encode()).digest())


def body(origin: str, tree_size: int, root_hash: bytes, timestamp_ms: int) -> bytes:
    if "\n" in origin or not origin:
        raise InvalidInput("checkpoint origin must be one non-empty line")
    return (f"{origin}\n{tree_size}\n{base64.b64encode(root_hash).decode()}\n"
            f"timestamp {timestamp_ms}\n").encode()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def to_dict(cp: AuditCheckpoint) -> dict:
    return {"origin": cp.origin, "tree_size": cp.tree_size, "root_hash": cp.root_hash,
            "timestamp": _iso(cp.timestamp_ms), "timestamp_ms": cp.timestamp_ms,
            "key_id": cp.key_id, "signature": cp.signature}


def sign(private_key: Ed25519PrivateKey, *, origin: str, tree_size: int, root_hash: bytes,
         timestamp_ms: int, key_id: str | None = None) -> dict:
    """A checkpoint dict for the given tree head (no database)."""
    sig = private_key.sign(body(origin, tree_size, root_hash, timestamp_ms))
    return {"origin": origin, "tree_size": tree_size, "root_hash": root_hash.hex(),
            "timestamp": _iso(timestamp_ms), "timestamp_ms": timestamp_ms,
            "key_id": key_id or key_id_for(private_key.public_key()),
            "signature": base64.b64encode(sig).decode()}


def create_checkpoint(session: Session, private_key: Ed25519PrivateKey, *, origin: str,
                      key_id: str | None = None, now: datetime | None = None) -> dict:
    """Sign and store a checkpoint of the log as committed now (no commit here).

    Takes the log's lock so the size and root are exact. When the log has not grown since
    the last checkpoint, returns that one. The timestamp is bumped past the previous
    checkpoint's if the clock has not moved (or went back), so timestamps strictly increase.
    """
    size, frontier, _ = log.lock_head(session, 0)
    if size == 0:
        raise InvalidInput("the audit log is empty; nothing to checkpoint yet")
    existing = session.execute(select(AuditCheckpoint).where(AuditCheckpoint.tree_size == size)
                               ).scalar_one_or_none()
    if existing is not None:
        return to_dict(existing)
    root = merkle.fold_right(frontier)
    last = session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size.desc())
                           .limit(1)).scalar_one_or_none()
    ms = int((now or datetime.now(timezone.utc)).timestamp() * 1000)
    if last is not None:
        ms = max(ms, last.timestamp_ms + 1)
    cp = sign(private_key, origin=origin, tree_size=size, root_hash=root, timestamp_ms=ms,
              key_id=key_id)
    session.add(AuditCheckpoint(tree_size=size, root_hash=cp["root_hash"], timestamp_ms=ms,
                                origin=origin, key_id=cp["key_id"], signature=cp["signature"]))
    session.flush()
    return cp


def list_checkpoints(session: Session, *, since_size: int = 0, limit: int | None = None) -> list[dict]:
    stmt = (select(AuditCheckpoint).where(AuditCheckpoint.tree_size >= since_size)
            .order_by(AuditCheckpoint.tree_size))
    if limit:
        stmt = stmt.limit(limit)
    return [to_dict(cp) for cp in session.execute(stmt).scalars()]


def latest_checkpoint(session: Session) -> dict | None:
    cp = session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size.desc())
                         .limit(1)).scalar_one_or_none()
    return to_dict(cp) if cp else None


def checkpoint_at(session: Session, tree_size: int) -> dict:
    cp = session.execute(select(AuditCheckpoint).where(AuditCheckpoint.tree_size == tree_size)
                         ).scalar_one_or_none()
    if cp is None:
        raise NotFound(f"no audit checkpoint for tree size {tree_size}")
    return to_dict(cp)


def checkpoints_document(session: Session, *, since_size: int = 0, limit: int | None = None,
                         jwks: dict | None = None) -> dict:
    """Checkpoints (all, or from `since_size` on, at most `limit`) plus a consistency proof
    between each consecutive pair: what an auditor downloads (and keeps) to verify an
    export offline. An auditor who kept the previous document asks from its last size."""
    cps = list_checkpoints(session, since_size=since_size, limit=limit)
    proofs = []
    for a, b in zip(cps, cps[1:]):
        try:
            proofs.append(log.consistency_proof(session, a["tree_size"], b["tree_size"]))
        except NotFound as exc:  # a damaged store: publish what can be proven, say what not
            _log.warning("audit tree damaged: no consistency proof %d -> %d: %s",
                         a["tree_size"], b["tree_size"], exc)
    doc = {"checkpoints": cps, "consistency_proofs": proofs}
    if jwks:
        doc["jwks"] = jwks
    return doc


# -- verification (no database) -------------------------------------------------------

class PublicKeys:
    """Ed25519 public keys by key id, plus keys that came without one (PEM files)."""

    def __init__(self):
        self.by_kid: dict[str, Ed25519PublicKey] = {}
        self.anonymous: list[Ed25519PublicKey] = []

    def add(self, key: Ed25519PublicKey, kid: str | None = None) -> None:
        self.by_kid[key_id_for(key)] = key
        if kid:
            self.by_kid[kid] = key
        else:
            self.anonymous.append(key)

    def candidates(self, kid: str) -> list[Ed25519PublicKey]:
        return [self.by_kid[kid]] if kid in self.by_kid else list(self.anonymous)

    def __len__(self) -> int:
        return len(self.by_kid)


def _jwk_key(jwk: dict) -> Ed25519PublicKey | None:
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or "x" not in jwk:
        return None
    x = jwk["x"]
    return Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))


def load_public_keys(data: bytes | str | Path | dict) -> PublicKeys:
    """Keys from a PEM public key, a JWK, or a JWKS (file path, bytes or parsed JSON)."""
    if isinstance(data, Path):
        data = data.read_bytes()
    keys = PublicKeys()
    if isinstance(data, (bytes, str)):
        raw = data.encode() if isinstance(data, str) else data
        if b"-----BEGIN" in raw:
            key = serialization.load_pem_public_key(raw)
            if not isinstance(key, Ed25519PublicKey):
                raise InvalidInput("the public key file is not an Ed25519 key")
            keys.add(key)
            return keys
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise InvalidInput("the public key file is neither PEM nor JSON (JWK/JWKS)") from exc
    jwks = data.get("keys") if isinstance(data, dict) and "keys" in data else [data]
    for jwk in jwks or []:
        if not isinstance(jwk, dict) or jwk.get("purpose") not in (None, "checkpoint"):
            continue  # a key published for bundles or receipts never vouches for the log
        if (key := _jwk_key(jwk)) is not None:
            keys.add(key, jwk.get("kid"))
    if not len(keys):
        raise InvalidInput("no Ed25519 public key found in the key file")
    return keys


def signature_problem(cp: dict, keys: PublicKeys) -> str | None:
    """None when the checkpoint's signature verifies, else what is wrong (one line)."""
    if not isinstance(cp, dict):
        return "malformed checkpoint (not a JSON object)"
    for name, kind in (("origin", str), ("tree_size", int), ("root_hash", str),
                       ("timestamp_ms", int), ("signature", str)):
        if not isinstance(cp.get(name), kind) or isinstance(cp.get(name), bool):
            return f"malformed checkpoint ({name} missing or not a {kind.__name__})"
    if cp["tree_size"] < 0 or not isinstance(cp.get("key_id", ""), str):
        return "malformed checkpoint (negative tree_size or key_id not a string)"
    try:
        msg = body(cp["origin"], cp["tree_size"], bytes.fromhex(cp["root_hash"]),
                   cp["timestamp_ms"])
        sig = base64.b64decode(cp["signature"], validate=True)
    except (KeyError, ValueError, TypeError, InvalidInput) as exc:
        return f"malformed checkpoint ({exc.__class__.__name__}: {exc})"
    candidates = keys.candidates(cp.get("key_id", ""))
    if not candidates:
        return f"signed by unknown key {cp.get('key_id')!r}"
    for key in candidates:
        try:
            key.verify(sig, msg)
            return None
        except InvalidSignature:
            continue
    return f"signature does not verify (key {cp.get('key_id')!r})"
