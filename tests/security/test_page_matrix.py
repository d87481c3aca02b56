"""Every web page x {signed out, each wrong role, a forged form}: signed out -> to the
sign-in page, another role -> 403, a POST without the session's form token -> 403; no
seeded value in any refusal, nothing stored or changed. The pages come from the app's
own URL map, so a new page is in the matrix by itself; one without roles must be named
in PUBLIC_PAGES, or the test fails."""
from __future__ import annotations

import re

import pytest

from gateway.trust.users import PERSON_ROLES
from gateway.web import is_page

from tests.security import route_world
from tests.security.test_route_matrix import _snapshot, fill

PUBLIC_PAGES = {("GET", "/ui/sign-in"), ("POST", "/ui/sign-in"), ("GET", "/dashboard"),
                ("GET", "/ui/static/<path:filename>")}


@pytest.fixture
def world(sender_config, tmp_path, sign, claims_for):
    w = route_world.build(sender_config, tmp_path, sign, claims_for)
    yield w
    w.app.extensions["gateway"].close()


def pages(app):
    """(method, rule, roles) of every page route."""
    for rule in app.url_map.iter_rules():
        if not is_page(rule.rule):
            continue
        roles = getattr(app.view_functions[rule.endpoint], "roles", None)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield method, rule.rule, roles


def url_of(rule: str, ids: dict) -> str:
    return fill(re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule), ids)


def sign_in(client, token: str) -> str:
    """Sign the test client in with an API token; the session's form token."""
    page = client.get("/ui/sign-in").get_data(as_text=True)
    nonce = re.search(r'name="form_nonce" value="([^"]+)"', page)[1]
    r = client.post("/ui/sign-in", data={"form_nonce": nonce, "token": token})
    assert r.status_code == 303, r.get_data(as_text=True)[:300]
    home = client.get("/ui/", follow_redirects=True).get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', home)[1]


def _leaks(world, r) -> list[str]:
    seen = r.get_data(as_text=True) + " ".join(f"{k}: {v}" for k, v in r.headers.items())
    return [x for x in world.leaks if x in seen]


def test_every_page_has_roles_or_is_named_public(world):
    found = list(pages(world.app))
    assert len([p for p in found if p[2]]) >= 10
    assert {(m, r) for m, r, roles in found if not roles} == PUBLIC_PAGES


def test_signed_out_goes_to_sign_in(world):
    client = world.app.test_client()
    before = _snapshot(world.app)
    failures = []
    for method, rule, roles in pages(world.app):
        if not roles:
            continue
        r = client.open(url_of(rule, world.ids), method=method, data={"reason": "x"})
        if r.status_code != 303 or not r.headers["Location"].endswith("/ui/sign-in"):
            failures.append(f"{method} {rule}: {r.status_code} {r.headers.get('Location')}")
        if _leaks(world, r):
            failures.append(f"{method} {rule}: leaks {len(_leaks(world, r))} seeded value(s)")
    assert failures == []
    assert _snapshot(world.app) == before


@pytest.mark.parametrize("role", PERSON_ROLES)
def test_other_roles_are_refused(world, role):
    client = world.app.test_client()
    csrf = sign_in(client, world.tokens[role])
    before = _snapshot(world.app)["states"]
    failures = []
    for method, rule, roles in pages(world.app):
        if not roles or role in roles:
            continue
        r = client.open(url_of(rule, world.ids), method=method,
                        data={"csrf_token": csrf, "reason": "x", "transfer": world.ids["transfer_id"]})
        if r.status_code != 403:
            failures.append(f"{role} {method} {rule}: {r.status_code}")
        elif _leaks(world, r) or b"Not allowed" not in r.data:
            failures.append(f"{role} {method} {rule}: a refusal with seeded data or no message")
    assert failures == []
    assert _snapshot(world.app)["states"] == before


def test_a_form_without_the_session_token_is_refused(world):
    """Every POST page, with the right role but a missing or foreign form token."""
    client, other = world.app.test_client(), world.app.test_client()
    sign_in(client, world.tokens["admin"])
    foreign = sign_in(other, world.tokens["admin"])  # a valid token, of another session
    before = _snapshot(world.app)["states"]
    posts = [(m, r) for m, r, roles in pages(world.app) if roles and m == "POST" and "admin" in roles]
    assert len(posts) >= 5
    for data in ({}, {"csrf_token": foreign}):
        for method, rule in posts:
            r = client.open(url_of(rule, world.ids), method=method,
                            data={**data, "reason": "forged", "transfer": world.ids["transfer_id"]})
            assert r.status_code == 403 and b"form was not sent" in r.data, (rule, r.status_code)
    assert _snapshot(world.app)["states"] == before


def test_a_peer_token_cannot_sign_in(world):
    client = world.app.test_client()
    page = client.get("/ui/sign-in").get_data(as_text=True)
    nonce = re.search(r'name="form_nonce" value="([^"]+)"', page)[1]
    r = client.post("/ui/sign-in", data={"form_nonce": nonce, "token": world.tokens["peer"]})
    assert r.status_code == 401 and b"Peer tokens" in r.data
    assert "rgw_session" not in r.headers.get("Set-Cookie", "")


def test_pages_carry_a_strict_policy_and_are_never_cached(world):
    client = world.app.test_client()
    sign_in(client, world.tokens["operator"])
    for url in ("/ui/sign-in", "/ui/operator/", f"/ui/operator/transfers/{world.ids['transfer_id']}"):
        r = client.get(url)
        assert r.status_code == 200, url
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self';" in csp and "unsafe-inline" not in csp, url
        assert r.headers["Cache-Control"] == "no-store" and r.headers["X-Frame-Options"] == "DENY"
        assert "<script>" not in r.get_data(as_text=True) and " style=" not in r.get_data(as_text=True)
