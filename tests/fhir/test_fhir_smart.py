"""SMART Backend Services against a real OAuth 2.0 server (oidc-provider on node) and a FHIR
server that accepts only its tokens (sekmet behind tests/fhir/jwt_proxy.py)."""
from __future__ import annotations

import time

import pytest
import requests

from connectors.base import SourceRejected
from connectors.fhir.smart import ASSERTION_TYPE, SmartBackendAuth
from connectors.fhir.connector import FhirRestConnector
from tests.fhir.conftest import query_for


def smart_options(stack, key, client_id, kid=None, **auth):
    # the authorization server is on another origin than the FHIR base: listed, as it must be
    origin = stack["auth"].token_endpoint.split("/", 3)
    return {"base_url": stack["base"],
            "auth": {"type": "smart-backend", "client_id": client_id, "private_key": key.as_pem(private=True).decode(),
                     "kid": kid, "scope": "system/*.read", "resource": stack["base"],
                     "token_origins": ["/".join(origin[:3])], **auth}}


@pytest.mark.parametrize("client_id,key_name,kid", [("gateway-rsa", "rsa", "rsa-1"), ("gateway-ec", "ec", None)])
def test_pull_with_smart_backend_services(smart_stack, client_keys, tmp_path, client_id, key_name, kid):
    options = smart_options(smart_stack, client_keys[key_name], client_id, kid, retrieval="search", page_size=100)
    with FhirRestConnector("ehr", options, tmp_path) as conn:
        conn.check()  # discovery + a token
        records = list(conn.fetch(query_for(smart_stack["patient"], data_classes=frozenset({"labs", "vitals"}))))
        auth = conn.http.auth
    assert records and sum(r.metadata["resources"] for r in records) > 100
    assert auth.alg == ("RS384" if key_name == "rsa" else "ES384")
    assert auth.token_url == smart_stack["auth"].token_endpoint  # discovered
    assert auth.tokens_issued == 1  # reused for every request of the pull
    assert auth.granted_scope == "system/*.read"


def test_a_token_endpoint_on_an_origin_not_listed_is_refused(smart_stack, client_keys, tmp_path):
    """A server's smart-configuration cannot send our client assertion to any host: the
    discovered endpoint must be on the FHIR base's origin or on one the configuration lists."""
    options = smart_options(smart_stack, client_keys["rsa"], "gateway-rsa", "rsa-1",
                            token_origins=[])
    with FhirRestConnector("ehr", options, tmp_path) as conn:
        with pytest.raises(SourceRejected, match="another origin.*token_origins"):
            conn.check()
        assert conn.http.auth.tokens_issued == 0


def test_the_fhir_server_accepts_only_tokens_from_its_authorization_server(smart_stack):
    base = smart_stack["base"]
    assert requests.get(f"{base}/metadata", timeout=10).status_code == 200  # public
    assert requests.get(f"{base}/Patient", timeout=10).status_code == 401
    assert requests.get(f"{base}/Patient", headers={"Authorization": "Bearer not.a.jwt"}, timeout=10).status_code == 401


def test_token_expiry_renews(smart_stack, client_keys, tmp_path):
    clock = [time.time()]
    options = smart_options(smart_stack, client_keys["rsa"], "gateway-rsa", "rsa-1")
    with FhirRestConnector("ehr", options, tmp_path) as conn:
        auth = conn.http.auth
        auth.clock = lambda: clock[0]
        conn.check()
        first = auth.token()
        assert auth.token() == first
        clock[0] += 600  # past expires_in (300 s)
        assert auth.token() != first and auth.tokens_issued == 2


def _token_request(stack, auth: SmartBackendAuth, assertion: str):
    return requests.post(stack["auth"].token_endpoint, timeout=10, data={
        "grant_type": "client_credentials", "scope": "system/*.read", "resource": stack["base"],
        "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion})


def test_wrong_key_expired_assertion_and_replayed_jti_are_refused(smart_stack, client_keys, tmp_path):
    # a key the authorization server does not know
    options = smart_options(smart_stack, client_keys["stranger"], "gateway-rsa", "rsa-1")
    with FhirRestConnector("ehr", options, tmp_path) as conn:
        with pytest.raises(SourceRejected, match=r"token endpoint refused the client \(HTTP 40[01]\)") \
                as refused:
            conn.check()
    assert "invalid" not in str(refused.value)  # the server's words stay out of the error

    auth = SmartBackendAuth(None, client_id="gateway-rsa", private_key=client_keys["rsa"], kid="rsa-1",
                            token_url=smart_stack["auth"].token_endpoint)
    # an assertion that expired an hour ago
    auth.clock = lambda: time.time() - 3600
    expired = _token_request(smart_stack, auth, auth.client_assertion(auth.token_url))
    assert expired.status_code in (400, 401) and expired.json()["error"] == "invalid_client"
    # a valid assertion works once; the same jti a second time is refused
    auth.clock = time.time
    assertion = auth.client_assertion(auth.token_url)
    assert _token_request(smart_stack, auth, assertion).status_code == 200
    replay = _token_request(smart_stack, auth, assertion)
    assert replay.status_code in (400, 401) and replay.json()["error"] == "invalid_client"
    # (oidc-provider hides the reason; a fresh assertion right after still works, so the
    # refusal is the reused jti)
    assert _token_request(smart_stack, auth, auth.client_assertion(auth.token_url)).status_code == 200


def test_bearer_mode(smart_stack, client_keys, tmp_path):
    auth = SmartBackendAuth(None, client_id="gateway-ec", private_key=client_keys["ec"],
                            token_url=smart_stack["auth"].token_endpoint, resource=smart_stack["base"])
    token = _token_request(smart_stack, auth, auth.client_assertion(auth.token_url)).json()["access_token"]
    options = {"base_url": smart_stack["base"], "auth": {"type": "bearer", "token": token}, "retrieval": "search"}
    with FhirRestConnector("ehr", options, tmp_path / "ok") as conn:
        assert list(conn.fetch(query_for(smart_stack["patient"], data_classes=frozenset({"immunizations"}))))
    options["auth"]["token"] = token[:-4] + "AAAA"
    with FhirRestConnector("ehr", options, tmp_path / "bad") as conn:
        with pytest.raises(SourceRejected, match="401"):
            list(conn.fetch(query_for(smart_stack["patient"])))
