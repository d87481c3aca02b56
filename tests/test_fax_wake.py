"""A fax that arrives while its source's pull is running must not wait for the pull's next
retry: the pull, finding nothing yet, tries again at once (the wake is not lost)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from connectors.base import SourceUnavailable
from gateway.engine import faxes, pulls
from gateway.engine.transfers import run_step
from gateway.storage.models import TransferSource, utcnow


@pytest.fixture
def sender_config(sender_config):
    return {**sender_config, "retry": {"base_delay_s": 300, "max_delay_s": 300, "max_attempts": 10}}


def _pulling(app, client, operator, claims_for, sign) -> str:
    r = client.post("/authorizations", json={"jws": sign(claims_for())}, headers=operator)
    assert r.status_code == 201, r.get_json()
    r = client.post("/transfers", json={"authorization": r.get_json()["id"], "sources": ["fax"],
                                        "recipient": "center"}, headers=operator)
    assert r.status_code == 202, r.get_json()
    tid = r.get_json()["id"]
    assert run_step(app.extensions["gateway"], tid, "pending") == "pulling"
    return tid


def _next_attempt(svc, tid: str):
    with svc.db.session() as s:
        row = s.scalars(select(TransferSource).filter_by(transfer_id=tid, name="fax")).one()
        return row.next_attempt_at, row.attempts


@pytest.mark.parametrize("woken", [False, True], ids=["quiet", "woken-meanwhile"])
def test_a_wake_during_the_pull_is_not_lost(app, client, operator, claims_for, sign, monkeypatch, woken):
    svc = app.extensions["gateway"]
    tid = _pulling(app, client, operator, claims_for, sign)
    connector = type(faxes._connector(svc, "fax", svc.settings.sources["fax"]))

    def fetch(self, query):  # looks, finds nothing; a fax is matched just after it looked
        if woken:
            faxes.wake(svc, tid, "fax")
        raise SourceUnavailable("fax-drop 'fax': no fax has arrived yet for this transfer")
        yield  # a generator, as the connector's fetch is

    monkeypatch.setattr(connector, "fetch", fetch)
    monkeypatch.setattr(pulls, "enqueue", lambda *a, **kw: None)  # this test runs pulls itself
    before = utcnow()
    assert pulls.run_pull(svc, tid, "fax") == "waiting"
    at, attempts = _next_attempt(svc, tid)
    at = at if at.tzinfo else at.replace(tzinfo=before.tzinfo)
    assert attempts == 1
    if woken:  # due at once: the next pull finds the fax
        assert at - before < timedelta(seconds=5)
    else:  # the backoff of a source that is simply not ready
        assert at - before >= timedelta(seconds=140)  # 300 s with its jitter (x 0.5-1)
