"""Every web page x {signed out, each wrong role, a forged form}: signed out -> to the
sign-in page, another role -> 403, a POST without the session's form token -> 403; no
seeded value in any refusal, nothing stored or changed. The pages come from the app's
own URL map, so a new page is in the matrix by itself; one without roles must be named
in PUBLIC_PAGES, or the test fails. The world is a second-opinion center too: its
request pages are in the matrix, staff of another organization see none of them, and
the patient's status page (public: its link is the key) opens only with a valid link."""
from __future__ import annotations

import re

import pytest

from gateway.trust.users import PERSON_ROLES
from gateway.web import is_page
from tests.security import route_world
from tests.security.test_route_matrix import _snapshot, fill

PUBLIC_PAGES = {("GET", "/ui/sign-in"), ("POST", "/ui/sign-in"), ("GET", "/dashboard"),
                ("GET", "/ui/static/<path:filename>"),
                # the patient's, without a session: the emailed link's token is the key
                ("GET", "/ui/my-request"), ("POST", "/ui/my-request/revoke"),
                ("GET", "/ui/invite"), ("POST", "/ui/invite")}


@pytest.fixture
def world(sender_config, tmp_path, sign, claims_for):
    w = route_world.build(sender_config, tmp_path, sign, claims_for, center=True)
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


# --- the second-opinion center's pages ------------------------------------------------

def _center_pages(world) -> list[tuple[str, str]]:
    """(method, URL) of every center request page that needs a session."""
    found = [(m, url_of(r, world.ids)) for m, r, roles in pages(world.app)
             if roles and r.startswith("/ui/requests")]
    assert {u for _, u in found} >= {"/ui/requests/new", f"/ui/requests/{world.ids['request_id']}",
                                     f"/ui/requests/{world.ids['request_id']}/status-link"}
    return found


def _urls_in(html: str) -> list[str]:
    return re.findall(r'(?:href|src|action)="([^"]*)"', html)


@pytest.mark.parametrize("role", ["operator", "recipient", "admin", "auditor"])
def test_center_staff_see_what_their_role_may(world, role):
    client = world.app.test_client()
    sign_in(client, world.tokens[role])
    request_id = world.ids["request_id"]
    shown = client.get(f"/ui/requests/{request_id}")
    assert shown.status_code == 200 and shown.headers["Cache-Control"] == "no-store"
    html = shown.get_data(as_text=True)
    assert world.center["form"]["family_name"] in html  # the staff's own page names the patient
    for value in (world.center["form"]["email"], world.center["form"]["identifier_value"],
                  world.center["form"]["birth_date"], world.center["link"]):
        assert value not in html  # minimum necessary: no more than the name
    assert ("Email a new status link" in html) == (role != "auditor")
    form = client.get("/ui/requests/new")
    assert form.status_code == (403 if role == "auditor" else 200)
    assert form.headers["Cache-Control"] == "no-store"
    for page in (html, form.get_data(as_text=True)):  # no patient data in any address
        for url in _urls_in(page):
            assert not [x for x in world.center["leaks"] if x in url], url


def test_center_pages_show_staff_of_another_organization_nothing(world):
    from gateway.trust.tokens import create_token

    with world.app.extensions["gateway"].db.session() as s:
        _, other = create_token(s, "route-other-center", "recipient", actor="test",
                                organization="org-another-center")
    client = world.app.test_client()
    csrf = sign_in(client, other)
    before = _snapshot(world.app)
    failures = []
    for method, url in _center_pages(world):
        r = client.open(url, method=method, data={"csrf_token": csrf, "email": "x@example.org",
                                                   **world.center["form"]})
        if r.status_code != 403 or b"Not allowed" not in r.data:
            failures.append(f"{method} {url}: {r.status_code}")
        elif _leaks(world, r):
            failures.append(f"{method} {url}: leaks {len(_leaks(world, r))} seeded value(s)")
        assert r.headers["Cache-Control"] == "no-store"
    assert failures == []
    assert _snapshot(world.app) == before  # nothing made, sent, mailed or reissued
    # its own inbox is empty too: the bundles here are another center's
    inbox = client.get("/ui/center/").get_data(as_text=True)
    assert world.ids["received_id"] not in inbox


def test_the_status_page_opens_only_with_a_valid_link(world):
    from sqlalchemy import func, select, update

    from gateway.center import tokens
    from gateway.storage.models import AuditEvent, CenterRequest, CenterToken, utcnow

    svc = world.app.extensions["gateway"]
    request_id = world.ids["request_id"]

    def refused() -> int:
        with svc.db.session() as s:
            return s.scalar(select(func.count()).select_from(AuditEvent)
                            .where(AuditEvent.type == "center.status.refused"))

    def opened(link: str | None):
        client = world.app.test_client()
        if link is not None:
            r = client.get(f"/ui/my-request?t={link}")
            assert r.status_code == 303 and r.headers["Location"] == "/ui/my-request"
            assert r.headers["Cache-Control"] == "no-store"
        return client, client.get("/ui/my-request")

    with svc.db.session() as s:
        expired = tokens.mint(s, "status", 3600, request_id)  # (replaces the world's link)
        s.execute(update(CenterToken).where(CenterToken.sha256 == tokens._digest(expired))
                  .values(expires_at=utcnow()))
        replaced = tokens.mint(s, "status", 3600, request_id)
        valid = tokens.mint(s, "status", 3600, request_id)  # revokes `replaced`
        s.commit()
    staff = world.app.test_client()
    sign_in(staff, world.tokens["operator"])  # a staff session is not a status link
    tries = {"no link": opened(None), "forged": opened("rgs_" + "A" * 43),
             "an API token": opened(world.tokens["operator"]), "expired": opened(expired),
             "replaced": opened(replaced), "the world's first, replaced": opened(world.center["link"]),
             "staff session": (staff, staff.get("/ui/my-request"))}
    count = refused()
    for what, (_, r) in tries.items():
        body = r.get_data(as_text=True)
        assert r.status_code == 403 and "not valid" in body, what
        assert r.headers["Cache-Control"] == "no-store", what
        assert not _leaks(world, r) and world.center["link"] not in body, what
    assert count >= len(tries)  # each refusal audited (without the link)
    client, r = opened(valid)
    body = r.get_data(as_text=True)
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    assert "Your second-opinion request" in body
    # the patient's page: no patient identity, no link, no data in any address
    assert not [x for x in world.center["leaks"] + [valid] if x in body]
    assert not [u for u in _urls_in(body) if "t=" in u or "rgs_" in u]
    # a revocation without the page's own check value changes nothing
    r = client.post("/ui/my-request/revoke", data={"confirm": "yes", "check": "forged"})
    assert r.status_code == 403
    r = world.app.test_client().post("/ui/my-request/revoke", data={"confirm": "yes"})
    assert r.status_code == 403
    with svc.db.session() as s:
        assert s.get(CenterRequest, request_id).state == "open"
        assert "rgs_" not in " ".join(str(e.detail) for e in s.scalars(
            select(AuditEvent).where(AuditEvent.type.like("center.%"))))
