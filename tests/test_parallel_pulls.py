"""A transfer's sources pulled side by side, one task per source, by two worker processes
on a Redis broker with PostgreSQL state: a source that waits (its folder not there yet)
holds up no other; a worker killed in the middle of a source's pull has that pull taken
over, and the other source is not pulled again. Ordering is read from the audit log and
the database, never from timings."""
from __future__ import annotations

import json
import uuid
from collections import Counter

import pytest
from sqlalchemy import select

from gateway import create_app
from gateway.storage.models import AuditEvent, Item, TransferSource

from tests.helpers import REDIS_URL, bearer, make_token, wait_until, write_pdfs
from tests.test_transfer_flow import TERMINAL, Stack, binaries

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture
def two_sources(sender_config, drop_dir, tmp_path, pg_url):
    """The sender with a second PDF folder source ("late", first in every transfer), a
    Redis broker of its own queue and a PostgreSQL database."""
    late = tmp_path / "late-drop"
    late.mkdir()
    records = sender_config["sources"]["records"]
    sender_config["sources"]["late"] = {**records, "options": {"path": str(late)}}
    sender_config.update(redis_url=REDIS_URL, database_url=pg_url,
                         queue=f"test-{uuid.uuid4().hex[:8]}")
    return late


@pytest.fixture
def pstack(two_sources, sender_config, receiver_config, processes, tmp_path):
    from gateway.engine.faxes import ensure_cover_key

    app = create_app(sender_config)
    app.extensions["gateway"].keys.ensure()
    ensure_cover_key(app.extensions["gateway"].settings.keys_dir)
    (tmp_path / "sender-jwks.json").write_text(json.dumps(app.extensions["gateway"].keys.jwks()))
    stack = Stack(app, app.test_client(), bearer(make_token(app, "operator")), processes,
                  sender_config, receiver_config, tmp_path,
                  worker_args=("worker", "--beat", "--pool", "solo"))
    stack.second = processes(sender_config, tmp_path, "worker-2", "worker", "--pool", "solo")
    stack.start_receiver()
    yield stack
    app.extensions["gateway"].close()


def _transfer(stack, auth_id: str) -> str:
    r = stack.client.post("/transfers", json={"authorization": auth_id, "sources": ["late", "records"],
                                              "recipient": "center"}, headers=stack.operator)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def _events(stack, tid: str) -> list[AuditEvent]:
    with stack.app.extensions["gateway"].db.session() as s:
        return s.scalars(select(AuditEvent).filter_by(transfer_id=tid).order_by(AuditEvent.seq)).all()


def _per_source(events, type_: str) -> Counter:
    return Counter(e.detail.get("source") for e in events if e.type == type_)


def _sources(stack, tid: str) -> dict[str, TransferSource]:
    with stack.app.extensions["gateway"].db.session() as s:
        return {r.name: r for r in s.scalars(select(TransferSource).filter_by(transfer_id=tid))}


def _items(stack, tid: str) -> list[Item]:
    with stack.app.extensions["gateway"].db.session() as s:
        return s.scalars(select(Item).filter_by(transfer_id=tid)).all()


def test_a_waiting_source_holds_up_no_other(pstack, two_sources, claims_for, sign, drop_dir):
    tid = _transfer(pstack, pstack.authorize(claims_for(), sign))
    quick = write_pdfs(drop_dir / tid, count=2)
    # "late" comes first and has no folder yet: "records" is pulled meanwhile
    wait_until(lambda: _sources(pstack, tid)["records"].state == "done", 90, 0.2, "records pulled")
    sources = _sources(pstack, tid)
    assert sources["late"].state not in ("done", "failed") and sources["records"].items == 2
    assert pstack.view(tid)["state"] == "pulling"
    stored = _items(pstack, tid)
    assert {i.source for i in stored} == {"records"} and len(stored) == 2
    # mapped as they were pulled, while the other source still waits
    assert {i.state for i in stored} == {"mapped"} and all(i.resources_blob for i in stored)
    wait_until(lambda: _per_source(_events(pstack, tid), "transfer.pull.retry")["late"], 60, 0.2,
               "the late source to wait")
    # the transfer says why it is held up: the waiting source's own reason
    reason = pstack.view(tid)["reason"]
    assert reason.startswith("source late: waiting (attempt ") and "no folder yet" in reason
    late = write_pdfs(two_sources / tid, count=1)
    view = pstack.wait_state(tid, TERMINAL, timeout=180)
    assert view["state"] == "completed", view["reason"]
    events = _events(pstack, tid)
    finished = [e for e in events if e.type == "transfer.pull.finished"]
    assert [e.detail["source"] for e in finished] == ["records", "late"]  # each once, quick first
    assert [e.type for e in events].count("transfer.state.mapping") == 1
    items = _items(pstack, tid)
    assert Counter(i.source for i in items) == {"records": 2, "late": 1}
    assert max(i.fetched_at for i in items if i.source == "records") < \
        min(i.fetched_at for i in items if i.source == "late")
    [received] = pstack.inbox()
    assert binaries(pstack.received_bundle(received["id"])) == set(quick) | set(late)


def test_a_worker_killed_mid_pull_has_that_source_taken_over(pstack, two_sources, claims_for, sign,
                                                              drop_dir):
    tid = _transfer(pstack, pstack.authorize(claims_for(), sign))
    write_pdfs(drop_dir / tid, count=2)
    many = write_pdfs(two_sources / tid, count=40)

    def mid_pull():
        src = _sources(pstack, tid)
        late = src["late"]
        return (src["records"].state == "done" and late.state == "pulling" and late.items >= 1
                and late.lease_owner and late)

    late = wait_until(mid_pull, 120, 0.05, "the late source in the middle of its pull")
    pid = int(late.lease_owner.split(":")[1])
    holder = pstack.worker if pstack.worker.proc.pid == pid else pstack.second
    assert holder.proc.pid == pid
    holder.kill()
    replacement = pstack.processes(pstack.sender_config, pstack.tmp, f"worker-{uuid.uuid4().hex[:6]}",
                                   "worker", "--beat", "--pool", "solo")
    if holder is pstack.worker:
        pstack.worker = replacement
    view = pstack.wait_state(tid, TERMINAL, timeout=240)
    assert view["state"] == "completed", view["reason"]
    events = _events(pstack, tid)
    started, done = _per_source(events, "transfer.pull.started"), _per_source(events, "transfer.pull.finished")
    assert started["records"] == 1 and done["records"] == 1  # the other source: pulled once
    assert started["late"] >= 2 and done["late"] == 1  # taken over, finished once
    items = _items(pstack, tid)
    assert Counter(i.source for i in items) == {"records": 2, "late": 40}
    assert len({i.sha256 for i in items if i.source == "late"}) == 40
    assert [e.type for e in events].count("transfer.state.mapping") == 1
    [received] = pstack.inbox()
    assert set(many) <= binaries(pstack.received_bundle(received["id"]))
