"""Whole transfers with real processes: a Celery worker process on the embedded broker
(or Redis), and a second gateway in receive mode. Faults: recipient down, worker killed,
authorization revoked in flight, bad records in the drop folder."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid

import pytest
import requests
from sqlalchemy import select

from gateway.storage.models import AuditEvent, Item

from tests.helpers import GENERATED, record_binaries, wait_until, write_pdfs

TERMINAL = {"completed", "failed", "cancelled"}


def cli(config_file, *args) -> str:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
           "GATEWAY_CONFIG_FILE": str(config_file)}
    done = subprocess.run([sys.executable, "-m", "gateway", *args], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class Stack:
    """The sender (in-process API + worker process) and the receiver process."""

    def __init__(self, app, client, operator, processes, sender_config, receiver_config, tmp_path,
                 worker_args=("worker", "--beat")):
        self.app, self.client, self.operator = app, client, operator
        self.processes, self.tmp = processes, tmp_path
        self.sender_config, self.receiver_config = sender_config, receiver_config
        self.worker_args = worker_args
        self.receiver = None
        self.worker = self.start_worker()
        # tokens the receiver issues: one for the sending gateway, one for the center's staff
        rc = tmp_path / "receiver-cli.json"
        rc.write_text(json.dumps(receiver_config))
        cli(rc, "init")
        peer_token = cli(rc, "token", "create", "--name", "test-hospital", "--role", "peer")
        (tmp_path / "sender" / "peer-token").write_text(peer_token)
        self.inbox_headers = {"Authorization": "Bearer " + cli(rc, "token", "create", "--name",
                                                                "staff", "--role", "recipient")}

    def start_worker(self):
        return self.processes(self.sender_config, self.tmp, f"worker-{uuid.uuid4().hex[:6]}",
                              *self.worker_args)

    def start_receiver(self):
        self.receiver = self.processes(self.receiver_config, self.tmp, "receiver", "serve",
                                       "--receive").wait_http()

    def authorize(self, claims, sign) -> str:
        r = self.client.post("/authorizations", json={"jws": sign(claims)}, headers=self.operator)
        assert r.status_code == 201, r.get_json()
        return r.get_json()["id"]

    def transfer(self, auth_id: str) -> str:
        r = self.client.post("/transfers", json={"authorization": auth_id, "sources": ["records"],
                                                 "recipient": "center"}, headers=self.operator)
        assert r.status_code == 202, r.get_json()
        return r.get_json()["id"]

    def view(self, transfer_id: str) -> dict:
        return self.client.get(f"/transfers/{transfer_id}", headers=self.operator).get_json()

    def wait_state(self, transfer_id: str, states, timeout: float = 120) -> dict:
        states = {states} if isinstance(states, str) else set(states)
        return wait_until(lambda: (v := self.view(transfer_id))["state"] in states and v,
                          timeout, 0.2, f"transfer to reach {states}")

    def inbox(self) -> list[dict]:
        url = self.receiver_config["base_url"]
        return requests.get(f"{url}/inbox", headers=self.inbox_headers, timeout=10).json()["received"]

    def received_bundle(self, received_id: str) -> dict:
        url = self.receiver_config["base_url"]
        return requests.get(f"{url}/inbox/{received_id}/bundle", headers=self.inbox_headers,
                            timeout=10).json()

    def events(self, type_: str) -> list[AuditEvent]:
        with self.app.extensions["gateway"].db.session() as s:
            return s.scalars(select(AuditEvent).filter_by(type=type_).order_by(AuditEvent.seq)).all()


@pytest.fixture
def stack(app, client, operator, processes, sender_config, receiver_config, tmp_path):
    return Stack(app, client, operator, processes, sender_config, receiver_config, tmp_path)


def binaries(bundle: dict) -> set[str]:
    """sha256 of the records' Binaries (not the summary PDF or manifest the sender adds)."""
    return {hashlib.sha256(base64.b64decode(b["data"])).hexdigest() for b in record_binaries(bundle)}


def test_pdfs_reach_the_receiver_with_a_verified_receipt(stack, claims_for, sign, drop_dir):
    stack.start_receiver()
    tid = stack.transfer(stack.authorize(claims_for(), sign))
    sent = write_pdfs(drop_dir / tid, count=3)
    view = stack.wait_state(tid, TERMINAL)
    assert view["state"] == "completed", view["reason"]
    assert view["percent"] == 100
    assert view["sources"][0]["items"] == 3 and view["sources"][0]["state"] == "done"
    assert view["items"] == {"mapped": 3}
    receipt = view["receipt"]
    assert receipt["sha256"] == view["bundle"]["sha256"] and receipt["status"] == "accepted"
    assert receipt["iss"] == "org-test-center"
    [received] = stack.inbox()
    assert received["sha256"] == view["bundle"]["sha256"]
    bundle = stack.received_bundle(received["id"])
    assert bundle["type"] == "transaction"
    assert binaries(bundle) == set(sent)
    kinds = sorted(e["resource"]["resourceType"] for e in bundle["entry"])
    # + the patient summary (Composition, and as a PDF) and the completeness manifest
    assert kinds == sorted(["Patient", "Consent", "List", "Provenance", "Composition"]
                           + ["DocumentReference"] * 5 + ["Binary"] * 5)
    docs = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference"
            and e["resource"]["type"]["coding"][0]["code"] not in GENERATED]
    assert {d["content"][0]["attachment"]["size"] for d in docs} == {
        len(p.read_bytes()) for p in (drop_dir / tid).iterdir()}
    # the log tells the whole story, in order
    types = [e.type for e in stack.events("transfer.pull.finished")] + \
            [e.type for e in stack.events("transfer.receipt.verified")]
    assert types == ["transfer.pull.finished", "transfer.receipt.verified"]
    assert stack.events("transfer.pull.finished")[0].detail["items"] == 3
    # each step ran once: the worker goes straight on to the next step, whose message
    # (sent all the same, should the worker die) then finds it taken or done
    for kind in ("transfer.state.pulling", "transfer.state.mapping", "transfer.state.assembling",
                 "transfer.state.delivering", "transfer.bundle.assembled",
                 "transfer.delivery.attempt", "transfer.completed"):
        assert len(stack.events(kind)) == 1, kind
    assert stack.events("transfer.step.retry") == []
    [loaded] = stack.events("admin.configuration.loaded")  # the worker logged its settings
    assert loaded.actor == "worker" and len(loaded.detail["settings_sha256"]) == 64
    # the worker's beat signs checkpoints of the log with the gateway's key
    from gateway.audit.checkpoints import latest_checkpoint
    svc = stack.app.extensions["gateway"]

    def checkpoint():
        with svc.db.session() as s:
            return latest_checkpoint(s)

    cp = wait_until(checkpoint, 30, 0.2, "a periodic audit checkpoint")
    assert cp["key_id"] == svc.keys.current("checkpoint").kid and cp["tree_size"] > 0


def test_recipient_down_and_worker_killed_still_delivers_once(stack, claims_for, sign, drop_dir):
    tid = stack.transfer(stack.authorize(claims_for(), sign))
    write_pdfs(drop_dir / tid, count=2)
    # the recipient is down: delivery is retried with backoff
    wait_until(lambda: len(stack.events("transfer.step.retry")) >= 2 and
               stack.view(tid)["state"] == "delivering", 60, 0.2, "delivery retries")
    stack.worker.kill()  # SIGKILL: whatever it held in memory is gone
    stack.start_receiver()
    stack.worker = stack.start_worker()  # the reconciler re-enqueues the lost step
    view = stack.wait_state(tid, TERMINAL, timeout=180)
    assert view["state"] == "completed", view["reason"]
    assert len(stack.inbox()) == 1
    assert len(stack.events("transfer.delivery.sent")) == 1


def test_revocation_stops_a_transfer_in_flight(stack, claims_for, sign, drop_dir):
    auth_id = stack.authorize(claims_for(), sign)
    tid = stack.transfer(auth_id)
    write_pdfs(drop_dir / tid, count=1)
    stack.wait_state(tid, "delivering")  # recipient down: stuck retrying delivery
    r = stack.client.post(f"/authorizations/{auth_id}/revoke", json={"reason": "patient withdrew"},
                          headers=stack.operator)
    assert r.get_json()["transfersCancelled"] == 1
    view = stack.view(tid)
    assert view["state"] == "cancelled" and "patient withdrew" in view["reason"]
    stack.start_receiver()
    # give the worker time to try again (a few retry and reconcile intervals): nothing goes out
    time.sleep(3)
    assert stack.inbox() == []
    assert stack.events("transfer.delivery.sent") == []
    assert stack.view(tid)["state"] == "cancelled"


def test_bad_records_are_reported_then_skipped_on_request(stack, claims_for, sign, drop_dir, tmp_path):
    stack.start_receiver()
    tid = stack.transfer(stack.authorize(claims_for(), sign))
    staging = tmp_path / "bad-staging"
    good = write_pdfs(staging, count=1)
    (staging / "truncated.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog")
    (staging / "empty.pdf").write_bytes(b"")
    (staging / "notes.txt").write_text("not a pdf")
    (staging / "bad\nname.pdf").write_bytes(b"%PDF-1.4")
    (staging / "link.pdf").symlink_to("/etc/passwd")
    staging.rename(drop_dir / tid)
    view = stack.wait_state(tid, TERMINAL)
    assert view["state"] == "failed"
    assert "5 record(s) cannot be delivered" in view["reason"]
    errors = {i["origin"]: i["error"] for i in view["itemList"] if i["state"] == "failed"}
    assert errors["truncated.pdf"].startswith("PDF cannot be read")
    assert "empty" in errors["empty.pdf"]
    assert "not a .pdf" in errors["notes.txt"]
    assert "links" in errors["link.pdf"]
    assert "plain printable name" in errors["bad\\nname.pdf"]
    r = stack.client.post(f"/transfers/{tid}/retry", json={"skip_failed_items": True},
                          headers=stack.operator)
    assert r.get_json()["state"] == "mapping"
    view = stack.wait_state(tid, TERMINAL)
    assert view["state"] == "completed", view["reason"]
    assert view["items"] == {"mapped": 1, "skipped": 5}
    [received] = stack.inbox()
    bundle = stack.received_bundle(received["id"])
    assert binaries(bundle) == set(good)
    # the completeness report: in the API, the manifest the recipient got, and the CLI
    report = view["completeness"]["records"]
    assert (report["found"], report["delivered"], report["pending"]) == (6, 1, 0)
    assert sum(r["count"] for r in report["refused"]) == 5 and report["complete"] is False
    reasons = {r["reason"] for r in report["refused"]}
    assert reasons == {i["error"] for i in view["itemList"] if i["state"] == "skipped"}
    [manifest] = [json.loads(base64.b64decode(e["resource"]["data"])) for e in bundle["entry"]
                  if e["resource"]["resourceType"] == "Binary"
                  and e["resource"].get("contentType") == "application/json"]
    assert manifest["sources"]["records"]["completeness"]["refused"] == report["refused"]
    assert "truncated.pdf" not in json.dumps(manifest)  # refused records are counted, not named
    config = tmp_path / "sender-cli.json"
    config.write_text(json.dumps(stack.sender_config))
    lines = cli(config, "transfer", "report", tid).splitlines()
    assert lines[0] == f"transfer {tid}  completed"
    assert lines[2].split() == ["records", "done", "6", "1", "0", "5"]
    assert lines[-1] == "complete: no (see above)"
    assert json.loads(cli(config, "transfer", "report", tid, "--json")) == view["completeness"]


def test_records_outside_the_authorization_are_not_delivered(stack, claims_for, sign, drop_dir):
    stack.start_receiver()
    tid = stack.transfer(stack.authorize(claims_for(data_classes=("labs",)), sign))
    write_pdfs(drop_dir / tid, count=2)  # the source files them as notes
    view = stack.wait_state(tid, TERMINAL)
    assert view["state"] == "completed", view["reason"]
    assert view["items"] == {"excluded": 2}
    [received] = stack.inbox()
    bundle = stack.received_bundle(received["id"])
    assert binaries(bundle) == set()
    assert not [e for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference"
                and e["resource"]["type"]["coding"][0]["code"] not in GENERATED]


@pytest.mark.redis
@pytest.mark.postgres
def test_redis_broker_postgres_state_and_a_killed_worker(app, client, operator, processes,
                                                         sender_config, receiver_config, tmp_path,
                                                         claims_for, sign, drop_dir, pg_url):
    from gateway import create_app
    from tests.helpers import REDIS_URL

    sender_config.update(redis_url=REDIS_URL, database_url=pg_url,
                         queue=f"test-{uuid.uuid4().hex[:8]}")
    app = create_app(sender_config)
    client = app.test_client()
    from tests.helpers import bearer, make_token
    operator = bearer(make_token(app, "operator"))
    stack = Stack(app, client, operator, processes, sender_config, receiver_config, tmp_path,
                  worker_args=("worker", "--beat", "--pool", "prefork", "--concurrency", "2"))
    tid = stack.transfer(stack.authorize(claims_for(), sign))
    sent = write_pdfs(drop_dir / tid, count=2)
    wait_until(lambda: stack.events("transfer.step.retry"), 60, 0.2, "a delivery retry")
    stack.worker.kill()
    stack.start_receiver()
    stack.worker = stack.start_worker()
    view = stack.wait_state(tid, TERMINAL, timeout=180)
    assert view["state"] == "completed", view["reason"]
    [received] = stack.inbox()
    assert binaries(stack.received_bundle(received["id"])) == set(sent)
    with app.extensions["gateway"].db.session() as s:
        assert {i.state for i in s.scalars(select(Item))} == {"mapped"}
    app.extensions["gateway"].close()
