"""Unattended cases with real processes: importing an authorization opens its case and
delivers to a receiving gateway with no other call; review sources wait for approval;
follow-ups take only what is new; a fax source that does not answer is reminded (a
request letter in the fax outbox) and then overdue; revocation and expiry close the
case; the intake folder imports what an e-signature service drops."""
from __future__ import annotations

import hmac
import io
import json
import os
import time
from datetime import timedelta
from pathlib import Path

import pypdfium2
import pytest
from sqlalchemy import select

from connectors.fax.cover import decode_cover
from gateway import create_app
from gateway.cli.demo import make_pdf
from gateway.engine import cases as engine_cases
from gateway.engine import unattended
from gateway.engine.faxes import cover_key_path, ensure_cover_key
from gateway.notify.webhook import verify_signature
from gateway.storage.models import AuditEvent, Case, Notification, Transfer, utcnow
from gateway.trust.authorizations import example_claims

from tests.helpers import ISSUER, bearer, make_token, wait_until, write_pdfs
from tests.notify_peers import HookServer, MailServer
from tests.test_transfer_flow import Stack

FAST = {"case_tick_s": 0.5}


def configure(sender_config: dict, tmp_path, records: dict | None = None, fax: dict | None = None):
    sender_config.update(FAST)
    sender_config["sources"]["records"].update(records or {"auto": "start"})
    sender_config["sources"]["fax"].update(fax or {"auto": "off"})
    outbox = tmp_path / "fax-out"
    outbox.mkdir(exist_ok=True)
    sender_config["sources"]["fax"]["options"]["outbox"] = str(outbox)
    return outbox


@pytest.fixture
def case_stack(request, sender_config, receiver_config, tmp_path, processes):
    """A Stack whose sender settings were changed by the test's `configure` first."""

    def build(**kw):
        outbox = configure(sender_config, tmp_path, **kw)
        app = create_app(sender_config)
        svc = app.extensions["gateway"]
        svc.keys.ensure()
        ensure_cover_key(svc.settings.keys_dir)
        Path(sender_config["data_dir"]).parent.joinpath("sender-jwks.json").write_text(
            json.dumps(svc.keys.jwks()))
        request.addfinalizer(svc.close)
        stack = Stack(app, app.test_client(), bearer(make_token(app, "operator")), processes,
                      sender_config, receiver_config, tmp_path)
        stack.outbox = outbox
        return stack

    return build


def cases(stack) -> list[dict]:
    r = stack.client.get("/cases", headers=stack.operator)
    assert r.status_code == 200, r.get_json()
    return r.get_json()["cases"]


def case(stack, case_id: str) -> dict:
    r = stack.client.get(f"/cases/{case_id}", headers=stack.operator)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def wait_case(stack, case_id: str, check, what: str, timeout: float = 90) -> dict:
    def ready():
        view = case(stack, case_id)
        return view if check(view) else None

    return wait_until(ready, timeout, 0.3, what)


def notifications(stack, channel: str) -> list[Notification]:
    with stack.app.extensions["gateway"].db.session() as s:
        return s.scalars(select(Notification).filter_by(channel=channel, state="sent")).all()


def source(view: dict, name: str) -> dict:
    return next(s for s in view["sources"] if s["name"] == name)


def test_an_imported_authorization_delivers_by_itself_once(case_stack, claims_for, sign, drop_dir):
    stack = case_stack(records={"auto": "start"})
    stack.start_receiver()
    claims = claims_for()
    sent = write_pdfs(drop_dir / claims["jti"], count=2)  # the case's folder
    auth_id = stack.authorize(claims, sign)
    [opened] = cases(stack)
    assert opened["authorization"] == auth_id and opened["state"] == "open"
    assert opened["recipient"] == "center"
    view = wait_case(stack, opened["id"], lambda v: v["complete"], "the case to complete")
    records = source(view, "records")
    assert records["status"] == "complete" and records["counts"]["documents"] == 2
    assert records["counts"]["bytes"] == sum(os.path.getsize(drop_dir / auth_id / n)
                                             for n in sent.values())
    assert records["firstRecordAt"] and records["lastRecordAt"]
    assert source(view, "fax")["status"] == "requested" and not source(view, "fax")["started"]
    [transfer] = view["transfers"]
    assert transfer["state"] == "completed" and transfer["receipt"] and not transfer["followUp"]
    [received] = stack.inbox()
    assert received["sha256"] == stack.view(transfer["id"])["bundle"]["sha256"]
    # the same authorization again: the same case, nothing sent twice
    again = stack.client.post("/authorizations", json={"jws": sign(claims)}, headers=stack.operator)
    assert again.status_code == 201
    assert [c["id"] for c in cases(stack)] == [opened["id"]]
    time.sleep(1.5)  # several ticks
    assert len(case(stack, opened["id"])["transfers"]) == 1 and len(stack.inbox()) == 1
    assert len(stack.events("case.opened")) == 1


def test_a_review_source_waits_for_approval(case_stack, claims_for, sign, drop_dir):
    stack = case_stack(records={"auto": "review"})
    stack.start_receiver()
    claims = claims_for()
    write_pdfs(drop_dir / claims["jti"], count=1)
    stack.authorize(claims, sign)
    [waiting] = cases(stack)
    assert waiting["state"] == "review" and waiting["approval"] == "pending"
    time.sleep(1.5)
    view = case(stack, waiting["id"])
    assert view["transfers"] == [] and source(view, "records")["started"] is False
    r = stack.client.get("/cases?state=review", headers=stack.operator)
    assert [c["id"] for c in r.get_json()["cases"]] == [waiting["id"]]
    r = stack.client.post(f"/cases/{waiting['id']}/approve", headers=stack.operator)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["state"] == "open" and r.get_json()["approval"]["by"]
    view = wait_case(stack, waiting["id"], lambda v: v["complete"], "the approved case to complete")
    assert source(view, "records")["status"] == "complete" and len(stack.inbox()) == 1
    again = stack.client.post(f"/cases/{waiting['id']}/approve", headers=stack.operator)
    assert again.status_code == 409


def test_follow_ups_send_only_what_is_new(case_stack, claims_for, sign, drop_dir):
    stack = case_stack(records={"auto": "start", "poll_interval_s": 1})
    stack.start_receiver()
    claims = claims_for()
    folder = drop_dir / claims["jti"]
    write_pdfs(folder, count=2)
    stack.authorize(claims, sign)
    [opened] = cases(stack)
    wait_case(stack, opened["id"], lambda v: v["complete"], "the first delivery")
    # polls that find nothing new send nothing
    quiet = wait_case(stack, opened["id"],
                      lambda v: any(t["followUp"] and t["state"] == "completed" for t in v["transfers"]),
                      "a poll that found nothing new", timeout=60)["transfers"]
    assert len(stack.inbox()) == 1
    finished = [t for t in quiet[1:] if t["state"] == "completed"]
    assert finished and not [t for t in quiet if t["state"] in ("failed", "cancelled")]
    assert all(stack.view(t["id"])["reason"] == "nothing new since the last delivery"
               for t in finished)
    # a new document at the source: the next poll delivers it, and only it
    staging = folder.parent / "later-result.pdf"
    make_pdf(staging, "Later result", ["a result that came after the first delivery"],
             {"name": {"family": "Testperson", "given": ["Avery"]}, "birthDate": "1970-01-01"})
    staging.rename(folder / "later-result.pdf")
    view = wait_case(stack, opened["id"],
                     lambda v: any(t["followUp"] and t["receipt"] for t in v["transfers"]),
                     "the follow-up delivery", timeout=60)
    delivered = [t for t in view["transfers"] if t["followUp"] and t["receipt"]]
    assert len(delivered) == 1 and len(stack.inbox()) == 2
    items = stack.view(delivered[0]["id"])["items"]
    assert items == {"mapped": 1}
    assert source(view, "records")["counts"]["documents"] == 3
    # a corrected document (the same file, other content) goes again, saying what it replaces
    staging = folder.parent / "corrected.pdf"
    make_pdf(staging, "Synthetic report 0 (corrected)", ["line 0", "corrected value"],
             {"name": {"family": "Testperson", "given": ["Avery"]}, "birthDate": "1970-01-01"})
    staging.rename(folder / "document-0.pdf")
    wait_until(lambda: len(stack.inbox()) == 3, 60, 0.3, "the corrected document")

    def documents(received: dict) -> list[dict]:
        return [e["resource"] for e in stack.received_bundle(received["id"])["entry"]
                if e["resource"]["resourceType"] == "DocumentReference"
                and e["resource"]["content"][0]["attachment"].get("title") == "document-0.pdf"]

    first, *_, latest = sorted(stack.inbox(), key=lambda r: r["receivedAt"])
    [original], [corrected] = documents(first), documents(latest)
    assert corrected["masterIdentifier"] != original["masterIdentifier"]
    assert corrected["relatesTo"] == [{"code": "replaces",
                                       "target": {"identifier": original["masterIdentifier"]}}]
    assert "relatesTo" not in original


@pytest.fixture
def told(tmp_path, sender_config):
    """A webhook receiver and an SMTP server (STARTTLS, AUTH) the sender tells of overdue
    sources and finished cases."""
    hook, folder = HookServer(), tmp_path / "mail"
    folder.mkdir()
    mail = MailServer(folder, password="mail-password", mechanism="PLAIN")
    (tmp_path / "hook-secret").write_text("hook-secret-for-the-test\n")
    (tmp_path / "smtp-password").write_text("mail-password\n")
    events = ["case.started", "source.overdue", "case.complete"]
    sender_config["notify"] = {
        "interval_s": 0.5,
        "webhooks": [{"name": "records-office", "url": hook.url, "events": events,
                      "secret_file": str(tmp_path / "hook-secret")}],
        "email": {"host": "127.0.0.1", "port": mail.port, "username": "gateway",
                  "password_file": str(tmp_path / "smtp-password"), "ca_file": str(mail.ca),
                  "from": "gateway@hospital.example", "to": ["records-office@hospital.example"],
                  "events": events}}
    yield hook, mail
    hook.stop()
    mail.stop()


def test_a_fax_source_is_reminded_then_overdue_then_marked_no_records(case_stack, claims_for,
                                                                      sign, told):
    hook, mail = told
    stack = case_stack(records={"auto": "off"},
                       fax={"auto": "start", "expect_within_s": 4, "remind_every_s": 1})
    stack.start_receiver()
    claims = claims_for()
    auth_id = stack.authorize(claims, sign)
    [opened] = cases(stack)
    view = wait_case(stack, opened["id"], lambda v: source(v, "fax")["status"] == "overdue",
                     "the fax source to be overdue", timeout=60)
    letters = sorted(p.name for p in stack.outbox.iterdir())
    reminders = source(view, "fax")["reminders"]
    assert reminders >= 2 and len(letters) == reminders
    [transfer] = view["transfers"]
    code = f"R-{transfer['id'][:10].upper()}"
    assert letters[0] == f"request-{code}-1.pdf" and not any(n.startswith(".") for n in letters)
    pdf = pypdfium2.PdfDocument(io.BytesIO((stack.outbox / letters[0]).read_bytes()))
    assert len(pdf) == 2  # the letter, then a fresh cover sheet for the reply
    letter_text = pdf[0].get_textpage().get_text_range()
    assert "REMINDER 1" in letter_text and code in letter_text
    key = cover_key_path(stack.app.extensions["gateway"]).read_bytes().strip()
    cover = decode_cover(pdf[1].render(scale=2).to_pil(), key)
    assert cover is not None and cover.valid and cover.transfer_id == transfer["id"]
    with stack.app.extensions["gateway"].db.session() as s:
        overdue = s.scalars(select(AuditEvent).filter_by(type="case.source.overdue")).all()
        assert [e.authorization_id for e in overdue] == [auth_id]
    time.sleep(1.5)
    assert len(list(stack.outbox.iterdir())) == reminders  # no reminder after the deadline
    r = stack.client.post(f"/cases/{opened['id']}/sources/fax/no-records",
                          json={"reason": "the records office answered: no records"},
                          headers=stack.operator)
    assert r.status_code == 200, r.get_json()
    view = wait_case(stack, opened["id"], lambda v: v["complete"], "the case to complete")
    assert source(view, "fax")["status"] == "no-records"
    assert source(view, "fax")["reason"] == "the records office answered: no records"
    assert stack.wait_state(transfer["id"], {"completed", "failed", "cancelled"})["state"] == "completed"
    # the people were told: started, overdue, complete, by a signed webhook and by email
    wait_until(lambda: len(hook.received) >= 3 and len(mail.messages) >= 3, 30, 0.3,
               "the notifications")
    told_of = {}
    for got in hook.received:
        signature = got["headers"]["X-Gateway-Signature"]
        assert verify_signature(b"hook-secret-for-the-test", signature, got["body"])
        t, v1 = (part.split("=", 1)[1] for part in signature.split(","))
        assert hmac.compare_digest(v1, hmac.new(b"hook-secret-for-the-test",
                                                f"{t}.".encode() + got["body"], "sha256").hexdigest())
        event = json.loads(got["body"])
        assert event["id"] == got["headers"]["X-Gateway-Event-Id"]
        told_of[event["type"]] = event
    assert set(told_of) == {"case.started", "source.overdue", "case.complete"}
    assert told_of["source.overdue"]["detail"]["source"] == "fax"
    assert told_of["source.overdue"]["case"] == opened["id"]
    assert {m["content"].decode().split("X-Gateway-Event-Id: ")[1].split()[0]
            for m in mail.messages} == {n.id for n in notifications(stack, "email")}
    patient = claims["patient"]
    said = b"".join(got["body"] for got in hook.received) + b"".join(m["content"] for m in mail.messages)
    for value in (patient["name"]["family"], *patient["name"].get("given", []), patient["birthDate"],
                  *(i["value"] for i in patient["identifiers"])):
        assert value.encode() not in said


def test_a_reminder_due_before_its_transfer_pulls_waits_for_it(sender_config, tmp_path, sign,
                                                                claims_for):
    """A busy worker can leave the transfer pending past the first reminder's time: that
    reminder is not counted as sent until there is a transfer to send its letter for."""
    outbox = configure(sender_config, tmp_path, records={"auto": "off"},
                       fax={"auto": "start", "expect_within_s": 60, "remind_every_s": 1})
    app = create_app(sender_config)  # no worker: nothing moves the transfer but this test
    svc = app.extensions["gateway"]
    try:
        svc.keys.ensure()
        ensure_cover_key(svc.settings.keys_dir)
        r = app.test_client().post("/authorizations", json={"jws": sign(claims_for())},
                                   headers=bearer(make_token(app, "operator")))
        assert r.status_code == 201, r.get_json()
        start = utcnow()
        with svc.db.session() as s:
            [opened] = s.scalars(select(Case)).all()
            engine_cases.advance(svc, s, opened, start)
            [transfer] = s.scalars(select(Transfer)).all()
            assert transfer.state == "pending"
            fax = next(src for src in opened.sources if src.name == "fax")
            engine_cases.advance(svc, s, opened, start + timedelta(seconds=2.5))
            assert fax.reminders == 0 and list(outbox.iterdir()) == []
            transfer.state = "pulling"
            engine_cases.advance(svc, s, opened, start + timedelta(seconds=3))
            assert fax.reminders == 1
            assert [p.name for p in outbox.iterdir()] == [
                f"request-R-{transfer.id[:10].upper()}-1.pdf"]
            engine_cases.advance(svc, s, opened, start + timedelta(seconds=3.5))
            assert fax.reminders == 1  # the next is a full interval after the one sent
            engine_cases.advance(svc, s, opened, start + timedelta(seconds=4.1))
            assert fax.reminders == 2 and len(list(outbox.iterdir())) == 2
    finally:
        svc.close()


def test_revocation_and_expiry_close_the_case(case_stack, claims_for, sign):
    stack = case_stack(records={"auto": "start"})
    auth_id = stack.authorize(claims_for(), sign)  # no folder yet: the pull waits
    [opened] = cases(stack)
    wait_case(stack, opened["id"], lambda v: v["transfers"], "the first transfer")
    r = stack.client.post(f"/authorizations/{auth_id}/revoke", json={"reason": "patient asked"},
                          headers=stack.operator)
    assert r.status_code == 200
    view = case(stack, opened["id"])
    assert view["state"] == "closed" and view["closedReason"] == "authorization revoked"
    assert all(t["state"] == "cancelled" for t in view["transfers"])
    # an authorization valid for a few seconds: its case closes by itself when it expires
    short = claims_for(valid_days=3 / 86400)
    stack.authorize(short, sign)
    other = next(c for c in cases(stack) if c["authorization"] == short["jti"])
    view = wait_case(stack, other["id"], lambda v: v["state"] == "closed", "expiry to close the case",
                     timeout=30)
    assert view["closedReason"] == "authorization expired"


def test_unrouted_parties_are_shown_with_the_reason(app, client, operator, sign, claims_for):
    known = claims_for()
    claims = example_claims(
        ISSUER, "auth-unrouted",
        disclosers=known["disclosers"] + [{"id": "org-elsewhere", "name": "Elsewhere Clinic",
                                           "endpoints": [{"type": "fax", "address": "+1 555 0199"}]}],
        recipient={**known["recipient"],
                   "endpoint": {"type": "gateway", "address": "https://unknown-center.invalid"}})
    r = client.post("/authorizations", json={"jws": sign(claims)}, headers=operator)
    assert r.status_code == 201, r.get_json()
    [view] = client.get("/cases", headers=operator).get_json()["cases"]
    full = client.get(f"/cases/{view['id']}", headers=operator).get_json()
    assert full["recipient"] is None and full["transfers"] == []
    assert {(u["party"], u["id"]) for u in full["unrouted"]} == {
        ("discloser", "org-elsewhere"), ("recipient", "org-test-center")}
    assert all(u["reason"] for u in full["unrouted"])
    assert {s["name"] for s in full["sources"]} == {"records", "fax"}


def test_the_intake_folder_imports_and_sets_aside(app, sign, claims_for, tmp_path):
    svc = app.extensions["gateway"]
    intake = tmp_path / "intake"
    intake.mkdir()
    svc.settings.intake_dir = intake
    claims = claims_for()
    (intake / "signed.jws").write_text(sign(claims))
    (intake / "garbage.jws").write_text("not a jws")
    (intake / ".partial.jws").write_text(sign(claims_for()))  # still being written
    os.symlink("/etc/passwd", intake / "link.jws")
    past = time.time() - 10
    for name in ("signed.jws", "garbage.jws"):
        os.utime(intake / name, (past, past))
    os.utime(intake / "link.jws", (past, past), follow_symlinks=False)
    counts = unattended.tick_now(svc)
    assert counts["imported"] == 1 and counts["rejected"] == 2
    assert sorted(p.name for p in (intake / "done").iterdir()) == ["signed.jws"]
    rejected = sorted(p.name for p in (intake / "rejected").iterdir())
    assert rejected == ["garbage.jws", "garbage.jws.reason", "link.jws", "link.jws.reason"]
    assert "regular file" in (intake / "rejected" / "link.jws.reason").read_text()
    assert (intake / ".partial.jws").exists()
    with svc.db.session() as s:
        [opened] = s.scalars(select(Case)).all()
        assert opened.authorization_id == claims["jti"]
        assert s.scalars(select(Transfer)).all() == []  # sources default to review


def test_a_late_fax_goes_in_a_follow_up(case_stack, claims_for, sign, fax_dir, tmp_path):
    from tests.test_fax_flow import _drop, _records_pdf
    from pypdf import PdfReader

    stack = case_stack(records={"auto": "off"}, fax={"auto": "start"})
    stack.start_receiver()
    stack.authorize(claims_for(), sign)
    [opened] = cases(stack)
    [first] = wait_case(stack, opened["id"], lambda v: v["transfers"], "the first transfer")["transfers"]
    cover = stack.client.get(f"/transfers/{first['id']}/cover-sheet", headers=stack.operator)
    _drop(fax_dir, "fax-0001.pdf", PdfReader(io.BytesIO(cover.data)), _records_pdf(tmp_path, 1))
    view = wait_case(stack, opened["id"], lambda v: v["complete"], "the first fax delivered", 180)
    assert source(view, "fax")["counts"]["documents"] == 1
    # the records office sends more, with the same cover sheet, after the transfer finished
    _drop(fax_dir, "fax-0002.pdf", PdfReader(io.BytesIO(cover.data)), _records_pdf(tmp_path, 2))
    view = wait_case(stack, opened["id"],
                     lambda v: any(t["followUp"] and t["receipt"] for t in v["transfers"]),
                     "the late fax in a follow-up", 180)
    [late] = [t for t in view["transfers"] if t["followUp"]]
    assert [i["kind"] for i in stack.view(late["id"])["itemList"]] == ["fax"]
    assert len(stack.inbox()) == 2 and source(view, "fax")["counts"]["documents"] == 2
    assert [e.detail["method"] for e in stack.events("fax.matched")] == ["qr", "qr"]
