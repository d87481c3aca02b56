"""A hospital takes a peer's authorization and, later, its issuer's signed revocation:
only from the issuer of the stored authorization, for that authorization; then the
authorization is revoked as if an operator had done it."""
from __future__ import annotations

from gateway.trust.authorizations import new_issuer_key, sign_revocation
from tests.helpers import ISSUER, bearer, make_token


def test_a_signed_revocation_is_taken_only_from_the_issuer(app, client, claims_for, sign,
                                                           issuer_private_key):
    peer = bearer(make_token(app, "peer", "center"))
    claims = claims_for()
    r = client.post("/authorizations", json={"jws": sign(claims)}, headers=peer)
    assert r.status_code == 201, r.get_json()
    auth_id = r.get_json()["id"]
    url = f"/authorizations/{auth_id}/revocation"
    stranger = new_issuer_key("stranger-1")
    refused = {
        "another key": sign_revocation(ISSUER, auth_id, "patient asked", stranger),
        "another issuer": sign_revocation("https://other.example", auth_id, "patient asked",
                                          issuer_private_key),
        "another authorization": sign_revocation(ISSUER, "auth-other", "patient asked",
                                                 issuer_private_key),
        "no reason": sign_revocation(ISSUER, auth_id, " ", issuer_private_key),
        "not a JWS": "not.a.jws",
    }
    for what, jws in refused.items():
        r = client.post(url, data=jws, content_type="application/jose", headers=peer)
        assert r.status_code == 422, (what, r.get_json())
        said = r.get_json()["issue"][0]["diagnostics"]
        assert "revocation refused" in said or "not a trusted key" in said, (what, said)
        assert client.get(f"/authorizations/{auth_id}",
                          headers=bearer(make_token(app, "operator"))).get_json()["status"] == "active"
    good = sign_revocation(ISSUER, auth_id, "the patient revoked it", issuer_private_key)
    r = client.post(url, data=good, content_type="application/jose", headers=peer)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["status"] == "revoked"
    assert r.get_json()["revokedReason"] == "the patient revoked it"
    # a recipient token (a center's staff) may do neither
    staff = bearer(make_token(app, "recipient"))
    assert client.post(url, data=good, content_type="application/jose", headers=staff).status_code == 403
    assert client.post("/authorizations", json={"jws": sign(claims_for())},
                       headers=staff).status_code == 403
