"""Failed sign-ins are limited per account name and per client address, on SQLite and on
PostgreSQL, counted in the database so several app processes count together: 429 with
Retry-After, the right password refused while locked, lockouts that grow and are audited,
and a successful sign-in that clears its name's count."""
from __future__ import annotations

import re
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from gateway import create_app
from gateway.storage.models import AuditEvent, SignInFailures, utcnow
from gateway.trust.tokens import create_token
from gateway.trust.users import create_user

PASSWORD = "correct horse battery"
LIMITS = {"max_failures_per_name": 3, "max_failures_per_address": 5, "lockout_s": 60,
          "max_lockout_s": 240, "window_s": 900, "forget_after_s": 3600}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def limited_config(request, sender_config, tmp_path) -> dict:
    url = (f"sqlite:///{tmp_path}/gateway.db" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    return {**sender_config, "database_url": url, "web": {"sign_in": LIMITS}}


@pytest.fixture
def limited(limited_config):
    app = create_app(limited_config)
    with app.extensions["gateway"].db.session() as s:
        create_user(s, "casey.ops", PASSWORD, "operator", actor="test")
    yield app
    app.extensions["gateway"].close()


def attempt(app, address: str = "192.0.2.10", **form):
    """One sign-in from `address`, as a browser does it: the form, then its POST."""
    client = app.test_client()
    env = {"REMOTE_ADDR": address}
    page = client.get("/ui/sign-in", environ_base=env).get_data(as_text=True)
    nonce = re.search(r'name="form_nonce" value="([^"]+)"', page)[1]
    return client.post("/ui/sign-in", data={"form_nonce": nonce, **form}, environ_base=env)


def wrong(app, name: str = "casey.ops", address: str = "192.0.2.10"):
    return attempt(app, address, username=name, password="not the password")


def right(app, address: str = "192.0.2.10"):
    return attempt(app, address, username="casey.ops", password=PASSWORD)


def locks(app) -> list[AuditEvent]:
    with app.extensions["gateway"].db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.type == "web.sign_in.locked")
                              .order_by(AuditEvent.seq)))


def time_passes(app, seconds: float) -> None:
    """Every count and lockout as it stands `seconds` later."""
    d = timedelta(seconds=seconds)
    with app.extensions["gateway"].db.session() as s:
        for row in s.scalars(select(SignInFailures)):
            row.window_started_at -= d
            row.last_failure_at -= d
            if row.locked_until is not None:
                row.locked_until -= d


def message(response) -> str:
    return re.search(r'id="sign-in-error">([^<]+)<', response.get_data(as_text=True))[1]


def test_a_name_is_locked_even_for_the_right_password_until_the_lockout_ends(limited):
    assert [wrong(limited).status_code for _ in range(2)] == [401, 401]
    third = wrong(limited)
    assert third.status_code == 429 and third.headers["Retry-After"] == "60"
    text = message(third)
    assert text.startswith("Too many failed sign-ins. Sign-in is paused until ")
    assert re.search(r"until \d\d:\d\d:\d\d UTC \(about 1 minute\)", text)
    locked = right(limited)  # the right password changes nothing while locked
    assert locked.status_code == 429 and 1 <= int(locked.headers["Retry-After"]) <= 60
    assert "rgw_session" not in str(locked.headers.getlist("Set-Cookie"))
    [event] = locks(limited)
    assert (event.actor, event.outcome) == ("casey.ops", "failure")
    assert event.detail["scope"] == "name" and event.detail["lockout_s"] == 60
    assert event.detail["failures"] == 3 and "address" not in event.detail
    time_passes(limited, 61)
    assert right(limited).status_code == 303


def test_a_successful_sign_in_clears_its_names_count(limited):
    assert [wrong(limited).status_code for _ in range(2)] == [401, 401]
    assert right(limited).status_code == 303
    with limited.extensions["gateway"].db.session() as s:
        assert s.scalars(select(SignInFailures.scope)).all() == ["address"]
    # two more: without the reset the first of them would have been the third failure
    assert [wrong(limited).status_code for _ in range(2)] == [401, 401]
    assert locks(limited) == []


def test_an_unknown_name_is_answered_as_a_known_one(limited):
    known = [wrong(limited, "casey.ops", "192.0.2.1") for _ in range(3)]
    unknown = [wrong(limited, "nobody.here", "192.0.2.2") for _ in range(3)]
    assert [r.status_code for r in known] == [r.status_code for r in unknown] == [401, 401, 429]
    assert message(known[0]) == message(unknown[0])
    strip = lambda r: re.sub(r"\d\d:\d\d:\d\d", "T", message(r))  # noqa: E731
    assert strip(known[2]) == strip(unknown[2])
    # a name typed in other capitals is the same name
    assert wrong(limited, "NOBODY.here", "192.0.2.3").status_code == 429


def test_one_address_cannot_spray_many_names(limited):
    statuses = [wrong(limited, f"guess{i}", "198.51.100.7").status_code for i in range(5)]
    assert statuses == [401, 401, 401, 401, 429]  # no name had more than one failure
    assert right(limited, "198.51.100.7").status_code == 429
    assert right(limited, "198.51.100.8").status_code == 303  # another address is not locked
    [event] = locks(limited)
    assert event.detail["scope"] == "address" and event.detail["address"] == "198.51.100.7"
    assert event.actor == "guess4"


def test_many_addresses_cannot_wear_down_one_name(limited):
    statuses = [wrong(limited, "casey.ops", f"203.0.113.{i}").status_code for i in range(3)]
    assert statuses == [401, 401, 429]
    assert right(limited, "203.0.113.99").status_code == 429


def test_wrong_tokens_count_against_the_address(limited):
    statuses = [attempt(limited, "192.0.2.77", token=f"rgw_wrong{i}").status_code
                for i in range(5)]
    assert statuses == [401, 401, 401, 401, 429]
    with limited.extensions["gateway"].db.session() as s:
        _, token = create_token(s, "desk", "operator", actor="test")
    assert attempt(limited, "192.0.2.77", token=token).status_code == 429
    assert attempt(limited, "192.0.2.78", token=token).status_code == 303


def test_each_lockout_in_a_row_is_longer_up_to_the_longest_then_is_forgotten(limited):
    for _ in range(4):
        statuses = [wrong(limited, "casey.ops", f"192.0.2.{n}").status_code for n in range(3)]
        assert statuses == [401, 401, 429]
        time_passes(limited, 241)  # past any lockout, not yet forgotten
    assert [e.detail["lockout_s"] for e in locks(limited)] == [60, 120, 240, 240]
    time_passes(limited, 3600)  # quiet for forget_after_s: the next lockout is the first again
    [wrong(limited, "casey.ops", f"192.0.2.{n}") for n in range(3)]
    assert locks(limited)[-1].detail["lockout_s"] == 60
    with limited.extensions["gateway"].db.session() as s:  # the old address counts were dropped
        assert s.scalar(select(SignInFailures).where(
            SignInFailures.last_failure_at < utcnow() - timedelta(seconds=3600))) is None


def test_behind_a_proxy_the_address_it_saw_is_the_clients(limited_config):
    limited_config["web"] = {"sign_in": {**LIMITS, "trusted_proxies": 1}}
    app = create_app(limited_config)
    try:
        def via_proxy(claimed: str, seen: str):
            client = app.test_client()
            page = client.get("/ui/sign-in").get_data(as_text=True)
            nonce = re.search(r'name="form_nonce" value="([^"]+)"', page)[1]
            return client.post("/ui/sign-in", headers={"X-Forwarded-For": f"{claimed}, {seen}"},
                               data={"form_nonce": nonce, "username": claimed,
                                     "password": "not the password"}).status_code

        # a client that makes up a new address each time is still the one the proxy saw
        assert [via_proxy(f"10.9.9.{i}", "198.51.100.20") for i in range(5)][-1] == 429
        assert via_proxy("10.9.9.99", "198.51.100.21") == 401
        [event] = locks(app)
        assert event.detail["address"] == "198.51.100.20"
    finally:
        app.extensions["gateway"].close()


def test_two_app_processes_count_together(limited, limited_config):
    """Each gunicorn worker (or host) is its own app over the same database."""
    other = create_app(limited_config)
    try:
        assert wrong(limited).status_code == 401
        assert wrong(other).status_code == 401
        assert wrong(limited).status_code == 429
        assert right(other).status_code == 429
        # at once from many threads: no failure is lost or double counted, no error
        statuses, lock = [], threading.Lock()

        def hammer(app, n):
            status = wrong(app, "hammered", f"192.0.2.{100 + n}").status_code
            with lock:
                statuses.append(status)

        threads = [threading.Thread(target=hammer, args=((limited, other)[n % 2], n))
                   for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(statuses) == 8 and set(statuses) <= {401, 429}
        with limited.extensions["gateway"].db.session() as s:
            refused = s.scalars(select(AuditEvent).where(
                AuditEvent.type == "web.sign_in.refused", AuditEvent.actor == "hammered")).all()
            left = s.get(SignInFailures, ("name", _name_key("hammered"))).failures
        counted = sum(e.detail["failures"] for e in locks(limited) if e.actor == "hammered")
        # every failure checked is counted once: in the lockouts it started, or still open
        assert len(refused) >= 3 and counted + left == len(refused)
    finally:
        other.extensions["gateway"].close()


def _name_key(name: str) -> str:
    from gateway.web.throttle import keys

    return dict(keys(name, "x"))["name"]
