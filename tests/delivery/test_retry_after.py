"""A recipient's Retry-After (seconds or HTTP-date, on 429/503) delays that transfer's
next attempt, capped by `retry.max_retry_after_s`; deliveries to others go on meanwhile."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

from gateway.outbound.answers import retry_after
from gateway.errors import DeliveryFailed

from tests.delivery.delivery_fixtures import PLAIN_ORG
from tests.delivery.delivery_support import TERMINAL, claims_to
from tests.helpers import write_pdfs


def start(stack, auth_id: str, recipient: str) -> str:
    r = stack.client.post("/transfers", json={"authorization": auth_id, "sources": ["records"],
                                              "recipient": recipient}, headers=stack.operator)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def test_retry_after_values():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert retry_after("120", now) == 120.0
    assert retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == 90.0
    assert retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now) == 0.0
    for junk in (None, "", "soon", "-5", "1.5"):
        assert retry_after(junk, now) is None


def test_retry_after_is_capped_by_the_setting(sender_config):
    from gateway import create_app
    from gateway.engine.transfers import _retry_after

    app = create_app({**sender_config, "retry": {**sender_config["retry"], "max_retry_after_s": 30}})
    try:
        svc = app.extensions["gateway"]
        assert _retry_after(svc, DeliveryFailed("busy", retry_after=7200.0)) == 30.0
        assert _retry_after(svc, DeliveryFailed("busy", retry_after=5.0)) == 5.0
        assert _retry_after(svc, DeliveryFailed("busy")) is None
    finally:
        app.extensions["gateway"].close()


def test_retry_waits_for_retry_after_while_others_are_delivered(dstack, claims_for, sign, drop_dir,
                                                                plain_peer):
    """Backoff in these tests is at most 1 s: longer gaps come from the recipient's answer."""
    dstack.start_receiver()
    dstack.proxy.faults.extend(["retry_after:4", "retry_after_date:6"])
    busy = start(dstack, dstack.authorize(claims_for(), sign), "center")
    write_pdfs(drop_dir / busy, count=1)
    plain = start(dstack, dstack.authorize(claims_to(PLAIN_ORG, plain_peer, drop_dir), sign), "plain")
    # named for the transfer: sekmet is shared by the session, its documents must differ
    write_pdfs(drop_dir / plain, count=1,
               patient={"name": {"family": "Testperson", "given": [plain]}, "birthDate": "1970-01-01"})
    view = dstack.wait_state(busy, TERMINAL, 150)
    assert view["state"] == "completed", view["reason"]
    assert [f for _, f, _ in dstack.proxy.posts()] == ["retry_after:4", "retry_after_date:6", "pass"]
    first, second, third = dstack.proxy.times()
    assert second - first >= 4.0  # Retry-After: 4
    assert third - second >= 5.0  # an HTTP-date 6 s ahead, to the second
    asked = [e.detail["retry_after_s"] for e in dstack.events("transfer.step.retry")
             if e.transfer_id == busy]
    assert asked[0] == 4.0 and 5.0 <= asked[1] <= 6.0
    # the other recipient did not wait for this one: delivered within the 10 s this one waited
    other = dstack.wait_state(plain, TERMINAL, 60)
    assert other["state"] == "completed", other["reason"]
    done = datetime.fromisoformat(other["completedAt"]).timestamp()
    assert done < third
