"""The operator pages in a real browser: the lists and their filters, a transfer and a
case, assigning a fax from review, revoking an authorization through its confirmation,
dead letters. Each page is checked with axe-core and photographed."""
from __future__ import annotations

import io
import re
import secrets
from pathlib import Path

from PIL import Image
from playwright.sync_api import expect
from sqlalchemy import select

from gateway.storage.models import AuditEvent, Authorization, Transfer

from tests.helpers import bearer
from tests.security import route_world
from tests.web.helpers import sign_in


def _api(web):
    return web.app.test_client(), bearer(web.tokens["operator"])


def _events(web, type_: str) -> list[AuditEvent]:
    with web.app.extensions["gateway"].db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.type == type_)))


def _new_transfer(web, sources: list[str], patient: dict | None = None) -> tuple[str, str]:
    """An authorization imported and a transfer started through the API."""
    client, operator = _api(web)
    auth_id = f"auth-{secrets.token_hex(6)}"
    claims = web.claims_for(auth_id, **({"patient": patient} if patient else {}))
    r = client.post("/authorizations", json={"jws": web.sign(claims)}, headers=operator)
    assert r.status_code == 201, r.get_json()
    r = client.post("/transfers", json={"authorization": auth_id, "sources": sources,
                                        "recipient": "center"}, headers=operator)
    assert r.status_code == 202, r.get_json()
    return auth_id, r.get_json()["id"]


def test_filters_by_patient_identifier_in_the_form_not_the_url(page, web):
    sign_in(page, web, "operator")
    mrn = next(x for x in web.leaks if x.startswith("MRN-"))
    page.get_by_label("Patient identifier").fill(mrn)
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("table").locator("caption")).to_contain_text("matching the filters")
    expect(page.locator(f'tr[data-transfer="{web.ids["transfer_id"]}"]')).to_have_count(1)
    assert page.url == f"{web.url}/ui/operator/" and mrn not in page.url
    assert _events(web, "web.read.patient_search")[-1].actor == "route-operator"
    page.get_by_label("Patient identifier").fill("MRN-nobody")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("No transfers.")).to_be_visible()
    page.get_by_label("Patient identifier").fill("")
    page.get_by_label("State").select_option("pending")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator(f'tr[data-transfer="{web.ids["transfer_id"]}"]')).to_have_count(1)
    page.get_by_label("Created from").fill("2999-01-01")  # nothing is that new
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("No transfers.")).to_be_visible()
    expect(page.get_by_label("State")).to_have_value("pending")  # the form keeps its filters


def test_transfer_and_case_pages(page, web, check_page):
    sign_in(page, web, "operator")
    tid = web.ids["transfer_id"]
    page.get_by_role("link", name=tid[:12]).click()
    expect(page.get_by_role("heading", name=f"Transfer {tid[:12]}")).to_be_visible()
    family = web.leaks[0]
    expect(page.locator("dl.facts")).to_contain_text(family)  # the patient, to the operator
    [read] = [e for e in _events(web, "web.read.transfer") if e.transfer_id == tid][-1:]
    assert read.actor == "route-operator" and read.patient_key  # the view is on the log
    check_page("operator-transfer")
    page.get_by_role("link", name=f"case {web.ids['case_id'][:12]}").click()
    expect(page.get_by_role("heading", name="Timeline")).to_be_visible()
    timeline = page.locator("ol.timeline")
    expect(timeline).to_contain_text("Authorization verified")
    expect(timeline).to_contain_text("Transfer started")
    check_page("operator-case")
    page.get_by_role("link", name="Cases").click()
    expect(page.get_by_role("link", name=web.ids["case_id"][:12])).to_be_visible()
    check_page("operator-cases")


def _synthetic_page(path, lines: list[str]) -> None:
    """A first-page preview that looks like a faxed report (synthetic text only)."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (612, 792), 255)
    draw = ImageDraw.Draw(image)
    for n, line in enumerate(lines):
        draw.text((60, 70 + 28 * n), line, fill=0)
    draw.rectangle((50, 50, 562, 742), outline=0)
    image.save(path, format="PNG")


def test_assign_a_fax_from_review(page, web, check_page):
    patient = {"name": {"family": "Faxperson", "given": ["Robin"]}, "birthDate": "1961-04-05",
               "identifiers": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-FAX-1"}]}
    _, tid = _new_transfer(web, ["fax"], patient)
    fax_id = route_world._fax_in_review(web.config, "Faxperson", tid, "+1 555 0199")
    from connectors.fax.store import FaxStore

    store = FaxStore(Path(web.config["sources"]["fax"]["options"]["store"]))
    folder = store.path("review", fax_id)
    _synthetic_page(folder / "preview-1.png", [
        "SYNTHETIC LABORATORY REPORT (test data)", "", "Patient: Robin Faxperson",
        "Born: 1961-04-05", "", "Hemoglobin A1c ........ 5.4 %", "LDL cholesterol ...... 98 mg/dL"])
    for n in (2, 3):
        _synthetic_page(folder / f"preview-{n}.png", [f"SYNTHETIC REPORT, PAGE {n} (test data)"])
    sign_in(page, web, "operator")
    page.get_by_role("link", name="Fax review").click()
    page.get_by_role("link", name=f"Review fax {fax_id}").click()
    expect(page.get_by_role("img", name=re.compile(r"^Page \d+ of \d+$"))).to_have_count(3)
    for n in (1, 2, 3):
        preview = page.get_by_role("img", name=f"Page {n} of 3", exact=True)
        preview.scroll_into_view_if_needed()
        expect(preview).to_be_visible()
        page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=preview.element_handle())
        assert page.evaluate("(img) => img.naturalWidth", preview.element_handle()) == 612
        got = page.request.get(preview.get_attribute("src"))
        assert got.status == 200 and got.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(got.body())) as image:
            assert image.size == (612, 792) and image.getextrema() == (0, 255)
    src = page.get_by_role("img", name="Page 1 of 3", exact=True).get_attribute("src")
    for bad in ("4", "0", "x"):
        refused = page.request.get(src.replace("/pages/1", f"/pages/{bad}"))
        assert refused.status == 404 and "pages 1 to 3" in refused.text()
    choice = page.get_by_label("Transfer (patient, born, request id)")
    expect(choice.locator("option").first).to_contain_text("Robin Faxperson, 1961-04-05")
    check_page("operator-fax-review")
    choice.select_option(tid)
    page.get_by_role("button", name="Assign fax").click()
    expect(page.get_by_role("status")).to_contain_text("Fax assigned")
    expect(page.get_by_role("link", name=f"Review fax {fax_id}")).to_have_count(0)
    [assigned] = [e for e in _events(web, "fax.assigned") if e.detail["fax_id"] == fax_id]
    assert assigned.transfer_id == tid and assigned.actor == "route-operator"
    reads = [e for e in _events(web, "fax.review.read") if e.detail.get("fax_id") == fax_id]
    assert {e.detail["what"] for e in reads} >= {"item", "preview"}


def test_revoke_an_authorization_through_its_confirmation(page, web, check_page):
    auth_id, tid = _new_transfer(web, ["records"])
    sign_in(page, web, "operator")
    page.get_by_role("link", name="Authorizations").click()
    row = page.locator(f'tr[data-authorization="{auth_id}"]')
    expect(row).to_contain_text("valid")
    check_page("operator-authorizations")
    row.get_by_role("link", name="Revoke").click()
    expect(page.get_by_role("heading", name=f"Revoke authorization {auth_id}?")).to_be_visible()
    expect(page.get_by_text("1 transfer is running and will be stopped")).to_be_visible()
    check_page("operator-revoke-confirm")
    page.get_by_label("Why is it revoked?").fill("patient withdrew consent")
    page.get_by_label("Yes, revoke this authorization").check()
    page.get_by_role("button", name="Revoke authorization").click()
    expect(page.get_by_role("status")).to_contain_text("Authorization revoked")
    expect(page.locator(f'tr[data-authorization="{auth_id}"]')).to_contain_text("revoked")
    with web.app.extensions["gateway"].db.session() as s:
        assert s.get(Authorization, auth_id).status == "revoked"
        assert s.get(Transfer, tid).state == "cancelled"
    [event] = [e for e in _events(web, "authorization.revoked") if e.authorization_id == auth_id]
    assert event.actor == "route-operator"


def test_dead_letters_page(page, web, check_page):
    sign_in(page, web, "operator")
    page.get_by_role("link", name="Dead letters").click()
    table = page.get_by_role("table", name="Notifications that failed for good (1)")
    expect(table).to_contain_text("HTTP 503")
    check_page("operator-dead-letters")
    table.get_by_role("button", name="Replay").click()
    expect(page.get_by_role("status")).to_contain_text("Notification queued")
    expect(page.get_by_role("table", name="Notifications that failed for good (0)")).to_be_visible()


def test_approve_a_case_and_mark_a_source_without_records(page, web):
    case_id = web.ids["case_id"]
    sign_in(page, web, "operator")
    page.goto(f"/ui/operator/cases/{case_id}")
    page.get_by_role("button", name="Approve this case").click()
    expect(page.get_by_role("status")).to_contain_text("Case approved")
    expect(page.get_by_role("button", name="Approve this case")).to_have_count(0)
    [approved] = [e for e in _events(web, "case.approved") if e.detail.get("case_id", case_id) == case_id]
    assert approved.actor == "route-operator"
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="fax", exact=True))
    row.get_by_label("Why no records").fill("the clinic holds no faxes for this patient")
    row.get_by_role("button", name="Mark no records").click()
    expect(page.get_by_role("status")).to_contain_text("the source has no records")
    expect(page.get_by_role("row").filter(has=page.get_by_role("cell", name="fax", exact=True))
           ).to_contain_text("no-records")


def test_the_cases_list_updates_live(page, web):
    auth_id, _ = _new_transfer(web, ["records"])
    client, operator = _api(web)
    [case] = [c for c in client.get("/cases", headers=operator).get_json()["cases"]
              if c["authorization"] == auth_id]
    sign_in(page, web, "operator")
    page.get_by_role("link", name="Cases").click()
    row = page.locator(f'tr[data-case="{case["id"]}"]')
    expect(row.locator('[data-field="state"]')).to_have_text(case["state"])
    page.evaluate("() => { window.loadedOnce = true; }")
    assert client.post(f"/cases/{case['id']}/close", json={"reason": "test"},
                       headers=operator).status_code == 200  # elsewhere, by the API
    expect(row.locator('[data-field="state"]')).to_have_text("closed")
    assert page.evaluate("() => window.loadedOnce === true")
