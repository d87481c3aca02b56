"""The way back, with real processes: the center opens the records (a signed "opened"
receipt reaches the sender) and sends its second opinion back through the gateways,
signed and receipted; sending it again is a replay, not a second copy."""
from __future__ import annotations


import requests


from tests.helpers import RECEIVER_ORG, SENDER_ORG, bearer, make_token, write_pdfs
from tests.delivery.delivery_support import TERMINAL

OPINION = {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "Second opinion"},
           "issued": "2026-11-22T10:00:00+00:00",
           "conclusion": "Synthetic: agree with the working diagnosis."}


def test_opened_receipt_and_second_opinion_come_back(dstack, claims_for, sign, drop_dir, app,
                                                     sender_config, receiver_config, receiver_url,
                                                     processes, tmp_path):
    (tmp_path / "center-token").write_text(make_token(app, "peer", "test-center"))
    receiver_config["senders"]["test-hospital"].update(
        base_url=f"http://127.0.0.1:{sender_config['port']}", token_file=str(tmp_path / "center-token"))
    sender_config["senders"] = {"test-center": {"organization": RECEIVER_ORG,
                                                "jwks_url": f"{receiver_url}/.well-known/jwks.json"}}
    processes(sender_config, tmp_path, "hospital-api", "serve", "--no-worker").wait_http()
    dstack.start_receiver()
    r = dstack.client.post("/transfers", json={"authorization": dstack.authorize(claims_for(), sign),
                                               "sources": ["records"], "recipient": "center"},
                           headers=dstack.operator)
    tid = r.get_json()["id"]
    write_pdfs(drop_dir / tid, count=1)
    view = dstack.wait_state(tid, TERMINAL, 150)
    assert view["state"] == "completed", view["reason"]
    [item] = dstack.inbox()

    opened = requests.post(f"{receiver_url}/inbox/{item['id']}/opened", headers=dstack.inbox_headers,
                           timeout=30).json()
    assert opened["senderNotified"] is True
    part = dstack.view(tid)["bundles"][0]
    assert part["opened"]["openedBy"] == "staff" and part["opened"]["iss"] == RECEIVER_ORG
    assert dstack.events("transfer.receipt.opened")

    sent = requests.post(f"{receiver_url}/inbox/{item['id']}/reply", json={"resource": OPINION},
                         headers=dstack.inbox_headers, timeout=30)
    assert sent.status_code == 200, sent.text
    reply = sent.json()
    assert reply["receipt"]["iss"] == SENDER_ORG and reply["receipt"]["status"] == "accepted"
    assert reply["inReplyTo"] == item["bundle"]
    again = requests.post(f"{receiver_url}/inbox/{item['id']}/reply", json={"resource": OPINION},
                          headers=dstack.inbox_headers, timeout=30).json()
    assert again["receipt"]["receipt_id"] == reply["receipt"]["receipt_id"]

    staff = bearer(make_token(app, "recipient", "referring-doctor"))
    [back] = dstack.client.get("/inbox", headers=staff).get_json()["received"]
    assert back["senderOrganization"] == RECEIVER_ORG and back["recipient"] == SENDER_ORG
    bundle = dstack.client.get(f"/inbox/{back['id']}/bundle", headers=staff).get_json()
    [report] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert report["conclusion"] == OPINION["conclusion"]
