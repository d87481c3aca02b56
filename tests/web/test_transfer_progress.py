"""A real transfer watched in the browser: a Celery worker process pulls synthetic PDFs
from a folder and delivers them to a receiving gateway process, while the transfers
page, loaded once, updates its bars and states by itself until the transfer completes."""
from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from gateway import create_app
from gateway.engine.faxes import ensure_cover_key
from gateway.storage.blobstore import new_master_key
from tests.helpers import (
    RECEIVER_ORG,
    SENDER_ORG,
    GatewayProcess,
    bearer,
    make_token,
    stop_all,
    write_pdfs,
)
from tests.web.conftest import ServerThread, WebWorld, web_config
from tests.web.helpers import sign_in


@pytest.fixture(scope="module")
def web(tmp_path_factory, issuer_private_key):
    """The sending gateway's pages in-process, its worker and the recipient as processes."""
    tmp = tmp_path_factory.mktemp("web-transfer")
    config, claims_for, sign = web_config(tmp, issuer_private_key)
    app = create_app(config)
    svc = app.extensions["gateway"]
    svc.keys.ensure()
    ensure_cover_key(svc.settings.keys_dir)
    (tmp / "sender-jwks.json").write_text(json.dumps(svc.keys.jwks()))
    receiver_url = config["peers"]["center"]["base_url"]
    receiver = {"data_dir": str(tmp / "receiver"), "blob_key": new_master_key(),
                "organization": RECEIVER_ORG, "mode": "receive",
                "port": int(receiver_url.rsplit(":", 1)[1]), "base_url": receiver_url,
                "senders": {"test-hospital": {"organization": SENDER_ORG,
                                              "jwks_file": str(tmp / "sender-jwks.json")}}}
    (tmp / "receiver").mkdir()
    center = create_app(receiver)  # its keys and store made here, as `init` would
    try:
        center.extensions["gateway"].keys.ensure()
        (tmp / "sender" / "peer-token").write_text(make_token(center, "peer", "test-hospital"))
    finally:
        center.extensions["gateway"].close()
    procs = [GatewayProcess(receiver, tmp, "receiver").start("serve", "--receive"),
             GatewayProcess(config, tmp, "worker").start("worker", "--beat")]
    try:
        procs[0].wait_http()
        tokens = {"operator": make_token(app, "operator", "web-operator")}
        with ServerThread(app) as server:
            yield WebWorld(url=server.url, app=app, ids={}, tokens=tokens, leaks=[],
                           config=config, tmp=tmp, claims_for=claims_for, sign=sign)
    finally:
        stop_all(procs)
        svc.close()


def test_a_transfer_progresses_to_completed_without_reloading(page, web, check_page):
    client, operator = web.app.test_client(), bearer(web.tokens["operator"])
    r = client.post("/authorizations", json={"jws": web.sign(web.claims_for())}, headers=operator)
    assert r.status_code == 201, r.get_json()
    r = client.post("/transfers", json={"authorization": r.get_json()["id"], "sources": ["records"],
                                        "recipient": "center"}, headers=operator)
    tid = r.get_json()["id"]
    sign_in(page, web, "operator")
    row = page.locator(f'tr[data-transfer="{tid}"]')
    expect(row).to_be_visible()
    page.evaluate("() => { window.loadedOnce = true; }")  # gone if the page reloads
    sent = write_pdfs(web.tmp / "drop" / tid, count=3)  # the source's records arrive
    expect(row.locator('[data-field="state"]')).to_have_text("completed", timeout=120_000)
    expect(row.locator('progress[data-field="percent"]')).to_have_attribute("value", "100")
    expect(row.locator('[data-field="percent-text"]')).to_have_text("100%")
    source = row.locator('[data-source="records"]')
    expect(source.locator(".source-text")).to_contain_text(f"done: {len(sent)} items")
    assert page.evaluate("() => window.loadedOnce === true")  # updated live, never reloaded
    expect(page.locator("#live")).to_have_text("")  # polling stopped: nothing runs
    check_page("operator-transfers-completed")
    row.get_by_role("link").click()
    expect(page.locator("table").filter(has_text="Part")).to_contain_text("signed")
    check_page("operator-transfer-completed")
    page.locator("dl.facts").get_by_role("link").click()  # its case, and the story so far
    timeline = page.locator("ol.timeline li")
    expect(timeline.last).to_be_visible()
    story = [t.split(" ", 2)[2] for t in timeline.all_inner_texts()]
    steps = ["Authorization verified", "Transfer started", "Pull started", "Pull finished",
             "Bundle assembled", "Bundle delivered", "Receipt verified"]
    found = [next(i for i, text in enumerate(story) if text.startswith(step)) for step in steps]
    assert found == sorted(found), story  # in the order they happened
    assert any(text.startswith("Pull finished") and "items 3" in text for text in story), story
    check_page("operator-case-completed")
    page.get_by_role("link", name="Cases").click()  # the case list's bars are live too
    case_row = page.locator("tr[data-case]").first
    expect(case_row.locator('[data-field="sources"]')).to_contain_text("records: complete")
    expect(case_row.locator('[data-field="percent-text"]')).to_have_text("100%")
    check_page("operator-cases-live")
