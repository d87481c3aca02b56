"""The receiving center's pages in a real browser, on the seeded store: the inbox, an
item with its patient summary first, a document in a sandboxed frame, a study and its
series frame by frame by keyboard, and a recipient of another organization who sees
nothing of this one. (The opened receipt and the reply reaching a real sender:
test_center_round_trip.py.)"""
from __future__ import annotations

import hashlib
import io
import re
import secrets
import uuid

import pytest
from PIL import Image
from playwright.sync_api import expect

from gateway.trust.keys import SigningKeys
from gateway.trust.receipts import SIGNATURE_HEADER, sign_bundle
from gateway.trust.tokens import create_token

from tests.helpers import bearer
from tests.security import route_world
from tests.web.helpers import sign_in, visible_text


@pytest.fixture(scope="module")
def series(web):
    """A second received bundle whose study has one series of three 32x32 slices, sent by
    STOW-RS beside it, as route_world's first one (that study has a single frame)."""
    from tests.dicom.dicom_studies import make_study

    client = web.app.test_client()
    peer = bearer(web.tokens["peer"])
    patient = route_world._patient()
    study = make_study(web.tmp / "viewer-study", 3, 1, rows=32, cols=32,
                       patient_id=patient["identifiers"][0]["value"])
    boundary = secrets.token_hex(8)
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    + f.read_bytes() + b"\r\n" for f in study.files) + f"--{boundary}--\r\n".encode()
    r = client.post(f"/dicomweb/studies/{study.study_uid}", data=body, headers={
        **peer, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 200, r.get_data(as_text=True)
    held = {sop: hashlib.sha256(bytes(128) + f.read_bytes()[128:]).hexdigest()
            for sop, f in zip(study.sop_uids_in_file_order(), study.files)}
    bundle = route_world._received_bundle(patient, str(uuid.uuid4()), study.study_uid, held)
    hospital = SigningKeys(web.tmp / "route-hospital-keys")
    r = client.post("/fhir", data=bundle, content_type="application/fhir+json", headers={
        **peer, "Idempotency-Key": secrets.token_hex(8),
        SIGNATURE_HEADER: sign_bundle(hospital, bundle, "x")})
    assert r.status_code == 200, r.get_json()
    inbox = client.get("/inbox", headers=bearer(web.tokens["recipient"])).get_json()["received"]
    received = next(i for i in inbox if i["id"] != web.ids["received_id"])
    return {"received_id": received["id"], "study": study.study_uid,
            "series": next(iter(study.series)), "patient": patient}


def test_inbox_then_an_item_with_its_patient_summary_first(page, web, check_page):
    sign_in(page, web, "recipient")
    expect(page).to_have_url(f"{web.url}/ui/center/")
    row = page.locator(f'tr[data-received="{web.ids["received_id"]}"]')
    expect(row).to_contain_text("new")
    check_page("center-inbox")
    row.get_by_role("link").click()
    headings = page.locator("main h2")
    expect(headings.first).to_have_text("Patient summary")
    family = web.leaks[0]
    expect(page.locator("#patient-summary")).to_contain_text(family)
    expect(page.locator("#documents")).to_contain_text("note.pdf")
    expect(page.locator("#studies")).to_contain_text("1 of 1")  # instances held of announced
    check_page("center-item")
    page.goto("/ui/center/")
    expect(page.locator(f'tr[data-received="{web.ids["received_id"]}"]')).to_contain_text(
        "by route-recipient")


def test_a_document_is_shown_in_a_sandboxed_frame(page, web, check_page):
    sign_in(page, web, "recipient")
    page.goto(f"/ui/center/inbox/{web.ids['received_id']}")
    page.locator("#documents").get_by_role("link", name="note.pdf").click()
    frame = page.locator("iframe.document")
    expect(frame).to_be_visible()
    src = frame.get_attribute("src")
    # Chromium shows it (its PDF viewer loaded in the frame, no error page): the sandbox is
    # the response's own CSP, as a sandbox attribute would make Chromium refuse the PDF
    expect(page.frame_locator("iframe.document").locator("embed, body").first).to_be_attached()
    assert not [f.url for f in page.frames if f.url.startswith("chrome-error:")]
    assert any(f.url.endswith(src) for f in page.frames)
    check_page("center-document")
    content = page.request.get(src)
    assert content.status == 200
    assert content.headers["content-type"] == "application/pdf"
    assert content.headers["content-disposition"].startswith("inline;")
    assert content.headers["content-security-policy"].startswith("sandbox;")
    assert "frame-ancestors 'self'" in content.headers["content-security-policy"]
    assert content.headers["x-frame-options"] == "SAMEORIGIN"
    assert content.headers["x-content-type-options"] == "nosniff"
    assert content.body() == b"%PDF-1.4 " + web.leaks[0].encode()  # the bytes as sent
    download = page.request.get(src + "?download=1")
    assert download.headers["content-disposition"].startswith("attachment;")


def test_a_series_frame_by_frame_by_keyboard(page, web, series, check_page):
    sign_in(page, web, "recipient")
    page.goto(f"/ui/center/inbox/{series['received_id']}")
    page.locator("#studies").get_by_role("link").click()
    expect(page.locator("#series")).to_contain_text("3")
    check_page("center-study")
    page.locator("#series").get_by_role("link").click()
    img = page.locator("img#frame")
    expect(page.locator("#position")).to_have_text("Frame 1 of 3")
    expect(img).to_have_js_property("complete", True)
    assert img.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [32, 32]
    check_page("center-viewer")
    first = page.request.get(img.get_attribute("src")).body()
    page.keyboard.press("ArrowRight")
    expect(page.locator("#position")).to_have_text("Frame 2 of 3")
    expect(img).to_have_attribute("src", re.compile(r"/frames/2$"))
    page.keyboard.press("End")
    expect(page.locator("#position")).to_have_text("Frame 3 of 3")
    expect(page.locator("#next")).to_have_attribute("aria-disabled", "true")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#position")).to_have_text("Frame 2 of 3")
    second = page.request.get(img.get_attribute("src"))
    assert second.headers["content-type"] == "image/png"
    png = Image.open(io.BytesIO(second.body()))
    assert png.size == (32, 32) and second.body() != first  # another slice, rendered
    assert "?frame=2" in page.url  # the address follows, so a reload stays on the frame
    page.reload()
    expect(page.locator("#position")).to_have_text("Frame 2 of 3")


def test_a_recipient_of_another_organization_sees_nothing_of_this_one(page, web, series):
    with web.app.extensions["gateway"].db.session() as s:
        _, token = create_token(s, "elsewhere-staff", "recipient", actor="test",
                                organization="org-another-center")
    page.goto("/ui/sign-in")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in with token").click()
    expect(page.locator("#inbox")).to_contain_text("Nothing received yet.")
    for path in (f"/ui/center/inbox/{web.ids['received_id']}",
                 f"/ui/center/inbox/{series['received_id']}/studies/{series['study']}",
                 f"/ui/center/inbox/{web.ids['received_id']}/documents/{web.ids['doc_id']}/content",
                 f"/ui/center/inbox/{series['received_id']}/studies/{series['study']}/series/"
                 f"{series['series']}/frames/1"):
        response = page.goto(path)
        assert response.status == 404, path
        text = visible_text(page)
        for secret in (web.leaks[0], web.leaks[1], series["patient"]["name"]["family"]):
            assert secret not in text
