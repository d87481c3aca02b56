"""A fax that arrives while its source's pull is running must not wait for the pull's next
retry: the pull, finding nothing yet, tries again at once (the wake is not lost)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, select

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


def _nothing_yet(monkeypatch, svc, also=None):
    """The fax connector's fetch finds nothing (after calling `also`, if given)."""
    connector = type(faxes._connector(svc, "fax", svc.settings.sources["fax"]))

    def fetch(self, query):
        if also:
            also()
        raise SourceUnavailable("fax-drop 'fax': no fax has arrived yet for this transfer")
        yield  # a generator, as the connector's fetch is

    monkeypatch.setattr(connector, "fetch", fetch)


def test_a_wake_between_the_pulls_read_and_its_write_is_not_lost(app, client, operator, claims_for,
                                                                  sign, monkeypatch):
    """The pull has read its source's row (not woken) when the wake commits; the backoff
    it then writes must not overwrite the wake."""
    svc = app.extensions["gateway"]
    tid = _pulling(app, client, operator, claims_for, sign)
    _nothing_yet(monkeypatch, svc)
    sent = []
    monkeypatch.setattr(pulls, "enqueue", lambda *a, **kw: sent.append((a, kw.get("countdown"))))
    real_failed, inside = pulls._failed, []

    def failed(*args, **kwargs):  # the pull, finding nothing, is about to schedule its retry
        inside.append(True)
        return real_failed(*args, **kwargs)

    def after_read(conn, cursor, statement, *rest):  # it has read its row: the fax comes now
        if inside == [True] and statement.lstrip().upper().startswith("SELECT") \
                and "transfer_sources" in statement:
            inside.append("woken")
            faxes.wake(svc, tid, "fax")

    monkeypatch.setattr(pulls, "_failed", failed)
    event.listen(svc.db.engine, "after_cursor_execute", after_read)
    try:
        before = utcnow()
        assert pulls.run_pull(svc, tid, "fax") == "waiting"
    finally:
        event.remove(svc.db.engine, "after_cursor_execute", after_read)
    assert inside == [True, "woken"]
    at, attempts = _next_attempt(svc, tid)
    at = at if at.tzinfo else at.replace(tzinfo=before.tzinfo)
    assert attempts == 1 and at - before < timedelta(seconds=5)  # due at once, not in 150-300 s
    assert sent[-1] == ((tid, "fax"), 0.0)  # the pull's own retry goes at once too


def test_a_wake_after_the_pull_waits_runs_the_pull_while_the_step_is_held(app, client, operator,
                                                                          claims_for, sign, monkeypatch):
    """The pull found nothing and waits 150-300 s; then a fax is matched while another run of
    the transfer's `pulling` step holds the transfer. The wake must run the source's pull
    now: a `pulling` step sent then would find the transfer held and be dropped."""
    from gateway.engine import transfers
    from gateway.storage.models import Transfer

    svc = app.extensions["gateway"]
    tid = _pulling(app, client, operator, claims_for, sign)
    _nothing_yet(monkeypatch, svc)
    sent = []
    monkeypatch.setattr(pulls, "enqueue", lambda *a, **kw: sent.append(("pull", a)))
    monkeypatch.setattr(transfers, "enqueue", lambda *a, **kw: sent.append(("step", a)))
    assert pulls.run_pull(svc, tid, "fax") == "waiting"
    assert _next_attempt(svc, tid)[0] is not None
    with svc.db.session() as s:  # another run of the pulling step, still going
        t = s.get(Transfer, tid)
        t.lease_owner, t.lease_until = "another-worker:1:x", utcnow() + timedelta(minutes=5)
    sent.clear()
    faxes.wake(svc, tid, "fax")
    ran = []
    for kind, args in sent:  # deliver what the wake sent, as a worker would
        ran.append(pulls.run_pull(svc, *args) if kind == "pull" else run_step(svc, *args))
    assert ("pull", (tid, "fax")) in sent
    assert "waiting" in ran  # the pull ran (and, the fax faked absent here, waits again)
    assert _next_attempt(svc, tid)[1] == 2
