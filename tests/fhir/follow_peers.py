"""An open case on a real FHIR source with subscriptions, for the follow-up test and
benchmark: sekmet as the source (`fhir-rest`, auto = "start", subscribed to its
DiagnosticReport topic), the sending gateway's app served on a loopback port (sekmet
posts its notifications there), a real `worker --beat` process and a real receiving
gateway process (`serve --receive`)."""
from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

from sqlalchemy import select
from werkzeug.serving import make_server

from gateway.storage.blobstore import new_master_key
from gateway.storage.models import FhirSubscription, Trigger
from gateway.trust.authorizations import example_claims, new_issuer_key, sign_authorization
from gateway.trust.issuers import trust_document
from tests.helpers import (
    ISSUER,
    RECEIVER_ORG,
    SENDER_ORG,
    GatewayProcess,
    bearer,
    free_port,
    make_token,
    stop_all,
)
from tests.test_transfer_flow import Stack

REPORT_TOPIC = "http://sekmet.dev/fhir/SubscriptionTopic/diagnosticreport-final"


def report(patient_id: str) -> dict:
    """A new synthetic DiagnosticReport for the patient (final: the topic's trigger)."""
    return {"resourceType": "DiagnosticReport", "status": "final",
            "code": {"text": f"Synthetic panel {uuid.uuid4().hex[:8]}"},
            "subject": {"reference": f"Patient/{patient_id}"}}


def source_keys(bundle: dict, base_url: str) -> list[str]:
    """"Type/id" at the source of each entry that came from it (by meta.source)."""
    out = []
    for e in bundle["entry"]:
        src = (e["resource"].get("meta") or {}).get("source") or ""
        if src.startswith(base_url + "/"):
            out.append(src[len(base_url) + 1:])
    return out


class FollowCase:
    """Everything a follow-up needs, under `work`; `stop()` stops what it started, by PID."""

    def __init__(self, work: Path, sekmet, patient: dict, **settings):
        from gateway import create_app
        from gateway.engine.faxes import ensure_cover_key

        self.work, self.sekmet, self.patient = work, sekmet, patient
        self.started: list[GatewayProcess] = []
        self.key = new_issuer_key("test-esign-1")
        trust = work / "issuers.json"
        trust.write_text(json.dumps(trust_document({ISSUER: [self.key]})))
        self.receiver_url = f"http://127.0.0.1:{free_port()}"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        data = work / "sender"
        data.mkdir(parents=True)
        (data / "peer-token").write_text("not-yet-issued")
        self.sender_config = {
            "data_dir": str(data), "blob_key": new_master_key(), "trust_file": str(trust),
            "organization": SENDER_ORG, "port": port, "base_url": self.url,
            "sources": {"ehr": {"kind": "fhir-rest", "organization": SENDER_ORG,
                                "endpoint": sekmet.base_url, "auto": "start",
                                "options": {"base_url": sekmet.base_url, "auth": {"type": "none"}},
                                "subscriptions": {"topics": [REPORT_TOPIC], "payload": "id-only",
                                                  "heartbeat_s": 30}}},
            "peers": {"center": {"base_url": self.receiver_url, "organization": RECEIVER_ORG,
                                 "token_file": str(data / "peer-token")}},
            "retry": {"base_delay_s": 0.2, "max_delay_s": 1.0, "max_attempts": 1000},
            "step_lease_s": 5, "reconcile_interval_s": 1, **settings}
        rdata = work / "receiver"
        rdata.mkdir()
        self.receiver_config = {
            "data_dir": str(rdata), "blob_key": new_master_key(), "organization": RECEIVER_ORG,
            "mode": "receive", "port": int(self.receiver_url.rsplit(":", 1)[1]),
            "base_url": self.receiver_url,
            "senders": {"test-hospital": {"organization": SENDER_ORG,
                                          "jwks_file": str(work / "sender-jwks.json")}}}
        self.app = create_app(self.sender_config)
        self.svc = self.app.extensions["gateway"]
        self.svc.keys.ensure()
        ensure_cover_key(self.svc.settings.keys_dir)
        (work / "sender-jwks.json").write_text(json.dumps(self.svc.keys.jwks()))
        # the API on a real port: sekmet posts its notifications to base_url
        self.server = make_server("127.0.0.1", port, self.app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.stack = Stack(self.app, self.app.test_client(), bearer(make_token(self.app, "operator")),
                           self._process, self.sender_config, self.receiver_config, work)
        self.stack.start_receiver()

    def _process(self, config: dict, workdir: Path, name: str, *args: str) -> GatewayProcess:
        proc = GatewayProcess(config, workdir, name).start(*args)
        self.started.append(proc)
        return proc

    def authorize(self) -> tuple[str, str]:
        """Import an authorization for the patient; returns (authorization id, case id)."""
        name, mrn = self.patient["name"][0], self.patient["identifier"][0]
        claims = example_claims(
            ISSUER, f"auth-{uuid.uuid4().hex[:12]}",
            patient={"name": {"family": name["family"], "given": name.get("given", ["X"])},
                     "birthDate": self.patient["birthDate"],
                     "identifiers": [{"system": mrn["system"], "value": mrn["value"]}]},
            disclosers=[{"id": SENDER_ORG, "name": "Test Hospital",
                         "endpoints": [{"type": "fhir", "address": self.sekmet.base_url}]}],
            recipient={"id": RECEIVER_ORG, "name": "Test Center",
                       "endpoint": {"type": "gateway", "address": self.receiver_url}})
        auth_id = self.stack.authorize(claims, lambda c: sign_authorization(c, self.key))
        r = self.stack.client.get("/cases", headers=self.stack.operator)
        [case] = [c for c in r.get_json()["cases"] if c["authorization"] == auth_id]
        return auth_id, case["id"]

    def case(self, case_id: str) -> dict:
        r = self.stack.client.get(f"/cases/{case_id}", headers=self.stack.operator)
        assert r.status_code == 200, r.get_json()
        return r.get_json()

    def subscriptions(self, case_id: str) -> list[FhirSubscription]:
        with self.svc.db.session() as s:
            return list(s.scalars(select(FhirSubscription).filter_by(owner=case_id)))

    def triggers(self, case_id: str) -> list[Trigger]:
        with self.svc.db.session() as s:
            return list(s.scalars(select(Trigger).filter_by(owner=case_id).order_by(Trigger.id)))

    def received(self) -> list[tuple[dict, dict]]:
        """(inbox row, bundle) of everything the center holds, oldest first."""
        rows = sorted(self.stack.inbox(), key=lambda r: r["receivedAt"])
        return [(r, self.stack.received_bundle(r["id"])) for r in rows]

    def restart_worker(self) -> None:
        self.stack.worker = self.stack.start_worker()

    def stop(self) -> None:
        from gateway.engine import subscriptions

        with self.svc.db.session() as s:  # nothing left at sekmet calling a gateway that is gone
            owners = set(s.scalars(select(FhirSubscription.owner)
                                   .where(FhirSubscription.status.in_(subscriptions.OPEN))))
        for owner in owners:
            subscriptions.unsubscribe_owner(self.svc, owner)
        stop_all(self.started)
        self.server.shutdown()
        self.thread.join(10)
        self.svc.close()
