"""Signing in and out in a real browser: an API token, a person's password, a wrong
password, the idle timeout, a form forged on another page, and what each role sees."""
from __future__ import annotations

import re
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from playwright.sync_api import expect
from sqlalchemy import select

from gateway.storage.models import AuditEvent, Transfer, WebSession
from gateway.trust.users import create_user

from tests.web.helpers import sign_in


def _events(web, type_: str) -> list[AuditEvent]:
    with web.app.extensions["gateway"].db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.type == type_)))


def test_sign_in_with_a_token_then_out(page, web, check_page):
    page.goto("/ui/sign-in")
    check_page("sign-in")
    sign_in(page, web, "operator")
    expect(page).to_have_url(f"{web.url}/ui/operator/")
    expect(page.get_by_role("heading", name="Transfers")).to_be_visible()
    expect(page.locator(f'tr[data-transfer="{web.ids["transfer_id"]}"]')).to_be_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == "rgw_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    check_page("operator-transfers")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.goto("/ui/operator/")  # the old cookie is worth nothing now
    expect(page).to_have_url(f"{web.url}/ui/sign-in")


def test_a_person_signs_in_with_a_password_and_a_wrong_one_is_refused(page, web, check_page):
    with web.app.extensions["gateway"].db.session() as s:
        create_user(s, "avery.ops", "correct horse battery", "operator", actor="test")
    refused_before = len(_events(web, "web.sign_in.refused"))
    page.goto("/ui/sign-in")
    page.get_by_label("Username").fill("avery.ops")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("Sign-in refused")
    assert not [c for c in page.context.cookies() if c["name"] == "rgw_session"]
    check_page("sign-in-refused")
    assert len(_events(web, "web.sign_in.refused")) == refused_before + 1
    sign_in(page, web, username="avery.ops", password="correct horse battery")
    expect(page.get_by_text("avery.ops (operator)")).to_be_visible()
    [started] = [e for e in _events(web, "web.session.started") if e.actor == "avery.ops"]
    assert started.detail["method"] == "password"


def test_a_locked_name_is_told_when_to_try_again(page, web, check_page):
    """Past the name's limit of failures, the page says until when, even for the right
    password, in words that do not tell whether the person exists."""
    with web.app.extensions["gateway"].db.session() as s:
        create_user(s, "robin.locked", "correct horse battery", "operator", actor="test")
    limit = web.app.extensions["gateway"].settings.web.sign_in.max_failures_per_name
    for password in ["not the password"] * limit + ["correct horse battery"]:
        page.goto("/ui/sign-in")
        page.get_by_label("Username").fill("robin.locked")
        page.get_by_label("Password").fill(password)
        with page.expect_response(lambda r: r.request.method == "POST") as posted:
            page.get_by_role("button", name="Sign in", exact=True).click()
    assert posted.value.status == 429 and int(posted.value.headers["retry-after"]) > 0
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Too many failed sign-ins")
    expect(alert).to_have_text(re.compile(r"paused until \d\d:\d\d:\d\d UTC \(about \d+ minutes?\)"))
    assert not [c for c in page.context.cookies() if c["name"] == "rgw_session"]
    check_page("sign-in-locked")
    [locked] = [e for e in _events(web, "web.sign_in.locked") if e.actor == "robin.locked"]
    assert locked.detail["scope"] == "name"


def test_an_idle_session_ends(page, web):
    sign_in(page, web, "operator")
    idle = web.app.extensions["gateway"].settings.web.idle_timeout_s
    with web.app.extensions["gateway"].db.session() as s:  # as it stands after that long unused
        for row in s.scalars(select(WebSession).where(WebSession.ended_at.is_(None),
                                                      WebSession.actor == "route-operator")):
            row.last_seen_at -= timedelta(seconds=idle + 1)
    page.reload()
    expect(page).to_have_url(f"{web.url}/ui/sign-in?why=idle")
    expect(page.get_by_role("status")).to_contain_text("signed out after a time without use")
    ended = [e for e in _events(web, "web.session.ended") if e.detail.get("why") == "idle"]
    assert ended and ended[-1].actor == "route-operator"


class _Forger(BaseHTTPRequestHandler):
    """Another site's page (another port is the same site to a cookie: the form token,
    not SameSite, must stop it) with a form that posts to the gateway's cancel button."""

    target = ""

    def do_GET(self):
        body = (f'<!doctype html><title>prize</title><form method="post" action="{self.target}">'
                '<input type="hidden" name="reason" value="forged"><button>Claim prize</button></form>')
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def test_a_forged_form_is_refused(page, web):
    sign_in(page, web, "operator")
    tid = web.ids["transfer_id"]
    _Forger.target = f"{web.url}/ui/operator/transfers/{tid}/cancel"
    forger = ThreadingHTTPServer(("127.0.0.1", 0), _Forger)
    threading.Thread(target=forger.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{forger.server_port}/")
        page.get_by_role("button", name="Claim prize").click()
        expect(page.get_by_role("alert")).to_contain_text("not sent from this session's own page")
    finally:
        forger.shutdown()
    with web.app.extensions["gateway"].db.session() as s:
        assert s.get(Transfer, tid).state != "cancelled"


def test_each_role_sees_only_its_pages(page, web, check_page):
    sign_in(page, web, "auditor")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Transfers")).to_have_count(0)
    page.goto(f"/ui/operator/transfers/{web.ids['transfer_id']}")
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    body = page.content()
    assert not [x for x in web.leaks if x in body]
    check_page("forbidden")


def test_sign_in_by_keyboard_alone(page, web):
    """Tab order follows the page: skip link, the password form, then the token form."""
    page.goto("/ui/sign-in")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("Username")).to_be_focused()
    for name in ("Password", "Sign in"):
        page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Sign in", exact=True)).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("API token")).to_be_focused()
    page.keyboard.type(web.tokens["admin"])
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    expect(page).to_have_url(f"{web.url}/ui/operator/")  # admin starts where operators do
