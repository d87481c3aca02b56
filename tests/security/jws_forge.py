"""Forging compact JWS objects the way an attacker would: `alg: none`, HS256 keyed with
the issuer's public key (the classic algorithm confusion), another kid, one byte changed
in the payload or the signature. Used by the signed-object matrix and the fuzz seeds."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parts(token: str) -> tuple[dict, bytes, bytes]:
    """(protected header, payload bytes, signature bytes) of a compact JWS."""
    h, p, s = token.split(".")
    return json.loads(unb64url(h)), unb64url(p), unb64url(s)


def compact(header: dict, payload: bytes, signature: bytes) -> str:
    return ".".join([b64url(json.dumps(header, separators=(",", ":")).encode()), b64url(payload),
                     b64url(signature)])


def detached(token: str) -> str:
    """The RFC 7515 appendix F form (payload left out)."""
    h, _, s = token.split(".")
    return f"{h}..{s}"


def attach(detached_token: str, payload: bytes) -> str:
    h, _, s = detached_token.split(".")
    return f"{h}.{b64url(payload)}.{s}"


def alg_none(token: str, keep_signature: bool = False) -> str:
    """`alg: none` and an empty signature (or the old one kept, for verifiers that
    insist on three non-empty parts)."""
    header, payload, sig = parts(token)
    return compact({**header, "alg": "none"}, payload, sig if keep_signature else b"")


def hs256_with(token: str, secret: bytes) -> str:
    """Re-sign with HMAC-SHA256 keyed with `secret` (the issuer's public key bytes)."""
    header, payload, _ = parts(token)
    header = {**header, "alg": "HS256"}
    h = b64url(json.dumps(header, separators=(",", ":")).encode())
    signing_input = f"{h}.{b64url(payload)}".encode()
    return f"{h}.{b64url(payload)}.{b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())}"


def with_kid(token: str, kid: str) -> str:
    """The same payload and signature under another kid (the signature then covers a
    different header, so a verifier that picks the key by kid must refuse it)."""
    header, payload, sig = parts(token)
    return compact({**header, "kid": kid}, payload, sig)


def flip_payload_byte(token: str) -> str:
    """One byte of the signed payload changed, the signature kept."""
    h, p, s = token.split(".")
    return f"{h}.{b64url(flip(unb64url(p)))}.{s}"


def flip_signature_byte(token: str) -> str:
    h, p, s = token.split(".")
    return f"{h}.{p}.{b64url(flip(unb64url(s)))}"


def flip(data: bytes, at: int | None = None) -> bytes:
    """`data` with one byte changed (the middle one unless `at` is given), still ASCII so
    JSON payloads stay readable and only the signature can tell."""
    if not data:
        return b"\x00"
    i = len(data) // 2 if at is None else at
    changed = data[i] ^ 0x01
    if changed < 0x20 or changed in (0x22, 0x5C):  # keep JSON text valid: no control, quote, backslash
        changed = data[i] ^ 0x02
    return data[:i] + bytes([changed]) + data[i + 1:]


def okp_public_bytes(jwk: dict) -> bytes:
    """The raw public key of an OKP JWK (what an HS256 confusion keys the MAC with)."""
    return unb64url(jwk["x"])


def public_pem(jwk: dict) -> bytes:
    from joserfc.jwk import ECKey, OKPKey

    key = (OKPKey if jwk["kty"] == "OKP" else ECKey).import_key(
        {k: v for k, v in jwk.items() if k != "d"})
    return key.as_pem(private=False)


def embedded_jwk(token: str) -> str:
    """Re-signed by a stranger's new key, whose public JWK rides in the header (`jwk`)
    under the same kid: a verifier that trusts header keys would accept it."""
    import warnings

    from joserfc import jws
    from joserfc.jwk import OKPKey

    header, payload, _ = parts(token)
    stranger = OKPKey.generate_key("Ed25519", parameters={"kid": header.get("kid")})
    header = {**header, "jwk": stranger.as_dict(private=False)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc flags "EdDSA" as superseded
        return jws.serialize_compact(header, payload, stranger, algorithms=[header["alg"]])
