"""Patient-bearing database columns, sealed at rest.

The values of these columns (a signed authorization and the Consent it carries, where a
record came from, what the source said about it, why something failed) are stored
AES-256-GCM encrypted under a key derived with HKDF-SHA256 from the deployment's at-rest
master key, the one the blob store uses (it comes from configuration, never from the
database). Each value has a random 96-bit nonce, and the table and column as associated
data, so a value copied into another column fails to open. Equality that must hold in
the database (an item's uniqueness per origin) is checked on a keyed HMAC of the value
(`ColumnKeys.index`), never on clear text.

The keys travel with the engine (`bind_keys`), so every type below finds them through the
dialect it is given, and two gateways in one process keep theirs apart.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Text
from sqlalchemy.engine import Engine
from sqlalchemy.types import TypeDecorator

from gateway.errors import ColumnCorrupted, ConfigError

PREFIX = "sealed1:"  # version 1: base64(nonce || AES-GCM ciphertext and tag)
NONCE = 12
_ATTR = "gateway_column_keys"


def _derive(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


class ColumnKeys:
    """The sealing key and the index key of one deployment, both from its master key."""

    def __init__(self, master_key: bytes):
        self._aead = AESGCM(_derive(master_key, b"records-gateway column v1"))
        self._index = _derive(master_key, b"records-gateway column index v1")

    def seal(self, where: str, plain: bytes) -> str:
        nonce = os.urandom(NONCE)
        sealed = self._aead.encrypt(nonce, plain, where.encode())
        return PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, where: str, text: str) -> bytes:
        if not text.startswith(PREFIX):
            raise ColumnCorrupted(f"{where} holds a value that is not sealed "
                                  "(written around the gateway, or a migration did not run)")
        raw = base64.b64decode(text[len(PREFIX):])
        try:
            return self._aead.decrypt(raw[:NONCE], raw[NONCE:], where.encode())
        except InvalidTag:
            raise ColumnCorrupted(f"a sealed value in {where} failed authentication: changed, "
                                  "moved from another column, or sealed under another key") from None

    def index(self, where: str, value: str) -> str:
        """A keyed HMAC of `value` for equality in the database: stable for one
        deployment, useless for guessing values without the key."""
        return hmac.new(self._index, f"{where}\0{value}".encode(), hashlib.sha256).hexdigest()


def bind_keys(engine: Engine, keys: ColumnKeys) -> None:
    """Give the engine's sealed columns their deployment's keys."""
    setattr(engine.dialect, _ATTR, keys)


def keys_of(dialect) -> ColumnKeys:
    keys = getattr(dialect, _ATTR, None)
    if keys is None:
        raise ConfigError("the database was opened without the at-rest key: "
                          "give Database() the deployment's master key")
    return keys


class SealedText(TypeDecorator):
    """A text column stored sealed; `where` ("table.column") is its associated data."""

    impl = Text
    cache_ok = True

    def __init__(self, where: str):
        super().__init__()
        self.where = where

    def process_bind_param(self, value, dialect):
        return None if value is None else keys_of(dialect).seal(self.where, value.encode())

    def process_result_value(self, value, dialect):
        return None if value is None else keys_of(dialect).open(self.where, value).decode()


class SealedJSON(SealedText):
    """A JSON value (dict or list) stored sealed."""

    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return keys_of(dialect).seal(self.where, text.encode())

    def process_result_value(self, value, dialect):
        return None if value is None else json.loads(keys_of(dialect).open(self.where, value))
