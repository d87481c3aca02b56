"""Signed release authorizations: verify, store, revoke, and check what they cover.

Nothing is pulled or delivered without one. The format (a compact JWS over a payload
carrying a FHIR R4 Consent and the HIPAA 45 CFR 164.508(c) core elements) is documented
in `schema.py`; verification and the coverage checks every transfer step calls are in
`verify.py`; storage and revocation in `store.py`; an issuer's signed revocation in
`revocation.py`; the issuing side (keys, signing,
example claims for the demo and tests) in `issuer.py`. Trust in issuers: gateway/trust/issuers.py.
"""
from .issuer import example_claims, new_issuer_key, public_jwks, sign_authorization
from .revocation import REVOCATION_TYPE, sign_revocation, verify_revocation
from .schema import (
                     ALGORITHMS,
                     ENDPOINT_TYPES,
                     JWS_TYPE,
                     MAX_JWS_BYTES,
                     REQUIRED_ELEMENTS,
                     Claims,
                     validate_claims,
)
from .store import import_authorization, revoke, signed_form
from .verify import (
                     VerifiedAuthorization,
                     allows,
                     check_active,
                     covers_recipient,
                     covers_source,
                     jws_sha256,
                     verify_authorization,
)

__all__ = [
    "ALGORITHMS", "ENDPOINT_TYPES", "JWS_TYPE", "MAX_JWS_BYTES", "REQUIRED_ELEMENTS", "Claims",
    "VerifiedAuthorization", "allows", "check_active", "covers_recipient", "covers_source",
    "example_claims", "import_authorization", "jws_sha256", "new_issuer_key", "public_jwks",
    "revoke", "sign_authorization", "signed_form", "validate_claims", "verify_authorization",
    "REVOCATION_TYPE", "sign_revocation", "verify_revocation",
]
