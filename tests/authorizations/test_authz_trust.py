"""The issuer trust store file: loading, its checks, and key rotation."""
from __future__ import annotations

import json
import re

import pytest
from joserfc.jwk import ECKey, RSAKey

from tests.authorizations.authz_support import ISSUER, NOW
from gateway.trust.authorizations import (example_claims, new_issuer_key, public_jwks,
                                          sign_authorization, verify_authorization)
from gateway.errors import AuthorizationInvalid, ConfigError
from gateway.trust.issuers import TrustStore, trust_document


def write(tmp_path, doc) -> str:
    path = tmp_path / "trust.json"
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(path)


def test_load_from_file_and_verify(tmp_path, issuer_key):
    path = write(tmp_path, {"keys": public_jwks([issuer_key])["keys"], "issuers": {ISSUER: ["esign-2026-01"]}})
    trust = TrustStore.load(path)
    assert trust.issuers == [ISSUER]
    jws = sign_authorization(example_claims(ISSUER, "auth-1", now=NOW), issuer_key)
    assert verify_authorization(jws, trust, now=NOW).kid == "esign-2026-01"


def test_trust_document_has_no_private_members(issuer_key, es256_key):
    doc = trust_document({ISSUER: [issuer_key, es256_key]})
    assert all("d" not in k for k in doc["keys"])
    assert doc["issuers"] == {ISSUER: ["esign-2026-01", "esign-ec-1"]}


def test_rotation_old_and_new_keys_then_retire_old(tmp_path, issuer_key):
    new = new_issuer_key("esign-2026-07")
    old_jws = sign_authorization(example_claims(ISSUER, "auth-old", now=NOW), issuer_key)
    new_jws = sign_authorization(example_claims(ISSUER, "auth-new", now=NOW), new)
    both = TrustStore.from_issuers({ISSUER: [issuer_key, new]})
    assert verify_authorization(old_jws, both, now=NOW).id == "auth-old"
    assert verify_authorization(new_jws, both, now=NOW).id == "auth-new"
    retired = TrustStore.from_issuers({ISSUER: [new]})
    with pytest.raises(AuthorizationInvalid, match="key 'esign-2026-01' is not a trusted key"):
        verify_authorization(old_jws, retired, now=NOW)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["keys"][0].update(d="secret"), "contains private key material"),
    (lambda d: d["keys"].append(dict(d["keys"][0])), "kid 'esign-2026-01' appears twice"),
    (lambda d: d["issuers"].update({ISSUER: ["missing"]}), "lists kid 'missing', which is not in 'keys'"),
    (lambda d: d["issuers"].update({"https://other.example": ["esign-2026-01"]}),
     "is listed for both"),
    (lambda d: d["issuers"].update({ISSUER: []}), "must list at least one kid"),
    (lambda d: d["keys"][0].pop("kid"), "keys[0] has no kid"),
    (lambda d: d["keys"][0].update(alg="ES256"), "says alg 'ES256' but is a EdDSA key"),
    (lambda d: d["keys"][0].update(x="!!"), "is not a valid JWK"),
    (lambda d: d.pop("issuers"), "'issuers' must map issuer ids"),
    (lambda d: d.update(keys={}), "'keys' must be a list of JWKs"),
])
def test_bad_trust_store_fails_naming_the_problem(tmp_path, issuer_key, mutate, expected):
    doc = trust_document({ISSUER: [issuer_key]})
    mutate(doc)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        TrustStore.load(write(tmp_path, doc))


@pytest.mark.parametrize("key", [RSAKey.generate_key(2048, parameters={"kid": "rsa"}),
                                 ECKey.generate_key("P-384", parameters={"kid": "p384"})],
                         ids=["RSA", "P-384"])
def test_other_key_types_are_refused(tmp_path, key):
    doc = {"keys": [key.as_dict(private=False)], "issuers": {ISSUER: [key.kid]}}
    with pytest.raises(ConfigError, match="only OKP/Ed25519 \\(EdDSA\\) and EC/P-256 \\(ES256\\)"):
        TrustStore.load(write(tmp_path, doc))


def test_unreadable_or_not_json(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        TrustStore.load(tmp_path / "absent.json")
    with pytest.raises(ConfigError, match="not JSON"):
        TrustStore.load(write(tmp_path, "{not json"))
