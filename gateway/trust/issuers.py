"""The issuer trust store: which parties may sign release authorizations, with which keys.

Trust is configured, never assumed. The store is one JSON file, a JWKS (RFC 7517) with
one extra member mapping each issuer to the key ids it signs with:

```json
{
  "keys": [
    {"kty": "OKP", "crv": "Ed25519", "x": "...", "kid": "esign-2026-01"},
    {"kty": "EC", "crv": "P-256", "x": "...", "y": "...", "kid": "intake-1", "alg": "ES256"}
  ],
  "issuers": {
    "https://esign.example.org": ["esign-2026-01"],
    "https://intake.second-opinion.example": ["intake-1"]
  }
}
```

Rules, checked when the file is loaded (a bad file fails at once, naming the problem):
- every key is public (no "d"), has a unique `kid`, and is an Ed25519 OKP key (for
  alg EdDSA) or a P-256 EC key (for alg ES256); an optional `alg` must fit the key;
- `issuers` maps an issuer id (the authorization's `iss`, 1-255 characters) to a
  non-empty list of kids present in `keys`; a kid belongs to exactly one issuer, so a
  key of one issuer can never vouch for another;
- rotation: list the new kid beside the old one; remove the old kid to stop accepting
  what it signed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey

from gateway.errors import AuthorizationInvalid, ConfigError

# alg -> (kty, crv) a key must have to verify it
ALG_KEY = {"EdDSA": ("OKP", "Ed25519"), "ES256": ("EC", "P-256")}


@dataclass(frozen=True)
class TrustedKey:
    issuer: str
    kid: str
    alg: str  # the only alg this key verifies
    key: OKPKey | ECKey = field(repr=False)


class TrustStore:
    """Issuer id -> trusted public keys. Build with `load`, `from_dict` or `from_issuers`."""

    def __init__(self, keys: Mapping[tuple[str, str], TrustedKey]):
        self._keys = dict(keys)

    @classmethod
    def load(cls, path: str | Path) -> "TrustStore":
        """Read and check a trust store file (format in the module docstring)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"trust store {path}: cannot read ({exc.strerror})") from None
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"trust store {path}: not JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(doc, source=str(path))

    @classmethod
    def from_dict(cls, doc: object, source: str = "trust store") -> "TrustStore":
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"{source}: {msg}")

        if not isinstance(doc, dict):
            raise bad("must be a JSON object with 'keys' and 'issuers'")
        keys, issuers = doc.get("keys"), doc.get("issuers")
        if not isinstance(keys, list):
            raise bad("'keys' must be a list of JWKs")
        if not isinstance(issuers, dict):
            raise bad("'issuers' must map issuer ids to lists of kids")
        by_kid: dict[str, tuple[str, OKPKey | ECKey]] = {}
        for i, jwk in enumerate(keys):
            if not isinstance(jwk, dict):
                raise bad(f"keys[{i}] is not a JSON object")
            kid = jwk.get("kid")
            if not isinstance(kid, str) or not kid:
                raise bad(f"keys[{i}] has no kid")
            if kid in by_kid:
                raise bad(f"kid {kid!r} appears twice")
            if "d" in jwk:
                raise bad(f"key {kid!r} contains private key material; list public keys only")
            kty_crv = (jwk.get("kty"), jwk.get("crv"))
            algs = [a for a, kc in ALG_KEY.items() if kc == kty_crv]
            if not algs:
                raise bad(f"key {kid!r} is {kty_crv[0]}/{kty_crv[1]}; only OKP/Ed25519 (EdDSA) "
                          "and EC/P-256 (ES256) are accepted")
            alg = algs[0]
            if "alg" in jwk and jwk["alg"] != alg:
                raise bad(f"key {kid!r} says alg {jwk['alg']!r} but is a {alg} key")
            try:
                key = (OKPKey if alg == "EdDSA" else ECKey).import_key(jwk)
            except (JoseError, ValueError, TypeError) as exc:
                raise bad(f"key {kid!r} is not a valid JWK ({exc})") from None
            by_kid[kid] = (alg, key)
        owner: dict[str, str] = {}
        trusted: dict[tuple[str, str], TrustedKey] = {}
        for issuer, kids in issuers.items():
            if not isinstance(issuer, str) or not 0 < len(issuer) <= 255:
                raise bad("issuer ids must be 1-255 characters")
            if not isinstance(kids, list) or not kids:
                raise bad(f"issuer {issuer!r} must list at least one kid")
            for kid in kids:
                if kid not in by_kid:
                    raise bad(f"issuer {issuer!r} lists kid {kid!r}, which is not in 'keys'")
                if kid in owner and owner[kid] != issuer:
                    raise bad(f"kid {kid!r} is listed for both {owner[kid]!r} and {issuer!r}")
                owner[kid] = issuer
                alg, key = by_kid[kid]
                trusted[(issuer, kid)] = TrustedKey(issuer, kid, alg, key)
        return cls(trusted)

    @classmethod
    def from_issuers(cls, issuers: Mapping[str, list[dict]]) -> "TrustStore":
        """A store from {issuer: [public or private JWK dicts]}; private parts are dropped."""
        return cls.from_dict(trust_document(issuers), source="trust store")

    @property
    def issuers(self) -> list[str]:
        return sorted({issuer for issuer, _ in self._keys})

    def key_for(self, issuer: str, kid: str | None) -> TrustedKey:
        """The key `issuer` signs with under `kid`; AuthorizationInvalid names what is unknown."""
        if not any(i == issuer for i, _ in self._keys):
            raise AuthorizationInvalid(f"issuer {_short(issuer)} is not in the trust store",
                                       element="iss")
        if not kid:
            raise AuthorizationInvalid("JWS header has no kid; the issuer's key cannot be chosen",
                                       element="kid")
        try:
            return self._keys[(issuer, kid)]
        except KeyError:
            raise AuthorizationInvalid(f"key {_short(kid)} is not a trusted key of issuer {issuer!r}",
                                       element="kid") from None


def _short(value: str, limit: int = 100) -> str:
    """repr() of an untrusted value for a message, cut to `limit` characters."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


def public_jwk(jwk: dict) -> dict:
    """The public members of a JWK (drops "d" and any other private member)."""
    return {k: v for k, v in jwk.items() if k not in {"d", "p", "q", "dp", "dq", "qi", "k"}}


def trust_document(issuers: Mapping[str, list[dict]]) -> dict:
    """A trust store file's JSON for {issuer: [JWK dicts]} (private members dropped)."""
    keys = [public_jwk(k) for ks in issuers.values() for k in ks]
    return {"keys": keys, "issuers": {iss: [k["kid"] for k in ks] for iss, ks in issuers.items()}}
