"""A revocation committed while a worker writes down a step's outcome: the transfer ends
cancelled with the revocation's reason, whichever way the step went. The revocation is
made to land in the gap between the worker reading the transfer and writing it back (the
worker's flush starts it, in another thread) on SQLite and on PostgreSQL."""
from __future__ import annotations

import functools

import pytest
from sqlalchemy import select

from gateway.engine import operations, steps, transfers
from gateway.engine.transfers import run_step
from gateway.errors import ProviderUnavailable
from gateway.storage.models import AuditEvent, Transfer
from tests.helpers import racing_the_write


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def sender_config(request, sender_config):
    if request.param == "postgresql":
        return {**sender_config, "database_url": request.getfixturevalue("pg_url")}
    return sender_config


@pytest.mark.parametrize("outcome", ["step-done", "step-retried"])
def test_a_revocation_while_a_step_ends_wins(app, client, operator, claims_for, sign,
                                            monkeypatch, outcome):
    svc = app.extensions["gateway"]
    r = client.post("/authorizations", json={"jws": sign(claims_for())}, headers=operator)
    auth_id = r.get_json()["id"]
    r = client.post("/transfers", json={"authorization": auth_id, "sources": ["records"],
                                        "recipient": "center"}, headers=operator)
    assert r.status_code == 202, r.get_json()
    tid = r.get_json()["id"]

    def pending(_svc, _tid, _owner):
        if outcome == "step-retried":
            raise ProviderUnavailable("source down for a moment")
        return "pulling"

    monkeypatch.setitem(steps.HANDLERS, "pending", pending)
    monkeypatch.setattr(transfers, "enqueue", lambda *a, **kw: None)  # no worker here
    revoke = functools.partial(operations.revoke_authorization, svc, auth_id, "patient withdrew", "test")
    with racing_the_write(Transfer, tid, revoke) as started:
        run_step(svc, tid, "pending")
    assert len(started) == 1  # the revocation did run inside the gap

    with svc.db.session() as s:
        t = s.get(Transfer, tid)
        assert (t.state, t.reason) == ("cancelled", "authorization revoked: patient withdrew")
        assert t.lease_owner is None
        events = [e.type for e in s.scalars(select(AuditEvent).filter_by(transfer_id=tid)
                                            .order_by(AuditEvent.seq))]
    # the worker's outcome went down first, the cancellation after it, and nothing since
    assert events[-1] == "transfer.cancelled", events
    step_event = "transfer.state.pulling" if outcome == "step-done" else "transfer.step.retry"
    assert events.count(step_event) == 1 and events.index(step_event) < len(events) - 1
