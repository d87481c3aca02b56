"""Signatures over bundles and the receipts that prove what was received.

- Bundle signature: a detached JWS (RFC 7515 appendix F) over the exact bytes sent,
  made with the sender's current Ed25519 key (joserfc: the project's JOSE library,
  maintained, typed, supports detached content and the fully-specified Ed25519 alg).
  Sent in the `X-Bundle-Signature` header; the receiver rebuilds the signing input from
  the body it got, so one changed byte fails.
- Delivery receipt: a compact JWS by the receiver naming the bundle, the sha256 and
  size of the bytes it received, the sha256 of every entry (canonical JSON of each
  resource, `gateway.exchange.ids.entry_hash`), per DICOM study the instances it holds
  (received by STOW-RS, as the manifest lists them) with a digest of their sha256s,
  time, receiver and status.
  The sender checks every claim against what it sent; any difference is an error.
- "Opened" receipt: signed by the receiver when a person at the center opens the
  records, posted back to the sender (`POST /receipts`).
"""
from __future__ import annotations

import json

import requests
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.errors import ReceiptInvalid

from .keys import (
    ALG,
    BUNDLE_TYP,
    OPENED_TYP,
    RECEIPT_TYP,
    REGISTRY,
    SigningKeys,
    check_purpose,
    verify_jws,
)

SIGNATURE_HEADER = "X-Bundle-Signature"


class SignatureInvalid(ReceiptInvalid):
    """A bundle's detached signature is missing or does not verify with a trusted key."""

    http_status = 403


def sign_bundle(keys: SigningKeys, payload: bytes, bundle_identifier: str) -> str:
    """Detached compact JWS (header..signature) over `payload`."""
    key = keys.current("bundle")
    header = {"alg": ALG, "kid": key.kid, "typ": BUNDLE_TYP}
    compact = jws.serialize_compact(header, payload, key, algorithms=[ALG])
    return jws.detach_content(compact)


def verify_bundle(detached: str, payload: bytes, jwks: dict) -> dict:
    """Verify a detached bundle signature; return its protected header."""
    if not detached or detached.count(".") != 2 or detached.split(".")[1] != "":
        raise SignatureInvalid("the bundle carries no detached JWS signature "
                               f"({SIGNATURE_HEADER} header, RFC 7515 appendix F)")
    try:
        obj = jws.deserialize_compact(detached, KeySet.import_key_set(jwks), registry=REGISTRY,
                                      payload=payload)
    except (JoseError, ValueError, TypeError) as exc:
        raise SignatureInvalid("the bundle signature does not verify with the sender's trusted "
                               f"keys ({exc.__class__.__name__})") from None
    header = obj.headers()
    if header.get("typ") != BUNDLE_TYP:
        raise SignatureInvalid(f"the bundle signature is not a {BUNDLE_TYP}")
    try:
        check_purpose(jwks, header.get("kid"), BUNDLE_TYP)
    except ReceiptInvalid as exc:
        raise SignatureInvalid(str(exc)) from None
    return header


def fetch_jwks(jwks_file, url: str | None, who: str, tls: dict | None = None) -> dict:
    """A party's public keys, from its configured file or URL (`tls`: the `requests`
    arguments that check the party's certificate, see `TlsClient.tls`)."""
    from gateway.errors import DeliveryFailed

    if jwks_file is not None:
        try:
            return json.loads(jwks_file.read_text())
        except (OSError, ValueError) as exc:
            from gateway.errors import ConfigError
            raise ConfigError(f"keys of {who}: cannot read {jwks_file} ({type(exc).__name__})") from None
    if not url:
        from gateway.errors import ConfigError
        raise ConfigError(f"no keys configured for {who} (jwks_file or jwks_url)")
    try:
        response = requests.get(url, timeout=10, allow_redirects=False, **(tls or {}))
        response.raise_for_status()
        return response.json()
    except (requests.RequestException, ValueError) as exc:
        raise DeliveryFailed(f"cannot fetch the keys of {who} ({type(exc).__name__})") from None


def check_receipt(receipt_jws: str, jwks: dict, *, issuer: str, sender: str, bundle: str,
                  sha256: str, size: int, entry_hashes: dict[str, str], who: str,
                  attachments: dict[str, dict] | None = None) -> dict:
    """Verify a delivery receipt and that it names exactly what was sent, including the
    sha256 and size of every document uploaded beside the bundle (`attachments`)."""
    claims = verify_jws(receipt_jws, jwks, RECEIPT_TYP)
    problems = []
    if claims.get("iss") != issuer:
        problems.append("issued by another organization")
    if claims.get("sender") != sender:
        problems.append("names another sender")
    if claims.get("bundle") != bundle:
        problems.append("names another bundle")
    if claims.get("sha256") != sha256:
        problems.append("hash differs from the bundle sent")
    if claims.get("size") != size:
        problems.append("size differs from the bundle sent")
    got = claims.get("entryHashes")
    if not isinstance(got, dict) or got != entry_hashes:
        differ = (len(set(entry_hashes.items()) ^ set(got.items()))
                  if isinstance(got, dict) else len(entry_hashes))
        problems.append(f"per-entry hashes differ ({differ} entries)")
    if (claims.get("attachments") or {}) != (attachments or {}):
        problems.append("the uploaded documents it holds differ from those sent")
    if claims.get("status") != "accepted":
        problems.append(f"status is {claims.get('status')!r}")
    if problems:
        raise ReceiptInvalid(f"receipt from {who} does not match: {', '.join(problems)}")
    return claims


def check_opened(opened_jws: str, jwks: dict, *, issuer: str) -> dict:
    claims = verify_jws(opened_jws, jwks, OPENED_TYP)
    if claims.get("iss") != issuer:
        raise ReceiptInvalid("opened receipt issued by another organization")
    for name in ("bundle", "openedBy", "openedAt", "receipt_id"):
        if not isinstance(claims.get(name), str):
            raise ReceiptInvalid(f"opened receipt lacks {name}")
    return claims
