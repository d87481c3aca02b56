"""Notifications (issue 14): the outbox, signed webhooks to a real HTTP server on
loopback, email to a real SMTP server (aiosmtpd) with STARTTLS and AUTH, retries,
dead-lettering, replay from the API and the command line, and the minimum-necessary rule
(ids, states and links only)."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import uuid
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from gateway import create_app
from gateway.cli.main import main
from gateway.config import EmailConfig, load_settings
from gateway.engine.operations import import_authorization
from gateway.errors import ConfigError, InvalidInput, NotificationRejected
from gateway.notify import smtp
from gateway.notify.delivery import deliver_due
from gateway.notify.expiring import check_expiring
from gateway.notify.outbox import publish
from gateway.notify.webhook import verify_signature
from gateway.storage.blobstore import new_master_key
from gateway.storage.models import AuditEvent, Authorization, Notification, utcnow
from tests.helpers import bearer, make_token, wait_until
from tests.notify_peers import ANSWER_TEXT, HookServer, MailServer

@pytest.fixture
def hook():
    server = HookServer()
    yield server
    server.stop()


@pytest.fixture
def hook_secret(tmp_path) -> bytes:
    secret = secrets.token_hex(32).encode()
    (tmp_path / "hook-secret").write_bytes(secret + b"\n")
    return secret


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gateway.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def config(tmp_path, trust_file, hook, hook_secret, database_url) -> dict:
    data = tmp_path / "gw"
    data.mkdir()
    return {"data_dir": str(data), "blob_key": new_master_key(), "trust_file": str(trust_file),
            "database_url": database_url, "base_url": "https://gateway.example.org",
            "notify": {"webhooks": [{"name": "ops", "url": hook.url,
                                     "secret_file": str(tmp_path / "hook-secret")}],
                       "retry": {"base_delay_s": 0, "max_delay_s": 0, "max_attempts": 3},
                       "expiring_within_days": 14}}


@pytest.fixture
def app(config):
    app = create_app(config)
    yield app
    app.extensions["gateway"].close()


@pytest.fixture
def svc(app):
    return app.extensions["gateway"]


@pytest.fixture
def patient() -> dict:
    """A synthetic patient whose every identifying value is unique to this test."""
    tag = uuid.uuid4().hex[:8]
    return {"name": {"family": f"Family{tag}", "given": [f"Given{tag}"]},
            "birthDate": "1961-07-23",
            "identifiers": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": f"MRN-{tag}"}]}


@pytest.fixture
def authorization(svc, claims_for, sign, patient) -> str:
    return import_authorization(svc, sign(claims_for(patient=patient)), actor="test").id


def patient_values(patient: dict) -> list[str]:
    return [patient["name"]["family"], *patient["name"]["given"], patient["birthDate"],
            *(i["value"] for i in patient["identifiers"])]


def drain(svc) -> dict:
    with svc.db.session() as s:
        return deliver_due(s, svc)


def rows(svc) -> list[Notification]:
    with svc.db.session() as s:
        return list(s.scalars(select(Notification).order_by(Notification.created_at)))


def publish_one(svc, event="transfer.delivered", **kw) -> str:
    with svc.db.session() as s:
        ids = publish(s, event, **kw)
    assert len(ids) == 1
    return ids[0]


# --- webhooks ------------------------------------------------------------------------

def test_webhook_is_signed_and_carries_ids_states_and_links_only(svc, hook, hook_secret,
                                                                 authorization, patient):
    transfer_id = uuid.uuid4().hex
    event_id = publish_one(svc, "transfer.delivered", case_id="case-7", transfer_id=transfer_id,
                           authorization_id=authorization, state="delivered",
                           detail={"bundles": 2, "items": 14, "recipient": "center"})
    assert drain(svc) == {"sent": 1, "pending": 0, "dead": 0}
    assert len(hook.received) == 1
    request = hook.received[0]
    headers, body = request["headers"], request["body"]
    assert headers["X-Gateway-Event-Id"] == event_id
    # the signature, checked independently of the gateway's code
    parts = dict(p.split("=", 1) for p in headers["X-Gateway-Signature"].split(","))
    expected = hmac.new(hook_secret, parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected)
    assert verify_signature(hook_secret, headers["X-Gateway-Signature"], body)
    assert not verify_signature(hook_secret, headers["X-Gateway-Signature"], body + b" ")
    assert not verify_signature(b"another-secret-of-enough-length", headers["X-Gateway-Signature"],
                                body)
    assert not verify_signature(hook_secret, headers["X-Gateway-Signature"], body,
                                now=int(parts["t"]) + 301)  # a late replay
    doc = json.loads(body)
    assert doc == {
        "id": event_id, "type": "transfer.delivered", "occurred_at": doc["occurred_at"],
        "case": "case-7", "transfer": transfer_id, "authorization": authorization,
        "state": "delivered", "detail": {"bundles": 2, "items": 14, "recipient": "center"},
        "links": {"case": "https://gateway.example.org/cases/case-7",
                  "transfer": f"https://gateway.example.org/transfers/{transfer_id}",
                  "authorization": f"https://gateway.example.org/authorizations/{authorization}"}}
    # minimum necessary: nothing of the patient the authorization names
    text = body.decode()
    for value in patient_values(patient):
        assert value not in text
    assert [n.state for n in rows(svc)] == ["sent"]
    assert drain(svc) == {"sent": 0, "pending": 0, "dead": 0}
    assert len(hook.received) == 1


def test_free_text_and_unknown_events_are_refused(svc, patient):
    name = patient["name"]["family"]
    with svc.db.session() as s:
        with pytest.raises(InvalidInput, match="patient_name.*not allowed"):
            publish(s, "case.started", case_id="case-1", detail={"patient_name": name})
        with pytest.raises(InvalidInput, match="must be an id"):
            publish(s, "source.overdue", case_id="case-1", detail={"source": f"{name}, {name}"})
        with pytest.raises(InvalidInput, match="must be a count"):
            publish(s, "case.complete", case_id="case-1", detail={"items": "fourteen"})
        with pytest.raises(InvalidInput, match="must be an id"):
            publish(s, "case.started", case_id="Mr Smith's case")
        with pytest.raises(InvalidInput, match="unknown notification event"):
            publish(s, "patient.admitted", case_id="case-1")
        with pytest.raises(InvalidInput, match="must be an ISO 8601 time"):
            publish(s, "source.overdue", case_id="case-1", detail={"due_at": "next Tuesday"})
        with pytest.raises(InvalidInput, match="UTC offset"):
            publish(s, "source.overdue", case_id="case-1", detail={"due_at": "2026-12-06T10:00"})
    assert rows(svc) == []
    with pytest.raises(ConfigError, match="notify.webhooks.0.events"):
        load_settings({"notify": {"webhooks": [{"name": "x", "url": "https://h.example/x",
                                                "secret_file": "s", "events": ["patient.seen"]}]}})


def test_a_rolled_back_change_publishes_nothing(svc, hook):
    with pytest.raises(RuntimeError):
        with svc.db.session() as s:
            publish(s, "case.started", case_id="case-rolled-back", state="started")
            raise RuntimeError("the change failed")
    assert rows(svc) == []
    assert drain(svc) == {"sent": 0, "pending": 0, "dead": 0}
    assert hook.received == []
    publish_one(svc, "case.started", case_id="case-kept", state="started")
    assert [(n.case_id, n.state) for n in rows(svc)] == [("case-kept", "pending")]


def test_500_twice_then_200_is_delivered_once_with_one_event_id(svc, hook):
    hook.answers = [500, 503]
    event_id = publish_one(svc, "transfer.failed", transfer_id="t1", state="failed")
    assert drain(svc)["pending"] == 1
    (n,) = rows(svc)
    assert (n.state, n.attempts, n.last_error) == ("pending", 1, "webhook ops: HTTP 500")
    assert drain(svc)["pending"] == 1
    assert drain(svc)["sent"] == 1
    assert drain(svc) == {"sent": 0, "pending": 0, "dead": 0}
    assert [r["headers"]["X-Gateway-Event-Id"] for r in hook.received] == [event_id] * 3
    assert len({r["body"] for r in hook.received}) == 1  # the same bytes each attempt
    (n,) = rows(svc)
    assert (n.state, n.attempts, n.last_error) == ("sent", 3, None)
    assert n.sent_at is not None


def test_always_500_goes_dead_then_replay_delivers_exactly_once(app, svc, hook):
    hook.default = 500
    event_id = publish_one(svc, "case.complete", case_id="case-9", state="complete")
    for _ in range(3):
        drain(svc)
    (n,) = rows(svc)
    assert (n.state, n.attempts) == ("dead", 3)
    assert ANSWER_TEXT not in n.last_error
    assert len(hook.received) == 3
    assert drain(svc) == {"sent": 0, "pending": 0, "dead": 0}  # dead stays dead
    with svc.db.session() as s:
        dead_events = s.scalar(select(func.count()).select_from(AuditEvent)
                               .where(AuditEvent.type == "notification.dead"))
    assert dead_events == 1

    client = app.test_client()
    operator = bearer(make_token(app, "operator"))
    listed = client.get("/notifications?state=dead", headers=operator)
    assert listed.status_code == 200
    assert [x["id"] for x in listed.get_json()["notifications"]] == [event_id]
    auditor = bearer(make_token(app, "auditor"))
    assert client.post(f"/notifications/{event_id}/replay", headers=auditor).status_code == 403
    hook.default = 200
    replayed = client.post(f"/notifications/{event_id}/replay", headers=operator)
    assert replayed.status_code == 200 and replayed.get_json()["state"] == "pending"
    assert drain(svc)["sent"] == 1
    assert drain(svc)["sent"] == 0
    assert len(hook.received) == 4
    assert hook.received[3]["headers"]["X-Gateway-Event-Id"] == event_id
    again = client.post(f"/notifications/{event_id}/replay", headers=operator)
    assert again.status_code == 409
    missing = client.post("/notifications/nope/replay", headers=operator)
    assert missing.status_code == 404
    assert client.get("/notifications?state=lost", headers=operator).status_code == 400


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_failing_receiver_holds_up_no_other(config, tmp_path):
    down, up = HookServer(), HookServer()
    try:
        down.default = 503
        hooks = [{"name": name, "url": server.url, "secret_file": str(tmp_path / "hook-secret")}
                 for name, server in (("down", down), ("up", up))]
        app = create_app(dict(config, notify=dict(config["notify"], webhooks=hooks)))
        svc = app.extensions["gateway"]
        for case in ("case-a", "case-b", "case-c"):
            with svc.db.session() as s:
                publish(s, "case.started", case_id=case, state="started")
        assert drain(svc) == {"sent": 3, "pending": 1, "dead": 0}
        assert len(down.received) == 1  # one attempt a round for a receiver that is down
        assert [json.loads(r["body"])["case"] for r in up.received] == ["case-a", "case-b", "case-c"]
        attempts = sorted(n.attempts for n in rows(svc) if n.channel == "webhook:down")
        assert attempts == [0, 0, 1]
        svc.close()
    finally:
        down.stop()
        up.stop()


def test_400_is_dead_at_once_without_the_answer_text(svc, hook):
    hook.default = 400
    publish_one(svc, "transfer.opened", transfer_id="t2", state="opened")
    assert drain(svc) == {"sent": 0, "pending": 0, "dead": 1}
    (n,) = rows(svc)
    assert (n.state, n.attempts) == ("dead", 1)
    assert n.last_error.startswith("webhook ops: HTTP 400")
    assert ANSWER_TEXT not in n.last_error
    assert len(hook.received) == 1


def test_redirects_are_not_followed(svc, hook):
    hook.default = 302
    publish_one(svc, "transfer.opened", transfer_id="t3", state="opened")
    assert drain(svc)["dead"] == 1
    assert [r["path"] for r in hook.received] == ["/hook"]  # never /elsewhere
    assert "redirect" in rows(svc)[0].last_error


def test_429_waits_as_long_as_retry_after_asks(svc, hook):
    hook.answers = [429]
    publish_one(svc, "source.overdue", case_id="case-3", state="overdue",
                detail={"source": "records", "source_state": "overdue"})
    before = utcnow()
    assert drain(svc)["pending"] == 1
    (n,) = rows(svc)
    assert n.next_attempt_at >= before + timedelta(seconds=119)
    assert drain(svc) == {"sent": 0, "pending": 0, "dead": 0}  # not due yet
    assert len(hook.received) == 1


def test_a_connection_refused_is_retried_then_dead(svc, hook):
    hook.stop()
    publish_one(svc, "case.started", case_id="case-4", state="started")
    assert drain(svc)["pending"] == 1
    assert "cannot connect" in rows(svc)[0].last_error
    drain(svc)
    assert drain(svc)["dead"] == 1


def test_plain_http_webhooks_only_to_loopback(tmp_path):
    hook = {"name": "ops", "url": "http://hooks.example.org/x", "secret_file": str(tmp_path / "s")}
    with pytest.raises(ConfigError, match="plain HTTP"):
        load_settings({"notify": {"webhooks": [hook]}})
    assert load_settings({"notify": {"webhooks": [dict(hook, allow_http=True)]}})


# --- authorizations about to expire ------------------------------------------------

def _authorization(s, auth_id: str, expires_in: timedelta, status="active"):
    now = utcnow()
    s.add(Authorization(id=auth_id, issuer="i", key_id="k", jws_sha256=uuid.uuid4().hex * 2,
                        jws="x", claims={}, consent={}, recipient_id="r", not_before=now,
                        expires_at=now + expires_in, status=status))


def test_expiring_authorizations_are_announced_once(svc, hook):
    with svc.db.session() as s:
        _authorization(s, "auth-soon", timedelta(days=5, hours=1))
        _authorization(s, "auth-later", timedelta(days=30))
        _authorization(s, "auth-gone", timedelta(days=-1))
        _authorization(s, "auth-revoked", timedelta(days=2), status="revoked")
    with svc.db.session() as s:
        first = check_expiring(s, svc.settings)
    with svc.db.session() as s:
        assert check_expiring(s, svc.settings) == []  # remembered
    assert len(first) == 1
    assert drain(svc)["sent"] == 1
    doc = json.loads(hook.received[0]["body"])
    assert (doc["type"], doc["authorization"], doc["state"]) == (
        "authorization.expiring", "auth-soon", "expiring")
    assert doc["detail"]["days_left"] == 5


# --- email -----------------------------------------------------------------------------

@pytest.fixture(params=["PLAIN", "LOGIN"])
def mail(request, tmp_path):
    folder = tmp_path / "mail"
    folder.mkdir()
    server = MailServer(folder, password="right-password", mechanism=request.param)
    server.mechanism = request.param
    yield server
    server.stop()


def _email_app(config, tmp_path, mail, password: str, ca: bool = True, max_attempts: int = 3):
    (tmp_path / "smtp-password").write_text(password + "\n")
    config = dict(config)
    config["notify"] = dict(config["notify"], webhooks=[], email={
        "host": "127.0.0.1", "port": mail.port, "username": "gateway",
        "password_file": str(tmp_path / "smtp-password"), "from": "gateway@hospital.example",
        "to": ["records-office@hospital.example", "ops@hospital.example"],
        **({"ca_file": str(mail.ca)} if ca else {})})
    config["notify"]["retry"] = {"base_delay_s": 0, "max_delay_s": 0, "max_attempts": max_attempts}
    return create_app(config)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_email_over_starttls_with_auth(config, tmp_path, mail, claims_for, sign, patient):
    app = _email_app(config, tmp_path, mail, "right-password")
    svc = app.extensions["gateway"]
    try:
        auth_id = import_authorization(svc, sign(claims_for(patient=patient)), actor="test").id
        event_id = publish_one(svc, "case.complete", case_id="case-12", authorization_id=auth_id,
                               state="complete", detail={"sources": 3, "delivered": 41})
        assert drain(svc)["sent"] == 1
    finally:
        svc.close()
    assert mail.logins == [(mail.mechanism, True, True)]
    (msg,) = mail.messages
    assert msg["tls"] is True
    assert msg["from"] == "gateway@hospital.example"
    assert msg["to"] == ["records-office@hospital.example", "ops@hospital.example"]
    text = msg["content"].decode()
    assert f"X-Gateway-Event-Id: {event_id}" in text
    assert "https://gateway.example.org/cases/case-12" in text
    assert "delivered: 41" in text
    for value in patient_values(patient):
        assert value not in text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("mail", ["PLAIN"], indirect=True)
def test_a_wrong_smtp_password_is_retried_then_dead(config, tmp_path, mail):
    app = _email_app(config, tmp_path, mail, "wrong-password", max_attempts=2)
    svc = app.extensions["gateway"]
    try:
        publish_one(svc, "case.started", case_id="case-13", state="started")
        assert drain(svc)["pending"] == 1
        (n,) = rows(svc)
        assert n.attempts == 1
        assert "refused the login of gateway (SMTP 535)" in n.last_error
        assert "check username and password_file" in n.last_error
        assert drain(svc)["dead"] == 1
        assert rows(svc)[0].state == "dead"
    finally:
        svc.close()
    assert [ok for _, ok, _ in mail.logins] == [False, False]
    assert mail.messages == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("mail", ["PLAIN"], indirect=True)
def test_an_untrusted_mail_server_gets_no_credentials(config, tmp_path, mail):
    app = _email_app(config, tmp_path, mail, "right-password", ca=False)
    svc = app.extensions["gateway"]
    try:
        publish_one(svc, "case.started", case_id="case-14", state="started")
        assert drain(svc)["dead"] == 1  # a certificate no CA vouches for: no point retrying
        assert "certificate is not trusted" in rows(svc)[0].last_error
    finally:
        svc.close()
    assert mail.logins == [] and mail.messages == []


def test_smtp_credentials_never_go_in_the_clear_to_another_host(tmp_path):
    email = {"host": "mail.hospital.example", "port": 25, "starttls": False, "username": "gw",
             "password_file": str(tmp_path / "p"), "from": "gw@hospital.example",
             "to": ["ops@hospital.example"]}
    with pytest.raises(ConfigError, match="credentials for mail.hospital.example would go without TLS"):
        load_settings({"notify": {"email": email}})
    local = dict(email, host="127.0.0.1")
    with pytest.raises(ConfigError, match="allow_plain_auth"):
        load_settings({"notify": {"email": local}})
    assert load_settings({"notify": {"email": dict(local, allow_plain_auth=True)}})
    with pytest.raises(ConfigError, match="notify.email.to.0"):  # one address, no header tricks
        load_settings({"notify": {"email": dict(local, allow_plain_auth=True,
                                                to=["a@h.example, b@evil.example"])}})
    with pytest.raises(ConfigError, match="would go without TLS"):
        load_settings({"notify": {"email": dict(email, allow_plain_auth=True)}})
    # and at send time, for settings that were never validated
    unchecked = EmailConfig.model_construct(**dict(email, from_=email["from"], allow_plain_auth=True,
                                                   password_file=tmp_path / "p"))
    (tmp_path / "p").write_text("secret")
    with pytest.raises(NotificationRejected, match="would go without TLS"):
        smtp.send(unchecked, {"id": "e1", "type": "case.started"}, 5)


# --- command line ------------------------------------------------------------------

@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cli_lists_and_replays(config, svc, hook, tmp_path, monkeypatch):
    hook.default = 400
    event_id = publish_one(svc, "transfer.failed", transfer_id="t5", state="failed")
    drain(svc)
    path = tmp_path / "cli-config.json"
    path.write_text(json.dumps(config))
    for key in [k for k in os.environ if k.startswith("GATEWAY_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("GATEWAY_CONFIG_FILE", str(path))
    runner = CliRunner()

    listed = runner.invoke(main, ["notification", "list", "--state", "dead"])
    assert listed.exit_code == 0, listed.output
    (line,) = listed.output.splitlines()
    assert line.startswith(f"{event_id}  dead") and "webhook:ops" in line and "HTTP 400" in line
    assert runner.invoke(main, ["notification", "list", "--state", "sent"]).output == \
        "no sent notifications\n"

    replayed = runner.invoke(main, ["notification", "replay", event_id])
    assert replayed.exit_code == 0
    assert replayed.output == f"notification {event_id} (webhook:ops, transfer.failed) queued again\n"
    twice = runner.invoke(main, ["notification", "replay", event_id])
    assert twice.exit_code == 1
    assert twice.output == f"error: only a dead notification can be replayed; {event_id} is pending\n"
    bad = runner.invoke(main, ["notification", "replay", "no-such-id"])
    assert bad.exit_code == 1 and bad.output == "error: no notification no-such-id\n"
    with svc.db.session() as s:
        assert s.get(Notification, event_id).state == "pending"


# --- unattended: a real worker with its beat drains the outbox ----------------------

@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_sends_what_was_published(config, svc, hook, processes, tmp_path):
    config = dict(config, notify=dict(config["notify"], interval_s=0.5))
    worker = processes(config, tmp_path, "notify-worker", "worker", "--beat")
    event_id = publish_one(svc, "case.started", case_id="case-20", state="started")
    wait_until(lambda: hook.received, timeout=90, what="the worker to send the webhook")
    wait_until(lambda: rows(svc)[0].state == "sent", timeout=30, what="the row to be marked sent")
    assert [r["headers"]["X-Gateway-Event-Id"] for r in hook.received] == [event_id]
    assert worker.proc.poll() is None
