"""The center's request pages in a real browser: the staff fill in and sign the form
(wrong fields named beside each field, the keyboard alone, a phone-sized screen), and
the patient's status page shows each step, then revokes; axe-core on every page."""
from __future__ import annotations

from datetime import date, timedelta

import pytest
from playwright.sync_api import expect
from sqlalchemy import select
from tests.web.conftest import ServerThread

from gateway import create_app
from gateway.center import progress, tasks, tokens
from gateway.center import requests as reqs
from gateway.storage.models import AuditEvent, CenterRequest
from tests.center.conftest import center_settings, form_for
from tests.helpers import make_token


@pytest.fixture(scope="module")
def center_web(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("center-web")
    config = center_settings(tmp)
    app = create_app(config)
    with ServerThread(app) as server:
        yield {"app": app, "url": server.url, "token": make_token(app, "operator"), "tmp": tmp}
    app.extensions["gateway"].close()


@pytest.fixture
def page(browser, center_web):
    context = browser.new_context(base_url=center_web["url"], viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.csp_violations = []
    page.on("console", lambda msg: "Content Security Policy" in msg.text
            and page.csp_violations.append(msg.text))
    yield page
    context.close()


def _sign_in(page, token: str) -> None:
    page.goto("/ui/sign-in")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in with token").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def _requests(app) -> list[CenterRequest]:
    with app.extensions["gateway"].db.session() as s:
        return list(s.scalars(select(CenterRequest)))


def test_staff_fill_in_and_sign_the_form_with_the_keyboard(page, center_web, check_page):
    app = center_web["app"]
    _sign_in(page, center_web["token"])
    page.goto("/ui/requests/new")
    expect(page.get_by_role("heading", name="Request a second opinion")).to_be_visible()
    check_page("center-request-form")
    before = len(_requests(app))
    # sent as it stands: every missing field named, at the top and beside the field
    page.get_by_role("button", name="Sign and send the request").click()
    expect(page.get_by_role("alert")).to_contain_text("Please correct")
    expect(page.locator("#family_name-error")).to_contain_text("family name")
    expect(page.get_by_label("Family name")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#ack_revoke-error")).to_contain_text("tick the box")
    check_page("center-request-form-errors")
    assert len(_requests(app)) == before  # nothing signed
    # the keyboard alone: focus moves field to field with Tab, boxes tick with Space
    form = form_for(signature_date=date.today().isoformat())
    page.get_by_label("Given name").focus()
    for value in (form["given_name"], form["family_name"]):
        page.keyboard.press("Control+A")
        page.keyboard.type(value)
        page.keyboard.press("Tab")
    page.get_by_label("Date of birth").fill(form["birth_date"])
    for label in ("Identifier (such as a medical record number)",
                  "Who issued the identifier (system)"):
        page.get_by_label(label).focus()
        page.keyboard.type(form["identifier_value" if "number" in label else "identifier_system"])
    page.get_by_label("Email address for the status link").fill(form["email"])
    for label in ("Hospital", "Records Office", "All records"):
        page.get_by_label(label, exact=True).focus()
        page.keyboard.press("Space")
    page.get_by_label("This permission ends on").fill((date.today() + timedelta(days=30)).isoformat())
    for box in ("#ack_revoke", "#ack_conditioning", "#ack_redisclosure"):
        page.locator(box).focus()
        page.keyboard.press("Space")
    page.get_by_label("Your questions and concerns").fill("Is the operation needed?")
    page.get_by_label("The patient signs").check()
    page.get_by_label("Full name of the person signing (typed signature)").fill(form["signature_name"])
    page.get_by_label("Date of signature").fill(form["signature_date"])
    page.get_by_role("button", name="Sign and send the request").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("Request signed and sent")
    expect(page.locator('tr[data-provider="office"]')).to_contain_text("pending")
    check_page("center-request")
    [made] = [r for r in _requests(app)][before:]
    assert made.patient["questions"] == "Is the operation needed?"
    # a phone-sized screen: the form fits without sideways scrolling
    page.set_viewport_size({"width": 375, "height": 740})
    page.goto("/ui/requests/new")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    check_page("center-request-form-phone")


def test_the_status_page_shows_each_step_then_the_patient_revokes(page, center_web, check_page):
    app = center_web["app"]
    svc = app.extensions["gateway"]
    token = reqs.new_form(svc)
    row = reqs.create(svc, {**form_for(), "form_token": token}, actor="test")
    with svc.db.session() as s:
        link = tokens.mint(s, "status", 3600, row.id)
    office = next(p.id for p in row.providers if p.name == "office")
    page.goto(f"/ui/my-request?t={link}")
    expect(page).to_have_url(f"{center_web['url']}/ui/my-request")  # the token left the address
    expect(page.get_by_role("heading", name="Your second-opinion request")).to_be_visible()
    expect(page.get_by_role("row", name="Records Office")).to_contain_text("being sent")
    cookie = next(c for c in page.context.cookies() if c["name"] == "rgw_status")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    check_page("center-status-start")
    # the office is asked (its letter in the fax outbox), then its faxed reply arrives
    tasks.send_now(svc, office)
    page.reload()
    expect(page.get_by_role("row", name="Records Office")).to_contain_text("asked")
    with svc.db.session() as s:
        progress.take_fax(s, office, "fax-0001", 3)
    page.reload()
    expect(page.get_by_role("row", name="Records Office")).to_contain_text("all records received")
    expect(page.get_by_role("row", name="Records Office")).to_contain_text("1 fax")
    expect(page.locator("main")).to_contain_text("not opened your records yet")
    reqs.mark_opinion_ready(svc, row.id, actor="test")
    page.reload()
    expect(page.locator("main")).to_contain_text("Your written opinion is ready")
    check_page("center-status-progress")
    assert "Testperson" not in page.locator("body").inner_text()  # no patient data
    # revoke: the box must be ticked first
    page.get_by_role("button", name="Revoke my authorization").click()
    expect(page.locator("#confirm-error")).to_be_visible()
    page.get_by_label("Yes, revoke my authorization at every place").check()
    page.get_by_role("button", name="Revoke my authorization").click()
    expect(page.get_by_role("status")).to_contain_text("Your authorization is revoked")
    expect(page.locator("main")).to_contain_text("You revoked your authorization")
    check_page("center-status-revoked")
    with svc.db.session() as s:
        assert s.get(CenterRequest, row.id).state == "revoked"
        viewed = s.scalars(select(AuditEvent).filter_by(type="center.status.viewed")).all()
        assert len(viewed) >= 5 and {e.detail.get("request") for e in viewed} == {row.id}
    # a forged link shows a refusal, not the page
    page.context.clear_cookies()
    page.goto("/ui/my-request?t=rgs_forged")
    expect(page.locator("main")).to_contain_text("not valid")


def test_an_invited_patient_fills_in_the_form_alone(page, center_web, check_page):
    app = center_web["app"]
    svc = app.extensions["gateway"]
    with svc.db.session() as s:  # the mailed link (the mail itself: tests/center/test_center_invite.py)
        link = tokens.mint(s, "invite", 3600)
    before = len(_requests(app))
    page.goto(f"/ui/invite?t={link}")
    expect(page).to_have_url(f"{center_web['url']}/ui/invite")  # the token left the address
    expect(page.get_by_role("heading", name="Request a second opinion")).to_be_visible()
    expect(page.get_by_role("button", name="Email the patient an invitation")).to_have_count(0)
    check_page("center-invite-form")
    form = form_for()
    for label, key in (("Given name", "given_name"), ("Family name", "family_name"),
                       ("Date of birth", "birth_date"),
                       ("Identifier (such as a medical record number)", "identifier_value"),
                       ("Who issued the identifier (system)", "identifier_system"),
                       ("Email address for the status link", "email"),
                       ("This permission ends on", "expiration_date"),
                       ("Full name of the person signing (typed signature)", "signature_name"),
                       ("Date of signature", "signature_date")):
        page.get_by_label(label).fill(form[key])
    for label in ("Hospital", "Records Office", "All records"):
        page.get_by_label(label, exact=True).check()
    for box in ("#ack_revoke", "#ack_conditioning", "#ack_redisclosure"):
        page.locator(box).check()
    page.get_by_label("The patient signs").check()
    page.get_by_role("button", name="Sign and send the request").click()
    expect(page.get_by_role("status")).to_contain_text("Your request is signed and sent")
    expect(page.get_by_role("heading", name="Your second-opinion request")).to_be_visible()
    check_page("center-invite-sent")
    made = _requests(app)[before:]
    assert len(made) == 1 and made[0].created_by == "patient"
    # the link again: refused, nothing new
    page.goto(f"/ui/invite?t={link}")
    expect(page.locator("main")).to_contain_text("already used")
    check_page("center-invite-used")
    assert len(_requests(app)) == before + 1
