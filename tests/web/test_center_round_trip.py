"""The center's pages against a real sending gateway: two `records-gateway serve`
processes, one transfer of PDFs between them; a person at the center opens the records
in the browser (the signed "opened" receipt reaches the sender) and sends the written
opinion from the reply form (the sender receives it, signed and receipted)."""
from __future__ import annotations

import json

import pytest
import requests
from click.testing import CliRunner
from playwright.sync_api import expect

from gateway.cli.main import main
from gateway.storage.blobstore import new_master_key
from gateway.trust.keys import SigningKeys
from tests.helpers import (
    RECEIVER_ORG,
    SENDER_ORG,
    GatewayProcess,
    bearer,
    stop_all,
    wait_until,
    write_pdfs,
)
from tests.web.conftest import web_config

CONCLUSION = "Synthetic opinion: agree with the working diagnosis; no further imaging."


def _cli(proc: GatewayProcess, *args: str) -> str:
    """`records-gateway ARGS` with the process's config, in this process (no start-up cost)."""
    done = CliRunner().invoke(main, list(args), env={"GATEWAY_CONFIG_FILE": str(proc.config_file)})
    assert done.exit_code == 0, done.output
    return done.stdout.strip()


def _token(proc: GatewayProcess, name: str, role: str) -> str:
    return _cli(proc, "token", "create", "--name", name, "--role", role)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, issuer_private_key):
    """A hospital gateway (with its worker) and a center gateway, one completed transfer."""
    tmp = tmp_path_factory.mktemp("pair")
    config, claims_for, sign = web_config(tmp, issuer_private_key)
    center_url = config["peers"]["center"]["base_url"]
    hospital_url = f"http://127.0.0.1:{config['port']}"
    config.update(base_url=hospital_url, senders={"test-center": {
        "organization": RECEIVER_ORG, "jwks_url": f"{center_url}/.well-known/jwks.json"}})
    (tmp / "center").mkdir()
    center_config = {
        "data_dir": str(tmp / "center"), "blob_key": new_master_key(), "mode": "receive",
        "organization": RECEIVER_ORG, "port": int(center_url.rsplit(":", 1)[1]),
        "base_url": center_url,
        "senders": {"test-hospital": {"organization": SENDER_ORG, "base_url": hospital_url,
                                      "jwks_file": str(tmp / "hospital-jwks.json"),
                                      "token_file": str(tmp / "center-token")}}}
    hospital = GatewayProcess(config, tmp, "hospital")
    center = GatewayProcess(center_config, tmp, "center")
    started = []
    try:
        for proc in (hospital, center):
            _cli(proc, "init")
        (tmp / "hospital-jwks.json").write_text(json.dumps(
            SigningKeys(tmp / "sender" / "keys").jwks()))
        (tmp / "sender" / "peer-token").write_text(_token(center, "test-hospital", "peer"))
        (tmp / "center-token").write_text(_token(hospital, "test-center", "peer"))
        tokens = {"staff": _token(center, "center-staff", "recipient"),
                  "operator": _token(hospital, "hospital-operator", "operator"),
                  "hospital-inbox": _token(hospital, "referring-doctor", "recipient")}
        for proc, args in ((center, ("serve", "--receive")), (hospital, ("serve",))):
            started.append(proc.start(*args))
            proc.wait_http(60)
        operator = bearer(tokens["operator"])
        r = requests.post(f"{hospital_url}/authorizations", json={"jws": sign(claims_for())},
                          headers=operator, timeout=30)
        assert r.status_code == 201, r.text
        r = requests.post(f"{hospital_url}/transfers", headers=operator, timeout=30, json={
            "authorization": r.json()["id"], "sources": ["records"], "recipient": "center"})
        assert r.status_code == 202, r.text
        transfer = r.json()["id"]
        write_pdfs(tmp / "drop" / transfer, count=2)

        def done():
            view = requests.get(f"{hospital_url}/transfers/{transfer}", headers=operator,
                                timeout=10).json()
            return view if view["state"] in ("completed", "failed", "dead_letter") else None

        view = wait_until(done, 120, 0.3, "the transfer to end")
        assert view["state"] == "completed", view["reason"]
        yield {"hospital": hospital_url, "center": center_url, "tokens": tokens,
               "transfer": transfer, "operator": operator}
    finally:
        stop_all(started)


@pytest.fixture
def staff_page(browser, pair):
    context = browser.new_context(base_url=pair["center"])
    page = context.new_page()
    page.goto("/ui/sign-in")
    page.get_by_label("API token").fill(pair["tokens"]["staff"])
    page.get_by_role("button", name="Sign in with token").click()
    expect(page.get_by_role("heading", name="Inbox")).to_be_visible()
    yield page
    context.close()


def _transfer(pair) -> dict:
    return requests.get(f"{pair['hospital']}/transfers/{pair['transfer']}",
                        headers=pair["operator"], timeout=10).json()


def test_opening_an_item_sends_the_signed_opened_receipt_to_the_sender(staff_page, pair):
    assert _transfer(pair)["bundles"][0]["opened"] is None
    row = staff_page.locator("#inbox tbody tr").first
    expect(row).to_contain_text("new")
    row.get_by_role("link").click()
    expect(staff_page.locator("main h2").first).to_have_text("Patient summary")
    expect(staff_page.locator("#opened-status")).to_contain_text(
        'the sender holds the signed "opened" receipt')
    opened = _transfer(pair)["bundles"][0]["opened"]
    assert opened["openedBy"] == "center-staff" and opened["iss"] == RECEIVER_ORG
    # the summary the sender made comes first, with its sections
    expect(staff_page.locator("#patient-summary h3").first).to_contain_text("Clinical notes (2)")


def test_the_reply_form_sends_the_opinion_back_signed_and_receipted(staff_page, pair):
    staff_page.locator("#inbox tbody tr").first.get_by_role("link").click()
    staff_page.get_by_label("Opinion", exact=True).fill(CONCLUSION)
    staff_page.get_by_role("button", name="Send the opinion").click()
    expect(staff_page.locator("p.notice")).to_contain_text("the sender's receipt verified")
    expect(staff_page.locator("#replies tbody tr")).to_have_count(1)
    # the hospital holds it: a DiagnosticReport in reply to the bundle it sent
    doctor = bearer(pair["tokens"]["hospital-inbox"])
    [back] = requests.get(f"{pair['hospital']}/inbox", headers=doctor, timeout=10).json()["received"]
    assert back["senderOrganization"] == RECEIVER_ORG
    bundle = requests.get(f"{pair['hospital']}/inbox/{back['id']}/bundle", headers=doctor,
                          timeout=10).json()
    [report] = [e["resource"] for e in bundle["entry"]
                if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert report["conclusion"] == CONCLUSION and report["status"] == "final"
    assert report["code"]["text"] == "Second opinion"
