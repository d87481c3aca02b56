"""The HTTP API: tokens and roles, OperationOutcome errors, authorizations, transfers."""
import pytest
from sqlalchemy import select

from gateway.storage.models import AuditEvent, Transfer

from tests.helpers import bearer, make_token


def _outcome(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]


def _events(app, type_):
    with app.extensions["gateway"].db.session() as s:
        return s.scalars(select(AuditEvent).filter_by(type=type_)).all()


def test_health_and_jwks_are_public(client):
    assert client.get("/health").get_json()["status"] == "ok"
    keys = client.get("/.well-known/jwks.json").get_json()["keys"]
    assert sorted(k["purpose"] for k in keys) == ["bundle", "checkpoint", "receipt"]
    assert all(k["crv"] == "Ed25519" and "d" not in k for k in keys)  # public halves only


@pytest.mark.parametrize("method,path", [
    ("get", "/transfers"), ("post", "/transfers"), ("get", "/authorizations"),
    ("post", "/authorizations"), ("post", "/fhir"), ("get", "/inbox"),
])
def test_no_token_is_401(client, method, path):
    issue = _outcome(getattr(client, method)(path), 401)
    assert issue["code"] == "login"


def test_unknown_and_revoked_tokens_are_401(app, client):
    from gateway.trust.tokens import revoke_token

    _outcome(client.get("/transfers", headers=bearer("rgw_nope")), 401)
    token = make_token(app, "operator")
    assert client.get("/transfers", headers=bearer(token)).status_code == 200
    with app.extensions["gateway"].db.session() as s:
        from gateway.storage.models import ApiToken
        row = s.scalars(select(ApiToken)).first()
        revoke_token(s, row.id, actor="test")
    _outcome(client.get("/transfers", headers=bearer(token)), 401)


def test_tokens_are_stored_hashed(app):
    from gateway.storage.models import ApiToken

    token = make_token(app, "auditor")
    with app.extensions["gateway"].db.session() as s:
        row = s.scalars(select(ApiToken)).one()
    assert token not in (row.token_sha256, row.name) and len(row.token_sha256) == 64


@pytest.mark.parametrize("role,method,path", [
    ("auditor", "post", "/transfers"),
    ("recipient", "get", "/transfers"),
    ("recipient", "post", "/authorizations"),
    ("operator", "post", "/fhir"),
    ("operator", "get", "/inbox"),
    ("peer", "get", "/authorizations"),
])
def test_wrong_role_is_403(app, client, role, method, path):
    issue = _outcome(getattr(client, method)(path, headers=bearer(make_token(app, role))), 403)
    assert role in issue["diagnostics"]


@pytest.mark.parametrize("body,kwargs", [
    ("not json", {"content_type": "application/json"}),
    ("[1, 2]", {"content_type": "application/json"}),
    ('{"authorization": 5, "sources": [], "recipient": "center"}', {"content_type": "application/json"}),
    ('{"authorization": "a", "sources": "records", "recipient": "center"}', {"content_type": "application/json"}),
])
def test_malformed_transfer_body_is_400(client, operator, body, kwargs):
    _outcome(client.post("/transfers", data=body, headers=operator, **kwargs), 400)


def test_unknown_things_are_404_outcomes(client, operator):
    _outcome(client.get("/transfers/nope", headers=operator), 404)
    _outcome(client.get("/no/such/path", headers=operator), 404)
    _outcome(client.post("/transfers", json={"authorization": "missing", "sources": ["records"],
                                              "recipient": "center"}, headers=operator), 404)


def test_patient_data_is_never_cached(client, operator):
    assert client.get("/transfers", headers=operator).headers["Cache-Control"] == "no-store"


def test_openapi_describes_every_route_with_roles(app, client):
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    from gateway.web import is_page

    routes = {r.rule for r in app.url_map.iter_rules() if r.endpoint != "static"}
    pages = {r for r in routes if is_page(r)}
    assert "/ui/sign-in" in pages and not pages & {"/transfers", "/health"}
    assert len(doc["paths"]) == len(routes - pages)  # every API route; no page
    assert doc["paths"]["/transfers"]["post"]["x-roles"] == ["operator", "admin"]
    assert "requestBody" in doc["paths"]["/transfers/{transfer_id}/retry"]["post"]
    assert "security" not in doc["paths"]["/health"]["get"]


def test_import_show_and_revoke_authorization(app, client, operator, claims_for, sign):
    jws = sign(claims_for("auth-api-1"))
    r = client.post("/authorizations", data=jws, headers={**operator, "Content-Type": "application/jose"})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["id"] == "auth-api-1" and r.get_json()["status"] == "active"
    # the same JWS again is the same authorization
    assert client.post("/authorizations", json={"jws": jws}, headers=operator).status_code == 201
    shown = client.get("/authorizations/auth-api-1", headers=operator).get_json()
    assert shown["claims"]["patient"]["birthDate"] == "1970-01-01"
    assert shown["consent"]["resourceType"] == "Consent"
    assert len(_events(app, "api.read.authorization")) == 1  # reads of patient data are logged
    r = client.post("/authorizations/auth-api-1/revoke", json={"reason": "patient asked"}, headers=operator)
    assert r.get_json()["status"] == "revoked" and r.get_json()["revokedReason"] == "patient asked"
    issue = _outcome(client.post("/transfers", json={"authorization": "auth-api-1", "sources": ["records"],
                                                     "recipient": "center"}, headers=operator), 403)
    assert "revoked" in issue["diagnostics"]


def test_rejected_authorization_is_422_and_logged(app, client, operator, claims_for, sign):
    claims = claims_for("auth-api-2")
    del claims["statements"]["rightToRevoke"]
    issue = _outcome(client.post("/authorizations", json={"jws": sign(claims)}, headers=operator), 422)
    assert "statements.rightToRevoke" in issue["diagnostics"]
    assert len(_events(app, "authorization.rejected")) == 1
    _outcome(client.post("/authorizations", data=b"\xff\xfe", headers=operator,
                         content_type="application/jose"), 400)
    _outcome(client.post("/authorizations", data="a.b.c", headers=operator,
                         content_type="application/jose"), 422)
    _outcome(client.post("/authorizations", json={"jws": 7}, headers=operator), 400)


def test_transfer_refused_for_unnamed_source_or_recipient(app, client, operator, claims_for, sign,
                                                         tmp_path):
    claims = claims_for("auth-api-3")
    claims["disclosers"][0]["endpoints"][0]["address"] = str(tmp_path / "elsewhere")
    # the consent inside must agree with the elements; rebuild it through the issuer helper
    from gateway.trust.authorizations import example_claims
    from tests.helpers import ISSUER
    claims = example_claims(ISSUER, "auth-api-3", disclosers=claims["disclosers"],
                            recipient=claims["recipient"])
    client.post("/authorizations", json={"jws": sign(claims)}, headers=operator)
    issue = _outcome(client.post("/transfers", json={"authorization": "auth-api-3", "sources": ["records"],
                                                     "recipient": "center"}, headers=operator), 403)
    assert "records" in issue["diagnostics"] or "endpoint" in issue["diagnostics"]
    _outcome(client.post("/transfers", json={"authorization": "auth-api-3", "sources": ["nope"],
                                              "recipient": "center"}, headers=operator), 400)
    _outcome(client.post("/transfers", json={"authorization": "auth-api-3", "sources": ["records"],
                                              "recipient": "nobody"}, headers=operator), 400)
    with app.extensions["gateway"].db.session() as s:
        assert s.scalars(select(Transfer)).all() == []


def test_transfer_created_queued_and_listed(app, client, operator, claims_for, sign):
    client.post("/authorizations", json={"jws": sign(claims_for("auth-api-4"))}, headers=operator)
    r = client.post("/transfers", json={"authorization": "auth-api-4", "sources": ["records"],
                                        "recipient": "center"}, headers=operator)
    assert r.status_code == 202
    view = r.get_json()
    assert view["state"] == "pending" and view["percent"] == 0
    assert view["sources"] == [{"name": "records", "state": "pending", "items": 0, "bytes": 0,
                                "total": None, "error": None}]
    listed = client.get("/transfers?state=pending", headers=operator).get_json()["transfers"]
    assert [t["id"] for t in listed] == [view["id"]]
    _outcome(client.get("/transfers?state=bogus", headers=operator), 400)
    # queued on the embedded broker, to be run by a worker process
    queue = app.extensions["gateway"].settings.broker_dir / "queue"
    assert len(list(queue.iterdir())) == 1
    cancelled = client.post(f"/transfers/{view['id']}/cancel", json={"reason": "test"}, headers=operator)
    assert cancelled.get_json()["state"] == "cancelled"
    _outcome(client.post(f"/transfers/{view['id']}/cancel", headers=operator), 409)
    _outcome(client.post(f"/transfers/{view['id']}/retry", headers=operator), 409)


def test_old_dashboard_address_leads_to_the_pages(client):
    r = client.get("/dashboard")
    assert r.status_code == 301 and r.headers["Location"].endswith("/ui/")
    r = client.get("/ui/")  # signed out: to the sign-in page, with nothing in the answer
    assert r.status_code == 303 and r.headers["Location"].endswith("/ui/sign-in")
