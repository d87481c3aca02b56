"""The issuing side, for the demo and the tests: issuer keys, signing, example claims.

A real issuer is the patient's e-signature service or the second-opinion center's
intake; they sign with their own tooling. This module signs exactly what
`verify_authorization` accepts, so the demo can make one in a line:

    key = new_issuer_key("demo-1")
    trust = TrustStore.from_issuers({"https://issuer.example": [key]})
    jws = sign_authorization(example_claims("https://issuer.example", "auth-1"), key)
"""
from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import warnings
from datetime import date, datetime, timezone
from typing import Iterable

from joserfc import jws as jose_jws
from joserfc.jwk import ECKey, OKPKey

from gateway.trust.issuers import public_jwk
from mappings.consent import build_consent

from .schema import ALGORITHMS, JWS_REGISTRY, JWS_TYPE

SYNTHETIC_PATIENT = {
    "name": {"family": "Testperson", "given": ["Avery"]},
    "birthDate": "1970-01-01",
    "identifiers": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-000001"}],
}
DEMO_DISCLOSER = {"id": "org-demo-clinic", "name": "Demo Clinic",
                  "endpoints": [{"type": "pdf-folder", "address": "demo-clinic"}]}
DEMO_RECIPIENT = {"id": "org-second-opinion", "name": "Second Opinion Center",
                  "endpoint": {"type": "gateway", "address": "http://127.0.0.1:8081"}}
STATEMENTS = {
    "rightToRevoke": ("You may revoke this authorization at any time by writing to the "
                      "records office of each organization named above; revocation does not "
                      "affect disclosures already made."),
    "treatmentConditioned": False,
    "conditioning": ("Your treatment, payment, enrollment or eligibility for benefits will not "
                     "be conditioned on whether you sign this authorization."),
    "redisclosure": ("Information disclosed under this authorization may be redisclosed by the "
                     "recipient and may no longer be protected by federal privacy rules."),
}


def new_issuer_key(kid: str, alg: str = "EdDSA") -> dict:
    """A new private JWK (dict, with kid and alg) for an issuer: Ed25519 or P-256."""
    if alg not in ALGORITHMS:
        raise ValueError(f"alg must be one of {ALGORITHMS}")
    params = {"kid": kid, "alg": alg}
    key = (OKPKey.generate_key("Ed25519", parameters=params) if alg == "EdDSA"
           else ECKey.generate_key("P-256", parameters=params))
    return key.as_dict(private=True)


def public_jwks(keys: Iterable[dict]) -> dict:
    """The JWKS of the public halves of these JWKs."""
    return {"keys": [public_jwk(k) for k in keys]}


def _import(private_key: dict | OKPKey | ECKey) -> OKPKey | ECKey:
    if isinstance(private_key, (OKPKey, ECKey)):
        return private_key
    return (OKPKey if private_key.get("kty") == "OKP" else ECKey).import_key(private_key)


def sign_authorization(claims: dict, private_key: dict | OKPKey | ECKey, *, alg: str | None = None,
                       headers: dict | None = None) -> str:
    """Sign `claims` as a compact JWS with the key's alg (EdDSA for Ed25519, ES256 for P-256).

    `alg` and `headers` override the protected header (tests use them to make bad ones).
    """
    key = _import(private_key)
    alg = alg or (key.alg if getattr(key, "alg", None) else
                  "EdDSA" if isinstance(key, OKPKey) else "ES256")
    header = {"alg": alg, "kid": key.kid, "typ": JWS_TYPE, **(headers or {})}
    payload = json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc flags "EdDSA" as superseded by "Ed25519"
        return jose_jws.serialize_compact(header, payload, key, algorithms=[alg],
                                          registry=JWS_REGISTRY if alg in ALGORITHMS else None)


def example_claims(issuer: str, jti: str, *, patient: dict | None = None,
                   disclosers: list[dict] | None = None, recipient: dict | None = None,
                   data_classes: Iterable[str] = ("all",), valid_days: float = 30,
                   date_range: tuple[date | None, date | None] | None = None,
                   purpose: str = "Second opinion on the patient's diagnosis and treatment plan",
                   representative_authority: str | None = None, signed_form: bytes | None = None,
                   now: datetime | None = None) -> dict:
    """A complete, valid authorization payload (synthetic patient unless one is given).

    `disclosers`/`recipient` follow the schema in schema.py; `date_range` is
    (start, end) clinical dates; `representative_authority` makes a representative the
    signer; `signed_form` attaches PDF bytes.
    """
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(microsecond=0)
    patient = copy.deepcopy(patient or SYNTHETIC_PATIENT)
    disclosers = copy.deepcopy(disclosers or [DEMO_DISCLOSER])
    recipient = copy.deepcopy(recipient or DEMO_RECIPIENT)
    iat = int(now.timestamp())
    exp = iat + int(valid_days * 86400)
    not_before = datetime.fromtimestamp(iat, timezone.utc)
    expires_at = datetime.fromtimestamp(exp, timezone.utc)
    signature = {"signedBy": "patient", "name": " ".join(patient["name"].get("given", []) +
                                                         [patient["name"]["family"]]),
                 "date": now.date().isoformat()}
    if representative_authority:
        signature = {"signedBy": "representative", "name": "Jordan Representative",
                     "date": now.date().isoformat(), "authority": representative_authority}
    information: dict = {"dataClasses": sorted(data_classes)}
    rng = None
    if date_range and (date_range[0] or date_range[1]):
        rng = {k: v for k, v in zip(("start", "end"), date_range) if v}
        information["dateRange"] = {k: v.isoformat() for k, v in rng.items()}
    form_hash = None
    claims: dict = {
        "iss": issuer, "jti": jti, "iat": iat, "nbf": iat, "exp": exp,
        "patient": patient,
        "signature": signature,
        "information": information,
        "disclosers": disclosers,
        "recipient": recipient,
        "purpose": purpose,
        "expiration": {"date": expires_at.date().isoformat(),
                       "event": "the end of the second-opinion review"},
        "statements": dict(STATEMENTS),
    }
    if signed_form is not None:
        claims["attachment"] = {"contentType": "application/pdf", "title": "signed authorization form",
                                "data": base64.b64encode(signed_form).decode("ascii")}
        form_hash = base64.b64encode(hashlib.sha256(signed_form).digest()).decode("ascii")
    claims["consent"] = build_consent(
        patient_identifier=patient["identifiers"][0], signed_on=now.date(), not_before=not_before,
        expires_at=expires_at, disclosers=disclosers, recipient=recipient,
        data_classes=data_classes, purpose=purpose, date_range=rng, form_sha256_b64=form_hash,
        form_size=len(signed_form) if signed_form is not None else None,
        consent_id=jti if re.fullmatch(r"[A-Za-z0-9.-]{1,64}", jti) else None)
    return claims
