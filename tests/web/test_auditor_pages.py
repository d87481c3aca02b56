"""The auditors' pages in a real browser, on the seeded store: search the log (by a
patient identifier sent in the form, never in the address), verify a transfer's chain,
the checkpoint history with its proofs checked, the accounting of disclosures, exports
that verify offline, and the charts."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from playwright.sync_api import expect
from sqlalchemy import select

from gateway.audit import verify
from gateway.storage.models import AuditEvent

from tests.web.helpers import sign_in


SYSTEM = "urn:oid:2.16.840.1.113883.19.5"  # route_world's patients' identifier system


def _events(web, type_: str) -> list[AuditEvent]:
    with web.app.extensions["gateway"].db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.type == type_)))


def test_search_by_patient_in_the_form_and_export_what_verifies(page, web, check_page, tmp_path):
    sign_in(page, web, "auditor")
    expect(page).to_have_url(f"{web.url}/ui/audit/")
    page.goto("/ui/audit/checkpoints")
    page.get_by_role("button", name="Sign a checkpoint now").click()
    page.get_by_role("link", name="Audit log").click()
    mrn = web.leaks[3]  # the patient's identifier value
    page.get_by_label("Patient identifier").fill(f"{SYSTEM}|{mrn}")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("#events tbody tr[data-seq]")
    expect(rows.first).to_be_visible()
    assert mrn not in page.url
    types = rows.locator("td:nth-child(3)").all_inner_texts()
    assert "authorization.verified" in types and "transfer.created" in types
    transfers = set(rows.locator("td:nth-child(6)").all_inner_texts()) - {"–"}
    assert transfers == {web.ids["transfer_id"][:12]}  # only this patient's transfer
    check_page("audit-events")
    [read] = [e for e in _events(web, "web.read.audit.events") if e.patient_key]
    assert read.actor == "route-auditor"

    with page.expect_download() as got:
        page.get_by_role("button", name="Export log entries (NDJSON)").click()
    events = tmp_path / "events.ndjson"
    got.value.save_as(events)
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert {e["event"]["transfer_id"] for e in lines} - {None} == {web.ids["transfer_id"]}
    # logged after the checkpoint: only this very search and export, proven at the next one
    assert {e["event"]["type"] for e in lines if "inclusion_proof" not in e} <= {
        "web.read.audit.events", "web.read.audit.export"}
    events.write_text("".join(json.dumps(e) + "\n" for e in lines if "inclusion_proof" in e))
    # what was exported checks out offline against the published checkpoints and key
    cps, key = tmp_path / "checkpoints.json", tmp_path / "jwks.json"
    cps.write_text(page.request.get("/audit/checkpoints").text())
    key.write_text(page.request.get("/.well-known/jwks.json").text())
    assert verify.verify_files(events, cps, key, partial=True) == []


def test_a_transfers_chain_verified(page, web, check_page):
    sign_in(page, web, "auditor")
    page.goto("/ui/audit/checkpoints")
    page.get_by_role("button", name="Sign a checkpoint now").click()
    expect(page.locator("p.notice")).to_be_visible()
    page.goto("/ui/audit/")
    page.get_by_label("Verify a transfer's whole chain").fill(web.ids["transfer_id"])
    page.get_by_role("button", name="Verify", exact=True).click()
    expect(page.locator("#verdict")).to_contain_text("Verified: all")
    checks = page.locator("#chain tbody tr").evaluate_all("rs => rs.map(r => r.dataset.check)")
    assert checks and set(checks) == {"ok"}
    expect(page.locator("#chain")).to_contain_text("authorization.verified")
    expect(page.locator("#chain")).to_contain_text("included in the signed log of size")
    check_page("audit-chain")


def test_checkpoint_history_with_consistency_checked(page, web, check_page):
    sign_in(page, web, "auditor")
    page.goto("/ui/audit/checkpoints")
    for _ in range(2):  # one over what the pages logged since, one over nothing new
        page.get_by_role("button", name="Sign a checkpoint now").click()
        expect(page.locator("p.notice")).to_be_visible()
    rows = page.locator("#checkpoints tbody tr[data-size]")
    assert rows.count() >= 2
    sizes = [int(s) for s in rows.evaluate_all("rs => rs.map(r => r.dataset.size)")]
    assert sizes == sorted(sizes)
    signatures = rows.locator("td:nth-child(4)").all_inner_texts()
    links = rows.locator("td:nth-child(5)").all_inner_texts()
    assert all(s.startswith("verified") for s in signatures)
    assert links[0].startswith("pending") and all(c.startswith("verified: extends size")
                                                 for c in links[1:])
    check_page("audit-checkpoints")


def test_accounting_of_disclosures_by_post_with_pdf_export(page, web, check_page):
    sign_in(page, web, "auditor")
    page.get_by_role("link", name="Accounting").click()
    page.get_by_label("Patient identifier").fill(f"{SYSTEM}|{web.leaks[3]}")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#disclosures caption")).to_contain_text("disclosure")
    assert web.leaks[3] not in page.url
    check_page("audit-accounting")
    with page.expect_download() as got:
        page.get_by_role("button", name="Export as PDF").click()
    assert got.value.suggested_filename == "accounting-of-disclosures.pdf"
    assert open(got.value.path(), "rb").read(5) == b"%PDF-"
    with page.expect_download() as got:
        page.get_by_role("button", name="Export as JSON").click()
    acc = json.loads(open(got.value.path()).read())
    assert set(acc) >= {"patient_key", "disclosures", "checkpoint"}
    assert [e for e in _events(web, "web.read.audit.accounting") if e.patient_key == acc["patient_key"]]


def test_figures_page_draws_the_charts_with_their_tables(page, web, check_page):
    sign_in(page, web, "operator")
    page.get_by_role("link", name="Figures").click()
    charts = page.locator("figure.chart svg")
    expect(charts).to_have_count(1)  # latency and time to records: "none yet", no empty plot
    expect(page.locator("figure.chart figcaption").nth(1)).to_have_text("Delivery latency: none yet.")
    root = ET.fromstring(charts.first.evaluate("s => s.outerHTML"))
    bars = [r for r in root.iter("{http://www.w3.org/2000/svg}rect") if r.get("class") == "bar"]
    # the seeded transfer, started today and not finished
    assert [(b.get("data-series"), b.get("data-value")) for b in bars] == [("in progress", "1")]
    expect(page.locator("figure.chart figcaption").first).to_contain_text("1 in 14 days")
    check_page("figures")


def test_other_roles_see_no_audit_page(page, web):
    sign_in(page, web, "recipient")
    response = page.goto("/ui/audit/")
    assert response.status == 403
