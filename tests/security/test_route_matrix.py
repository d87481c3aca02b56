"""Every route x {no token, garbage, expired, revoked, each wrong role}: 401 or 403, an
OperationOutcome, nothing from the store in the answer and nothing done. The routes come
from the app's own /openapi.json, so a new route is in the matrix by itself; one without
roles must be named in PUBLIC, or the test fails. The web pages are not API operations:
tests/security/test_page_matrix.py drives those."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
from flask import jsonify
from sqlalchemy import func, select

from gateway import create_app
from gateway.api.auth import require
from gateway.storage.models import Authorization, Base, ReceivedBundle, Transfer
from gateway.trust.tokens import ROLES

from tests.helpers import bearer
from tests.security import route_world

# Operations without an API token, and what each answers to a request with no credential:
# liveness, readiness, metrics (counts only), published keys, this description, the audit
# log's checkpoints and proofs (hashes only); and a FHIR Subscription's hook, which a source calls with the channel's own
# secret instead (refused without it); and the patient's status page and revocation at a
# center, which take the status link's token (X-Status-Token) instead (refused without it).
PUBLIC = {
    ("get", "/health"): 200, ("get", "/ready"): 200, ("get", "/metrics"): 200,
    ("get", "/.well-known/jwks.json"): 200, ("get", "/openapi.json"): 200,
    ("get", "/audit/checkpoints"): 200,
    ("get", "/audit/checkpoints/latest"): 200, ("get", "/audit/consistency"): 200,
    ("get", "/audit/events/{seq}/proof"): 200, ("post", "/subscriptions/{sid}/notify"): 401,
    ("get", "/center/status"): 403, ("post", "/center/status/revoke"): 403,
}
KINDS = ("no token", "garbage token", "expired token", "revoked token", "wrong role")


@dataclass(frozen=True)
class Case:
    method: str
    path: str       # as in the OpenAPI document
    url: str        # with real ids of seeded objects
    kind: str
    role: str | None
    expect: int

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.path} [{self.kind}{' ' + self.role if self.role else ''}]"


@pytest.fixture
def world(sender_config, tmp_path, sign, claims_for):
    w = route_world.build(sender_config, tmp_path, sign, claims_for, center=True)
    yield w
    w.app.extensions["gateway"].close()


def operations(doc: dict):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield method, path, op


def unlisted_public(doc: dict) -> set[tuple[str, str]]:
    """Operations without roles that PUBLIC does not name (each one a route left open)."""
    return {(m, p) for m, p, op in operations(doc) if not op.get("x-roles")} - set(PUBLIC)


def fill(path: str, ids: dict) -> str:
    url = path
    for name in [seg[1:-1] for seg in path.split("/") if seg.startswith("{")]:
        assert name in ids, (f"no seeded object for the path parameter {{{name}}} of {path}: "
                             "add one to tests/security/route_world.py")
        url = url.replace(f"{{{name}}}", ids[name])
    return url


def cases(doc: dict, world: route_world.World, kinds=KINDS) -> list[Case]:
    out = []
    for method, path, op in operations(doc):
        roles = op.get("x-roles")
        if not roles:
            continue
        url = fill(path, world.ids)
        for kind in kinds:
            if kind == "wrong role":
                out += [Case(method, path, url, kind, r, 403) for r in ROLES if r not in roles]
            elif kind in ("expired token", "revoked token"):
                out += [Case(method, path, url, kind, r, 401) for r in roles]
            else:
                out.append(Case(method, path, url, kind, None, 401))
    return out


def _headers(world, case: Case) -> dict:
    if case.kind == "no token":
        return {}
    if case.kind == "garbage token":
        return bearer("rgw_" + "A" * 43)
    table = {"expired token": world.expired, "revoked token": world.revoked,
             "wrong role": world.tokens}[case.kind]
    return bearer(table[case.role])


def _body(world, method: str) -> dict:
    """What a caller with the right token would send: enough to do something real."""
    if method == "put":
        return {"data": b"%PDF-1.4 replaced", "content_type": "application/pdf"}
    if method == "post":
        ids = world.ids
        return {"json": {"authorization": ids["auth_id"], "sources": ["records"],
                         "recipient": "center", "transfer": ids["transfer_id"],
                         "reason": "route test", "jws": "a.b.c", "resourceType": "DiagnosticReport"}}
    return {}


def check(client, world, case: Case) -> str | None:
    """Why this refusal is wrong, or None."""
    r = client.open(case.url, method=case.method.upper(), headers=_headers(world, case),
                    **_body(world, case.method))
    if r.status_code != case.expect:
        return f"{case}: {r.status_code}, expected {case.expect}"
    seen = r.get_data(as_text=True) + " ".join(f"{k}: {v}" for k, v in r.headers.items())
    leaked = [x for x in world.leaks if x in seen]
    if leaked:
        return f"{case}: the answer holds {len(leaked)} seeded value(s)"
    if case.method == "head":
        return None if not r.data else f"{case}: a HEAD answer with a body"
    body = r.get_json(silent=True) or {}
    if r.mimetype != "application/fhir+json" or body.get("resourceType") != "OperationOutcome":
        return f"{case}: not an OperationOutcome ({r.mimetype})"
    code = body["issue"][0]["code"]
    if code != {401: "login", 403: "forbidden"}[case.expect]:
        return f"{case}: issue code {code}"
    return None


def _snapshot(app) -> dict:
    """Rows per table, and the states a refused request could have changed."""
    with app.extensions["gateway"].db.session() as s:
        counts = {t.name: s.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}
        states = (sorted(s.scalars(select(Authorization.status)).all()),
                  sorted(s.scalars(select(Transfer.state)).all()),
                  sorted(str(x) for x in s.scalars(select(ReceivedBundle.opened_at)).all()))
    return {"rows": counts, "states": states}


@pytest.mark.parametrize("kind", KINDS)
def test_every_secured_route_refuses(world, kind):
    client = world.app.test_client()
    doc = client.get("/openapi.json").get_json()
    todo = cases(doc, world, (kind,))
    secured = [(m, p) for m, p, op in operations(doc) if op.get("x-roles")]
    assert len(secured) >= 30 and ("head", "/fhir/Binary/{binary_id}") in secured
    assert {(c.method, c.path) for c in todo} == set(secured)  # every secured operation, once or more
    before = _snapshot(world.app)
    failures = [f for f in (check(client, world, c) for c in todo) if f]
    assert failures == [], "\n".join(failures)
    assert _snapshot(world.app) == before  # nothing stored, changed or audited


def test_public_set_is_exactly_the_routes_without_roles(world):
    client = world.app.test_client()
    doc = client.get("/openapi.json").get_json()
    assert unlisted_public(doc) == set()
    assert {(m, p) for m, p, op in operations(doc) if not op.get("x-roles")} == set(PUBLIC)
    for (method, path), status in sorted(PUBLIC.items()):
        r = client.open(fill(path, world.ids), method=method.upper(),
                        query_string={"first": "0"} if path == "/audit/consistency" else None)
        assert r.status_code == status, (path, r.get_data(as_text=True)[:200])
        assert not [x for x in world.leaks if x in r.get_data(as_text=True)], path


def test_the_seeded_data_is_there_for_the_right_roles(world):
    """The refusals mean something only if the same requests with the right token get it."""
    client = world.app.test_client()
    ids = world.ids
    staff, auditor = world.headers("recipient"), world.headers("auditor")
    r = client.get(f"/inbox/{ids['received_id']}/documents/{ids['doc_id']}", headers=staff)
    assert r.status_code == 200 and world.leaks[0].encode() in r.data  # the family name
    r = client.get(f"/authorizations/{ids['auth_id']}", headers=auditor)
    assert r.status_code == 200 and r.get_json()["claims"]["patient"]["name"]["family"] == world.leaks[0]
    assert client.get(f"/transfers/{ids['transfer_id']}", headers=auditor).get_json()["id"] == ids["transfer_id"]
    r = client.get(f"/faxes/review/{ids['fax_id']}", headers=world.headers("operator"))
    assert r.status_code == 200 and r.get_json()["candidates"] == [ids["transfer_id"]]
    r = client.get(f"/faxes/review/{ids['fax_id']}/preview", headers=world.headers("operator"))
    assert r.status_code == 200 and world.leaks[0].encode() in r.data
    assert client.head(f"/fhir/Binary/{ids['binary_id']}", headers=world.headers("peer")).status_code == 200
    assert client.get(f"/cases/{ids['case_id']}", headers=auditor).get_json()["id"] == ids["case_id"]
    listed = client.get("/notifications", headers=auditor).get_json()["notifications"]
    assert ids["notification_id"] in [n["id"] for n in listed]
    image = client.get(f"/inbox/{ids['received_id']}/studies/{ids['study_uid']}/instances/{ids['sop_uid']}",
                       headers=staff)
    assert image.status_code == 200 and image.mimetype == "application/dicom"
    assert world.leaks[0].encode() in image.data  # the patient's name, in the DICOM header
    request = client.get(f"/center/requests/{ids['request_id']}", headers=auditor)
    assert request.status_code == 200 and request.get_json()["id"] == ids["request_id"]
    status = client.get("/center/status", headers={"X-Status-Token": world.center["link"]})
    assert status.status_code == 200, status.get_data(as_text=True)[:300]


def test_a_new_route_is_in_the_matrix_by_itself(world):
    """Routes added to another app on the same store: one with roles is tested like the
    rest, one without roles is reported, and one whose roles are declared but not
    enforced fails the matrix."""
    app = create_app(world.config)
    try:
        @app.post("/guard/<transfer_id>/probe")
        @require("admin")
        def guard_probe(transfer_id):
            return jsonify({"transfer": transfer_id})

        @app.get("/guard/open")
        def guard_open():
            return jsonify({"ok": True})

        def guard_leaky(transfer_id):
            return jsonify({"transfer": transfer_id})

        guard_leaky.roles = ("admin",)  # claims a role, checks none
        app.add_url_rule("/guard/<transfer_id>/leaky", view_func=guard_leaky)

        client = app.test_client()
        doc = client.get("/openapi.json").get_json()
        assert unlisted_public(doc) == {("get", "/guard/open")}
        world.app = app
        probe = [c for c in cases(doc, world) if c.path == "/guard/{transfer_id}/probe"]
        assert len(probe) == 1 + 1 + 1 + 1 + (len(ROLES) - 1)  # no, garbage, expired, revoked, 4 roles
        assert [f for f in (check(client, world, c) for c in probe) if f] == []
        leaky = [c for c in cases(doc, world) if c.path == "/guard/{transfer_id}/leaky"]
        failures = [f for f in (check(client, world, c) for c in leaky) if f]
        assert len(failures) == len(leaky) == 8
        assert all("200, expected" in f for f in failures)
    finally:
        app.extensions["gateway"].close()
