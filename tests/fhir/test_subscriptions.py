"""FHIR Subscriptions (R4 Backport IG) against a real sekmet: subscribing for one patient,
the handshake, event notifications landing in the trigger inbox, heartbeats, gaps, bad
notifications refused, and unsubscribing at the source (issue 14).

The gateway's Flask app is served on a real loopback port so sekmet can POST to it; a
recorder around the app keeps what came in (path, headers, body, status, answer time),
which is how a delivered notification is replayed."""
from __future__ import annotations

import contextlib
import io
import json
import threading
import time
import uuid
from datetime import timedelta

import pytest
import requests
from sqlalchemy import select
from werkzeug.serving import make_server

from connectors.fhir.notifications import MalformedNotification, parse_notification
from gateway.engine import subscriptions as subs
from gateway.errors import ConfigError
from gateway.storage.blobstore import new_master_key
from gateway.storage.models import FhirSubscription, Trigger, utcnow
from tests.fhir.fhir_peers import SekmetServer, free_port, wait_until
from tests.helpers import SENDER_ORG, throwaway_database

TOPIC_BASE = "http://sekmet.dev/fhir/SubscriptionTopic"
REPORT_TOPIC = f"{TOPIC_BASE}/diagnosticreport-final"
ENCOUNTER_TOPIC = f"{TOPIC_BASE}/encounter-complete"
HEARTBEAT_S = 2


class Recorder:
    """WSGI middleware: every request to the app with its answer and answer time."""

    def __init__(self, app):
        self.app, self.seen, self.lock = app, [], threading.Lock()
        self.lose_next: set[str] = set()  # paths whose next event notification is lost on the way

    def __call__(self, environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        with self.lock:
            lost = environ["PATH_INFO"] in self.lose_next and _type_of(body) == "event-notification"
            if lost:
                self.lose_next.discard(environ["PATH_INFO"])
        if lost:  # as a proxy that answers and forwards nothing would
            start_response("200 OK", [("Content-Type", "application/fhir+json")])
            return [b"{}"]
        environ["wsgi.input"] = io.BytesIO(body)
        status = {}
        started = time.perf_counter()

        def start(code, headers, exc_info=None):
            status["code"] = int(code.split()[0])
            return start_response(code, headers, exc_info)

        out = b"".join(self.app(environ, start))
        with self.lock:
            self.seen.append({"path": environ["PATH_INFO"], "auth": environ.get("HTTP_AUTHORIZATION"),
                              "body": body, "status": status.get("code"),
                              "ms": (time.perf_counter() - started) * 1000})
        return [out]

    def notifications(self, sid: str, kind: str | None = None) -> list[dict]:
        with self.lock:
            seen = [r for r in self.seen if r["path"] == f"/subscriptions/{sid}/notify"]
        return [r for r in seen if kind is None or _type_of(r["body"]) == kind]


def _type_of(body: bytes) -> str | None:
    try:
        return parse_notification(body).type
    except MalformedNotification:
        return None


@pytest.fixture(scope="module")
def hospital(tmp_path_factory, synthea_files):
    """Its own sekmet (subscriptions stay out of other tests' server) with two patients."""
    server = SekmetServer(tmp_path_factory.mktemp("sekmet-subs")).start()
    server.patients = [server.load(f) for f in synthea_files]
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def gateway(request, tmp_path_factory, hospital):
    """The gateway's app on a real port, a fhir-rest source at sekmet with subscriptions
    (id-only, and full-resource as `ehr-full`), on SQLite or PostgreSQL."""
    with contextlib.ExitStack() as stack:
        database = stack.enter_context(throwaway_database()) if request.param == "postgresql" else None
        yield from _serve_gateway(tmp_path_factory.mktemp("gateway-subs"), hospital, database)


def _serve_gateway(data, hospital, database):
    from gateway import create_app

    port = free_port()
    source = {"kind": "fhir-rest", "organization": SENDER_ORG, "endpoint": hospital.direct,
              "options": {"base_url": hospital.direct}}
    app = create_app({
        "data_dir": str(data), "blob_key": new_master_key(), "organization": SENDER_ORG,
        "base_url": f"http://127.0.0.1:{port}", "port": port, "database_url": database,
        "sources": {"ehr": {**source, "subscriptions": {
                        "topics": [REPORT_TOPIC, ENCOUNTER_TOPIC, f"{TOPIC_BASE}/not-offered-here",
                                   f"{TOPIC_BASE}/patient-change"],  # no patient filter: skipped
                        "payload": "id-only", "heartbeat_s": HEARTBEAT_S}},
                    "ehr-full": {**source, "subscriptions": {"topics": [REPORT_TOPIC],
                                                             "payload": "full-resource"}}}})
    recorder = Recorder(app.wsgi_app)
    app.wsgi_app = recorder
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    svc = app.extensions["gateway"]
    yield {"app": app, "svc": svc, "url": f"http://127.0.0.1:{port}", "recorder": recorder}
    with svc.db.session() as s:  # nothing left at sekmet calling a gateway that is gone
        owners = set(s.scalars(select(FhirSubscription.owner).where(FhirSubscription.status != "off")))
    for owner in owners:
        subs.unsubscribe_owner(svc, owner)
    server.shutdown()
    thread.join(10)
    svc.close()


def _report(patient_id: str) -> dict:
    return {"resourceType": "DiagnosticReport", "status": "final",
            "code": {"text": f"Synthetic panel {uuid.uuid4().hex[:6]}"},
            "subject": {"reference": f"Patient/{patient_id}"}}


def _triggers(svc, owner: str) -> list[Trigger]:
    with svc.db.session() as s:
        return list(s.scalars(select(Trigger).where(Trigger.owner == owner).order_by(Trigger.id)))


def _row(svc, sid: str) -> FhirSubscription:
    with svc.db.session() as s:
        return s.get(FhirSubscription, sid)


def _secret_at_source(hospital, remote_id: str) -> str:
    """The channel secret as sekmet holds it (the gateway keeps only its hash)."""
    sub = requests.get(f"{hospital.direct}/Subscription/{remote_id}", timeout=10).json()
    header = next(h for h in sub["channel"]["header"] if h.startswith("Authorization:"))
    return header.split(":", 1)[1].strip().removeprefix("Bearer ")


@pytest.fixture(scope="module")
def subscribed(gateway, hospital):
    """Case `case-a` subscribed for the first patient; both topics active (handshake)."""
    svc = gateway["svc"]
    patient = hospital.patients[0]["id"]
    rows = subs.subscribe(svc, "case-a", "ehr", patient)
    wait_until(lambda: all(_row(svc, r.id).status == "active" for r in rows), 20, what="handshakes")
    report_sub = next(r for r in rows if r.topic == REPORT_TOPIC)
    return {"rows": rows, "patient": patient, "sid": report_sub.id, "remote_id": report_sub.remote_id}


def test_subscribe_sends_backport_subscription_and_takes_the_handshake(gateway, hospital, subscribed):
    svc, rows = gateway["svc"], subscribed["rows"]
    # the topic not offered and the one that cannot be filtered to the patient are skipped
    assert sorted(r.topic for r in rows) == sorted([ENCOUNTER_TOPIC, REPORT_TOPIC])
    for r in rows:
        row = _row(svc, r.id)
        assert row.status == "active" and row.remote_id and row.last_heartbeat_at is not None
        assert row.patient_ref == subscribed["patient"] and len(row.secret_sha256) == 64
        handshakes = gateway["recorder"].notifications(r.id, "handshake")
        assert [h["status"] for h in handshakes] == [200]
        at_source = requests.get(f"{hospital.direct}/Subscription/{row.remote_id}", timeout=10).json()
        assert at_source["status"] == "active" and at_source["criteria"] == r.topic
        assert at_source["channel"]["endpoint"] == f"{gateway['url']}/subscriptions/{r.id}/notify"
        assert subscribed["patient"] in at_source["_criteria"]["extension"][0]["valueString"]
        assert subscribed["patient"] not in at_source["channel"]["endpoint"]  # no patient data in the URL
    status = subs.remote_status(svc, subscribed["sid"])  # the source's own view: $status
    assert status["status"] == "active" and isinstance(status["events_since_subscription_start"], int)
    # subscribing again for the same owner and patient holds the same subscriptions
    again = subs.subscribe(svc, "case-a", "ehr", subscribed["patient"])
    assert sorted(r.id for r in again) == sorted(r.id for r in rows)


def test_new_report_lands_in_the_inbox_once_and_only_for_this_patient(gateway, hospital, subscribed):
    svc, sid = gateway["svc"], subscribed["sid"]
    before = len(_triggers(svc, "case-a"))
    other = hospital.post(_report(hospital.patients[1]["id"]))  # another patient: no trigger
    mine = hospital.post(_report(subscribed["patient"]))
    wait_until(lambda: len(_triggers(svc, "case-a")) > before, 20, what="the report's trigger")
    new = _triggers(svc, "case-a")[before:]
    assert [(t.kind, t.focus) for t in new] == [("event", [f"DiagnosticReport/{mine['id']}"])]
    assert all(f"DiagnosticReport/{other['id']}" not in t.focus for t in _triggers(svc, "case-a"))
    with svc.db.session() as s:
        pending = subs.pending_triggers(s, "case-a")
        assert new[0].id in [t.id for t in pending]

    # the trigger is committed inside the request; the recorder notes its answer after it
    events = wait_until(lambda: gateway["recorder"].notifications(sid, "event-notification"), 10,
                        what="the notification's answer recorded")
    assert all(e["status"] == 200 for e in events)
    with gateway["recorder"].lock:
        times = sorted(r["ms"] for r in gateway["recorder"].seen if r["path"].endswith("/notify"))
    print(f"notify answered sekmet's {len(times)} notifications in median {times[len(times) // 2]:.1f} ms, "
          f"at most {times[-1]:.1f} ms")

    # the same notification delivered again: acknowledged, nothing new stored
    count = len(_triggers(svc, "case-a"))
    replay = requests.post(f"{gateway['url']}/subscriptions/{sid}/notify", data=events[-1]["body"],
                           headers={"Authorization": events[-1]["auth"],
                                    "Content-Type": "application/fhir+json"}, timeout=10)
    assert replay.status_code == 200
    assert "1 duplicate" in replay.json()["issue"][0]["diagnostics"]
    assert len(_triggers(svc, "case-a")) == count


def test_one_event_delivered_many_times_at_once_is_stored_once(gateway, hospital, subscribed):
    svc, sid = gateway["svc"], subscribed["sid"]
    # an event notification of its own to copy (the tests above may not have run)
    seen = len(gateway["recorder"].notifications(sid, "event-notification"))
    hospital.post(_report(subscribed["patient"]))
    event = wait_until(lambda: gateway["recorder"].notifications(sid, "event-notification")[seen:], 20,
                       what="the report's notification")[-1]
    number = _row(svc, sid).events_seen + 1
    doc = json.loads(event["body"])
    for p in doc["entry"][0]["resource"]["parameter"]:
        if p["name"] == "events-since-subscription-start":
            p["valueString"] = str(number)
        if p["name"] == "notification-event":
            next(x for x in p["part"] if x["name"] == "event-number")["valueString"] = str(number)
    body, answers = json.dumps(doc).encode(), []

    def deliver():
        answers.append(requests.post(f"{gateway['url']}/subscriptions/{sid}/notify", data=body, timeout=30,
                                     headers={"Authorization": event["auth"],
                                              "Content-Type": "application/fhir+json"}).status_code)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == [200] * 8
    stored = [t for t in _triggers(svc, "case-a") if t.subscription_id == sid and t.event_number == number]
    assert len(stored) == 1 and stored[0].kind == "event"
    assert not [t for t in _triggers(svc, "case-a") if t.kind == "gap" and t.received_at >= stored[0].received_at]


def test_full_resource_payload_stores_the_focus_only(gateway, hospital):
    svc, patient = gateway["svc"], hospital.patients[1]["id"]
    rows = subs.subscribe(svc, "case-c", "ehr-full", patient)
    assert [r.topic for r in rows] == [REPORT_TOPIC] and rows[0].payload == "full-resource"
    wait_until(lambda: _row(svc, rows[0].id).status == "active", 20, what="the handshake")
    at_source = requests.get(f"{hospital.direct}/Subscription/{rows[0].remote_id}", timeout=10).json()
    assert at_source["channel"]["_payload"]["extension"][0]["valueCode"] == "full-resource"
    report = hospital.post(_report(patient))
    wait_until(lambda: _triggers(svc, "case-c"), 20, what="the report's trigger")
    assert [(t.kind, t.focus) for t in _triggers(svc, "case-c")] == [
        ("event", [f"DiagnosticReport/{report['id']}"])]
    # the recorder notes a notification once the gateway has answered it: poll for it too
    [note, *_] = wait_until(lambda: gateway["recorder"].notifications(rows[0].id, "event-notification"),
                            20, what="the recorded notification")
    delivered = json.loads(note["body"])
    assert delivered["entry"][1]["resource"]["id"] == report["id"]  # the source sent the resource
    assert subs.unsubscribe_owner(svc, "case-c") == 1


def test_bad_notifications_are_refused_and_store_nothing(gateway, hospital, subscribed, caplog):
    svc, sid, url = gateway["svc"], subscribed["sid"], gateway["url"]
    secret = _secret_at_source(hospital, subscribed["remote_id"])
    body = gateway["recorder"].notifications(sid, "handshake")[0]["body"]
    count, seen = len(_triggers(svc, "case-a")), _row(svc, sid).events_seen
    fhir = {"Content-Type": "application/fhir+json"}

    def post(path_sid: str, data: bytes, token: str | None):
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.post(f"{url}/subscriptions/{path_sid}/notify", data=data, headers={**fhir, **auth},
                             timeout=10)

    wrong = post(sid, body, "not-the-secret")
    assert wrong.status_code == 401 and wrong.json()["issue"][0]["code"] == "login"
    assert post(sid, body, None).status_code == 401
    assert post("x" * 32, body, secret).status_code == 404  # unknown subscription
    assert post("short", body, secret).status_code == 404
    malformed = [b"{not json", b'{"resourceType": "Bundle", "type": "transaction", "entry": []}',
                 json.dumps({"resourceType": "Bundle", "type": "history",
                             "entry": [{"resource": {"resourceType": "Patient", "id": "p"}}]}).encode()]
    for data in malformed:
        answer = post(sid, data, secret)
        assert answer.status_code == 400, data
    # an event without its number cannot be de-duplicated: refused
    doc = json.loads(body)
    params = doc["entry"][0]["resource"]["parameter"]
    for p in params:
        if p["name"] == "type":
            p["valueCode"] = "event-notification"
    params.append({"name": "notification-event", "part": [
        {"name": "focus", "valueReference": {"reference": "DiagnosticReport/x1"}}]})
    assert post(sid, json.dumps(doc).encode(), secret).status_code == 400
    # a notification for another topic, with this subscription's secret
    doc = json.loads(body)
    next(p for p in doc["entry"][0]["resource"]["parameter"] if p["name"] == "topic")["valueCanonical"] = \
        ENCOUNTER_TOPIC
    assert post(sid, json.dumps(doc).encode(), secret).status_code == 400
    assert len(_triggers(svc, "case-a")) == count and _row(svc, sid).events_seen == seen
    assert secret not in caplog.text and subscribed["patient"] not in caplog.text


def test_events_the_source_counted_but_never_sent_are_a_gap(gateway, hospital, subscribed):
    svc, sid = gateway["svc"], subscribed["sid"]
    if not gateway["recorder"].notifications(sid, "event-notification"):
        hospital.post(_report(subscribed["patient"]))
        wait_until(lambda: gateway["recorder"].notifications(sid, "event-notification"), 20,
                   what="an event notification")
    event = gateway["recorder"].notifications(sid, "event-notification")[-1]
    seen = _row(svc, sid).events_seen
    jumped = seen + 3  # events seen+1 and seen+2 never arrive
    doc = json.loads(event["body"])
    for p in doc["entry"][0]["resource"]["parameter"]:
        if p["name"] == "events-since-subscription-start":
            p["valueString"] = str(jumped)
        if p["name"] == "notification-event":
            next(x for x in p["part"] if x["name"] == "event-number")["valueString"] = str(jumped)
    before = len(_triggers(svc, "case-a"))
    answer = requests.post(f"{gateway['url']}/subscriptions/{sid}/notify", data=json.dumps(doc),
                           headers={"Authorization": event["auth"], "Content-Type": "application/fhir+json"},
                           timeout=10)
    assert answer.status_code == 200
    new = _triggers(svc, "case-a")[before:]
    assert sorted((t.kind, t.event_number) for t in new) == [("event", jumped), ("gap", None)]
    assert _row(svc, sid).events_seen == jumped


def test_a_lost_event_is_a_gap_from_the_next_heartbeat(gateway, hospital):
    svc, recorder, patient = gateway["svc"], gateway["recorder"], hospital.patients[1]["id"]
    rows = subs.subscribe(svc, "case-d", "ehr", patient)
    sid = next(r.id for r in rows if r.topic == REPORT_TOPIC)
    wait_until(lambda: all(_row(svc, r.id).status == "active" for r in rows), 20, what="handshakes")
    recorder.lose_next.add(f"/subscriptions/{sid}/notify")
    heartbeats = len(recorder.notifications(sid, "heartbeat"))
    hospital.post(_report(patient))
    wait_until(lambda: not recorder.lose_next, 20, what="the event to be lost")
    # sekmet's next heartbeat counts the event the gateway never got
    wait_until(lambda: len(recorder.notifications(sid, "heartbeat")) > heartbeats + 1, 4 * HEARTBEAT_S + 10,
               what="a heartbeat after the loss")
    assert [(t.kind, t.subscription_id) for t in _triggers(svc, "case-d")] == [("gap", sid)]
    assert _row(svc, sid).events_seen == 1
    subs.unsubscribe_owner(svc, "case-d")


def test_heartbeats_arrive_and_a_silent_source_is_a_trigger(gateway, subscribed):
    svc = gateway["svc"]
    sid = subscribed["sid"]
    wait_until(lambda: gateway["recorder"].notifications(sid, "heartbeat"), 4 * HEARTBEAT_S + 10,
               what="a heartbeat")
    assert all(h["status"] == 200 for h in gateway["recorder"].notifications(sid, "heartbeat"))
    with svc.db.session() as s:
        rows = list(s.scalars(select(FhirSubscription).where(FhirSubscription.status == "active")))
    active = len(rows)
    oldest = min(max(t for t in (r.last_heartbeat_at, r.last_event_at, r.created_at) if t) for r in rows)
    # times given, not waited for: within two periods of the last word nothing is missed
    assert subs.check_heartbeats(svc, now=oldest + timedelta(seconds=HEARTBEAT_S)) == 0
    later = utcnow() + timedelta(seconds=10 * HEARTBEAT_S)
    # the gateway's own periodic check may already have reported one whose heartbeat came
    # late on a busy machine; together they report every subscription
    assert 1 <= subs.check_heartbeats(svc, now=later) <= active
    assert subs.check_heartbeats(svc, now=later) == 0  # reported once until heard from again
    missed = [t for t in _triggers(svc, "case-a") if t.kind == "heartbeat-missed"]
    assert {t.subscription_id for t in missed} == {r.id for r in subscribed["rows"]}
    with svc.db.session() as s:
        assert subs.mark_processed(s, [t.id for t in missed]) == len(missed)
    with svc.db.session() as s:
        assert not {t.id for t in missed} & {t.id for t in subs.pending_triggers(s, "case-a")}


def test_unsubscribe_deletes_at_the_source(gateway, hospital):
    svc = gateway["svc"]
    rows = subs.subscribe(svc, "case-b", "ehr", hospital.patients[1]["id"])
    wait_until(lambda: all(_row(svc, r.id).status == "active" for r in rows), 20, what="handshakes")
    handshake = gateway["recorder"].notifications(rows[0].id, "handshake")[0]
    assert subs.unsubscribe_owner(svc, "case-b") == len(rows) == 2
    for r in rows:
        assert _row(svc, r.id).status == "off" and _row(svc, r.id).closed_at is not None
        gone = requests.get(f"{hospital.direct}/Subscription/{r.remote_id}", timeout=10)
        assert gone.status_code in (404, 410)
    # a closed subscription takes no more notifications
    late = requests.post(f"{gateway['url']}/subscriptions/{rows[0].id}/notify", data=handshake["body"],
                         headers={"Authorization": handshake["auth"]}, timeout=10)
    assert late.status_code == 404
    assert subs.unsubscribe_owner(svc, "case-b") == 0


def test_subscriptions_only_for_fhir_sources():
    from gateway.config import load_settings

    with pytest.raises(ConfigError, match="subscriptions"):
        load_settings({"sources": {"drop": {"kind": "pdf-folder", "organization": "o", "endpoint": "/x",
                                            "subscriptions": {"topics": [REPORT_TOPIC]}}}})
    with pytest.raises(ConfigError, match="payload"):
        load_settings({"sources": {"ehr": {"kind": "fhir-rest", "organization": "o", "endpoint": "e",
                                           "subscriptions": {"topics": [REPORT_TOPIC], "payload": "all"}}}})


def test_r4b_subscription_status_notifications_are_read():
    body = {"resourceType": "Bundle", "type": "history", "entry": [{"resource": {
        "resourceType": "SubscriptionStatus", "status": "active", "type": "event-notification",
        "eventsSinceSubscriptionStart": "7", "topic": REPORT_TOPIC,
        "subscription": {"reference": "https://ehr.test.invalid/fhir/Subscription/s1"},
        "notificationEvent": [{"eventNumber": "7", "focus": {
            "reference": "https://ehr.test.invalid/fhir/DiagnosticReport/r9/_history/2"}}]}}]}
    note = parse_notification(json.dumps(body).encode())
    assert (note.type, note.subscription, note.events_since_start) == ("event-notification", "s1", 7)
    assert [(e.number, e.focus) for e in note.events] == [(7, "DiagnosticReport/r9")]
    body["entry"][0]["resource"]["notificationEvent"][0]["focus"] = {"reference": "../../etc/passwd"}
    with pytest.raises(MalformedNotification):
        parse_notification(json.dumps(body).encode())
