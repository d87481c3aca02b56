"""Signed revocations: the issuer of an authorization says it is revoked.

A second-opinion center's intake signed the authorization it sent to every hospital;
when the patient revokes it, the center signs a revocation with the same issuer key and
sends it to each of them (`POST /authorizations/{id}/revocation`). A hospital accepts it
only from the issuer of the stored authorization, checked against its trust store, and
then revokes as an operator would: work in flight stops.

Compact JWS, protected header `{"alg", "kid", "typ": "revocation+jwt"}`, payload:

```
iss            str  the authorization's issuer
authorization  str  the authorization's id (its jti)
iat            int  when it was signed (NumericDate)
reason         str  why (1-1000 characters; never patient data)
```
"""
from __future__ import annotations

import base64
import binascii
import json
import time
import warnings

from joserfc import jws as jose_jws
from joserfc.errors import BadSignatureError, JoseError

from gateway.errors import AuthorizationInvalid
from gateway.trust.issuers import TrustStore

from .issuer import _import
from .schema import ALGORITHMS, JWS_REGISTRY

REVOCATION_TYPE = "revocation+jwt"
MAX_REVOCATION_BYTES = 8192


def sign_revocation(issuer: str, authorization_id: str, reason: str, private_key: dict) -> str:
    """The issuer's signed word that `authorization_id` is revoked."""
    key = _import(private_key)
    alg = private_key.get("alg") or "EdDSA"
    payload = {"iss": issuer, "authorization": authorization_id, "iat": int(time.time()),
               "reason": reason}
    header = {"alg": alg, "kid": key.kid, "typ": REVOCATION_TYPE}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc flags "EdDSA" as superseded by "Ed25519"
        return jose_jws.serialize_compact(header, json.dumps(payload).encode(), key,
                                          algorithms=[alg], registry=JWS_REGISTRY)


def verify_revocation(text: str, trust: TrustStore, authorization_id: str, issuer: str) -> dict:
    """The payload of a revocation of `authorization_id` signed by `issuer` (the stored
    authorization's); raises AuthorizationInvalid naming what is wrong."""
    def bad(msg: str) -> AuthorizationInvalid:
        return AuthorizationInvalid(f"revocation refused: {msg}", element="revocation")

    if not isinstance(text, str) or not text or len(text) > MAX_REVOCATION_BYTES:
        raise bad(f"send a compact JWS of at most {MAX_REVOCATION_BYTES} bytes")
    text = text.strip()
    try:
        segment = text.split(".", 1)[0]
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        payload = json.loads(jose_jws.extract_compact(text.encode("ascii"),
                                                      registry=JWS_REGISTRY).payload)
    except (ValueError, binascii.Error, UnicodeError, JoseError):
        raise bad("not a compact JWS with a JSON header and payload") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise bad("header and payload must be JSON objects")
    if header.get("typ") != REVOCATION_TYPE or header.get("alg") not in ALGORITHMS:
        raise bad(f"typ must be {REVOCATION_TYPE!r} and alg one of {', '.join(ALGORITHMS)}")
    if payload.get("iss") != issuer:
        raise bad("it is not signed by the issuer of the authorization")
    if payload.get("authorization") != authorization_id:
        raise bad("it names another authorization")
    reason = payload.get("reason")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 1000:
        raise bad("it needs a reason of 1-1000 characters")
    trusted = trust.key_for(issuer, header.get("kid"))
    if trusted.alg != header["alg"]:
        raise bad(f"key {header.get('kid')!r} cannot verify alg {header['alg']}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            jose_jws.deserialize_compact(text, trusted.key, algorithms=[header["alg"]],
                                         registry=JWS_REGISTRY)
    except BadSignatureError:
        raise bad(f"the signature does not verify with key {header.get('kid')!r}") from None
    except JoseError as exc:
        raise bad(f"the signature cannot be checked: {exc.error}") from None
    return payload
