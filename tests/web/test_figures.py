"""The charts' figures read from a real store: transfers per day by outcome, delivery
latency in the /metrics buckets, and each source's median time to records."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import update

from gateway import audit
from gateway.storage.models import Transfer
from gateway.web import figures


def test_figures_from_the_store(app, client, operator, claims_for, sign):
    r = client.post("/authorizations", json={"jws": sign(claims_for())}, headers=operator)
    assert r.status_code == 201, r.get_json()
    auth = r.get_json()["id"]
    ids = []
    for _ in range(4):
        r = client.post("/transfers", json={"authorization": auth, "sources": ["records"],
                                            "recipient": "center"}, headers=operator)
        assert r.status_code == 202, r.get_json()
        ids.append(r.get_json()["id"])
    now = datetime.now(timezone.utc)
    today = now.date()
    svc = app.extensions["gateway"]
    with svc.db.session() as s:
        # two completed yesterday (40 s and 2 h to the receipt), one failed today, one running
        for tid, state, created, took in ((ids[0], "completed", now - timedelta(days=1), 40),
                                          (ids[1], "completed", now - timedelta(days=1), 7200),
                                          (ids[2], "failed", now, None), (ids[3], "pulling", now, None)):
            values = {"state": state, "created_at": created}
            if took is not None:
                values.update(completed_at=created + timedelta(seconds=took), bundle_id=f"b-{tid}")
            s.execute(update(Transfer).where(Transfer.id == tid).values(**values))
        # the records source answered 90 s after the start of the running transfer
        s.execute(update(Transfer).where(Transfer.id == ids[3])
                  .values(created_at=now - timedelta(seconds=90)))
        audit.record(s, "transfer.pull.finished", actor="worker", transfer_id=ids[3],
                     source="records", items=2)

    with svc.db.session() as s:
        per_day = figures.transfers_per_day(s, days=3, today=today)
        latency = figures.delivery_latency(s)
        sources = figures.time_to_records(s)
    assert per_day.table[0] == ("day", "completed", "failed", "in progress", "total")
    assert per_day.table[1:] == (
        ((today - timedelta(days=2)).isoformat(), "0", "0", "0", "0"),
        ((today - timedelta(days=1)).isoformat(), "2", "0", "0", "2"),
        (today.isoformat(), "0", "1", "1", "2"))
    assert latency.table[1:] == (("≤ 1 min", "1"), ("≤ 5 min", "0"), ("≤ 15 min", "0"),
                                 ("≤ 1 h", "0"), ("≤ 4 h", "1"))
    [(name, median, note)] = sources.table[1:]
    assert name == "records" and note == "1 pull"
    assert median in ("90 s", "2 min")  # 90 s and the moment the event was logged
