"""verify_authorization: every way an authorization can be wrong is refused, naming it."""
from __future__ import annotations

import base64
import copy
import json
from datetime import timedelta

import pytest
from joserfc import jws as jose_jws
from joserfc.jwk import OctKey

from tests.authorizations.authz_support import ISSUER, NOW, OTHER_ISSUER
from gateway.trust.authorizations import (MAX_JWS_BYTES, example_claims, new_issuer_key,
                                          sign_authorization, verify_authorization)
from gateway.errors import (AuthorizationDenied, AuthorizationExpired, AuthorizationInvalid,
                            AuthorizationNotYetValid, AuthorizationTooLarge)

PATIENT_VALUES = ("Testperson", "Avery", "MRN-000001", "1970-01-01")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def refused(jws, trust, error=AuthorizationInvalid, now=NOW) -> str:
    with pytest.raises(error) as info:
        verify_authorization(jws, trust, now=now)
    message = str(info.value)
    for value in PATIENT_VALUES:  # errors end up in logs and audit events
        assert value not in message
    return message


# --- signature, issuer, key, alg ------------------------------------------------------

def test_tampered_payload_fails_signature(claims, sign, trust):
    header, _, signature = sign(claims).split(".")
    changed = dict(claims, purpose="Marketing")
    forged = ".".join([header, b64(json.dumps(changed).encode()), signature])
    msg = refused(forged, trust)
    assert "signature does not verify with key 'esign-2026-01' of issuer 'https://esign.example.org'" in msg


def test_signature_by_an_untrusted_key_with_a_trusted_kid(claims, trust):
    impostor = new_issuer_key("esign-2026-01")
    assert "signature does not verify" in refused(sign_authorization(claims, impostor), trust)


def test_unknown_issuer(sign, trust):
    claims = example_claims("https://evil.example", "auth-0001", now=NOW)
    assert refused(sign(claims), trust) == "issuer 'https://evil.example' is not in the trust store"


def test_long_untrusted_values_are_cut_in_messages(sign, trust):
    issuer = "https://evil.example/" + "x" * 5000
    claims = example_claims(issuer, "auth-0001", now=NOW)
    assert refused(sign(claims), trust) == f"issuer {issuer[:100]!r}... is not in the trust store"


def test_unknown_kid(claims, trust):
    stranger = new_issuer_key("not-listed")
    assert "key 'not-listed' is not a trusted key of issuer" in refused(sign_authorization(claims, stranger), trust)


def test_key_of_another_issuer_cannot_sign_for_this_one(claims, trust, other_key):
    msg = refused(sign_authorization(claims, other_key), trust)
    assert msg == f"key 'intake-1' is not a trusted key of issuer '{ISSUER}'"
    # and with its own issuer it is fine
    own = example_claims(OTHER_ISSUER, "auth-0002", now=NOW)
    assert verify_authorization(sign_authorization(own, other_key), trust, now=NOW).issuer == OTHER_ISSUER


def test_missing_kid(claims, sign, trust, issuer_key):
    header = {"alg": "EdDSA", "typ": "authorization+jwt"}
    from joserfc.jwk import OKPKey
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jws = jose_jws.serialize_compact(header, json.dumps(claims).encode(), OKPKey.import_key(issuer_key),
                                         algorithms=["EdDSA"])
    assert "has no kid" in refused(jws, trust)


@pytest.mark.parametrize("alg", ["none", "HS256", "RS256", "ES384", "EdDSA "])
def test_alg_not_allowed(claims, trust, alg):
    header = b64(json.dumps({"alg": alg, "kid": "esign-2026-01", "typ": "authorization+jwt"}).encode())
    forged = f"{header}.{b64(json.dumps(claims).encode())}.{b64(b'x' * 64)}"
    assert f"alg {alg!r} is not allowed (only EdDSA, ES256)" in refused(forged, trust)


def test_hs256_signed_with_the_public_key_bytes_is_refused(claims, trust, issuer_key):
    """The classic confusion attack: HMAC keyed with the issuer's public key."""
    secret = OctKey.import_key(issuer_key["x"].encode())
    jws = jose_jws.serialize_compact({"alg": "HS256", "kid": "esign-2026-01"}, json.dumps(claims).encode(),
                                     secret)
    assert "alg 'HS256' is not allowed" in refused(jws, trust)


def test_alg_that_does_not_fit_the_trusted_key(claims, trust):
    header = b64(json.dumps({"alg": "ES256", "kid": "esign-2026-01", "typ": "authorization+jwt"}).encode())
    forged = f"{header}.{b64(json.dumps(claims).encode())}.{b64(b'x' * 64)}"
    assert "is a EdDSA key; it cannot verify alg ES256" in refused(forged, trust)


def test_wrong_typ_and_crit_are_refused(claims, sign, trust):
    assert "typ must be 'authorization+jwt'" in refused(sign(claims, headers={"typ": "receipt+jwt"}), trust)
    header = {"alg": "EdDSA", "kid": "esign-2026-01", "crit": ["exp"], "exp": 1}
    forged = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(b'x' * 64)}"
    assert "has crit or b64 parameters, which are not supported" in refused(forged, trust)
    header = {"alg": "EdDSA", "kid": "esign-2026-01", "b64": False}
    forged = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(b'x' * 64)}"
    assert "has crit or b64 parameters" in refused(forged, trust)


# --- validity period ------------------------------------------------------------------

def test_expired(claims, sign, trust):
    jws = sign(claims)
    expires = NOW + timedelta(days=30)
    assert verify_authorization(jws, trust, now=expires - timedelta(seconds=1)).id == "auth-0001"
    msg = refused(jws, trust, AuthorizationExpired, now=expires)
    assert msg == f"authorization auth-0001 expired at {expires.isoformat()}"


def test_not_yet_valid(claims, sign, trust):
    claims = copy.deepcopy(claims)
    jws = sign(claims)
    # an issuer's clock up to five minutes ahead of ours is tolerated, more is not
    assert verify_authorization(jws, trust, now=NOW - timedelta(minutes=5)).id == "auth-0001"
    msg = refused(jws, trust, AuthorizationNotYetValid, now=NOW - timedelta(minutes=5, seconds=1))
    assert msg == f"authorization auth-0001 is not valid before {NOW.isoformat()} (clock tolerance 300 s)"


def test_expired_errors_are_denials(claims, sign, trust):
    """Callers catch AuthorizationDenied for every refusal."""
    with pytest.raises(AuthorizationDenied):
        verify_authorization(sign(claims), trust, now=NOW + timedelta(days=31))


# --- malformed input --------------------------------------------------------------------

@pytest.mark.parametrize("value", ["", "abc", "a.b", "a.b.c.d", "a..c", "a b.c.d", "ä.b.c", "a.b.c\n.d"])
def test_not_a_compact_jws(trust, value):
    assert "not a compact JWS" in refused(value, trust)


def test_non_string_input(trust):
    assert "must be a compact JWS string" in refused(12345, trust)
    assert "non-ASCII" in refused("é.b.c".encode(), trust)


def test_header_not_json(claims, trust):
    forged = f"{b64(b'not json')}.{b64(json.dumps(claims).encode())}.{b64(b'x' * 64)}"
    assert "header is not base64url-encoded JSON" in refused(forged, trust)


@pytest.mark.parametrize("segments, expected", [
    ("{h}.A.AAAA", "authorization is not a valid compact JWS (decode_error)"),
    ("e30.e30.AAAA", "authorization JWS header has no alg"),
    ("W10.e30.AAAA", "authorization JWS header is not base64url-encoded JSON"),
])
def test_broken_segments(trust, segments, expected):
    h = b64(json.dumps({"alg": "EdDSA", "kid": "esign-2026-01"}).encode())
    assert refused(segments.format(h=h), trust) == expected


@pytest.mark.parametrize("payload", [b"not json", b"\xff\xfe", b"[1, 2]", b'"a string"', b"{"])
def test_payload_not_a_json_object(trust, issuer_key, payload):
    from joserfc.jwk import OKPKey
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jws = jose_jws.serialize_compact({"alg": "EdDSA", "kid": "esign-2026-01"}, payload,
                                         OKPKey.import_key(issuer_key), algorithms=["EdDSA"])
    msg = refused(jws, trust)
    assert "payload is not UTF-8 JSON" in msg or "payload is not a JSON object" in msg


def test_oversized_input(trust):
    big = "a" * (MAX_JWS_BYTES + 1)
    msg = refused(big, trust, AuthorizationTooLarge)
    assert msg == f"authorization is {MAX_JWS_BYTES + 1} bytes; at most {MAX_JWS_BYTES} are accepted"
    assert AuthorizationTooLarge.http_status == 413
    refused(big.encode(), trust, AuthorizationTooLarge)


def test_large_signed_form_within_the_cap_verifies(sign, trust):
    pdf = b"%PDF-1.4\n" + b"0" * (2 * 1024 * 1024) + b"\n%%EOF\n"
    claims = example_claims(ISSUER, "auth-form", signed_form=pdf, now=NOW)
    auth = verify_authorization(sign(claims), trust, now=NOW)
    import hashlib
    assert auth.form_sha256 == hashlib.sha256(pdf).hexdigest()
    assert auth.consent["sourceAttachment"]["size"] == len(pdf)


def test_signed_form_that_is_not_a_pdf(claims, sign, trust):
    claims["attachment"] = {"contentType": "application/pdf", "data": base64.b64encode(b"hello").decode()}
    assert "attachment.data: is not a PDF" in refused(sign(claims), trust)


# --- the Consent --------------------------------------------------------------------------

def _consent_case(claims, change):
    claims = copy.deepcopy(claims)
    change(claims["consent"])
    return claims


@pytest.mark.parametrize("change, expected", [
    (lambda c: c.pop("scope"), "consent is not a valid FHIR R4 Consent (consent.scope: Field required"),
    (lambda c: c.update(resourceType="Patient"), "consent.resourceType is not 'Consent'"),
    (lambda c: c.update(status="draft"), "consent.status is 'draft', expected 'active'"),
    (lambda c: c.update(dateTime="yesterday"), "consent is not a valid FHIR R4 Consent (consent.dateTime"),
    (lambda c: c["patient"]["identifier"].update(value="MRN-999999"),
     "consent.patient.identifier does not match any of patient.identifiers"),
    (lambda c: c["provision"]["period"].update(end="2027-01-01T00:00:00Z"),
     "consent.provision.period.end does not match exp"),
    (lambda c: c["provision"]["period"].update(start="2026-02-01T00:00:00Z"),
     "consent.provision.period.start does not match nbf"),
    (lambda c: c["provision"].pop("period"), "consent.provision.period is missing"),
    (lambda c: c["provision"].update(dataPeriod={"start": "2020-01-01"}),
     "consent.provision.dataPeriod.start does not match information.dateRange.start"),
    (lambda c: c["provision"]["actor"][-1]["reference"]["identifier"].update(value="org-elsewhere"),
     "consent.provision.actor (role IRCP) does not match recipient"),
    (lambda c: c["provision"]["actor"].pop(0),
     "consent.provision.actor (role CST) does not match disclosers"),
    (lambda c: c["provision"].update(type="deny"), "consent.provision.type is not 'permit'"),
    (lambda c: c.pop("provision"), "consent.provision is missing"),
    (lambda c: c.update(dateTime="2026-02-01"), "consent.dateTime does not match signature.date"),
    (lambda c: c["provision"]["class"].append({"system": "urn:records-gateway:data-class", "code": "labs"}),
     "consent.provision.class does not match information.dataClasses"),
])
def test_consent_invalid_or_inconsistent(claims, sign, trust, change, expected):
    msg = refused(sign(_consent_case(claims, change)), trust)
    assert expected in msg


def test_consent_date_range_must_match(sign, trust):
    from datetime import date
    claims = example_claims(ISSUER, "auth-range", date_range=(date(2020, 1, 1), date(2024, 12, 31)), now=NOW)
    assert verify_authorization(sign(claims), trust, now=NOW).date_range == (date(2020, 1, 1), date(2024, 12, 31))
    claims["information"]["dateRange"]["end"] = "2025-12-31"
    assert "consent.provision.dataPeriod.end does not match information.dateRange.end" in refused(sign(claims), trust)
