"""Operations: /ready names each dependency that fails, /metrics counts a real transfer
(with a worker process and a receiving gateway), JSON log lines carry the ids and never
the patient, and `records-gateway doctor` says in one line a check what is wrong."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from gateway.trust.authorizations.issuer import SYNTHETIC_PATIENT

from tests.helpers import PG_ADMIN, free_port, throwaway_database, wait_until, write_pdfs
from tests.test_tls import _ca, _issue, _write
from tests.test_transfer_flow import TERMINAL, Stack

PATIENT_TEXT = [SYNTHETIC_PATIENT["name"]["family"], *SYNTHETIC_PATIENT["name"]["given"],
                SYNTHETIC_PATIENT["birthDate"], SYNTHETIC_PATIENT["identifiers"][0]["value"]]


def failed_checks(response) -> list[str]:
    assert response.status_code == 503, response.get_data(as_text=True)
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    return [issue["expression"][0] for issue in body["issue"]]


# --- /ready ---------------------------------------------------------------------------

def test_ready_when_everything_works(client):
    r = client.get("/ready")
    assert r.status_code == 200
    assert sorted(r.get_json()["checks"]) == ["blob store", "broker", "database", "keys"]
    assert client.get("/health").get_json()["status"] == "ok"


def test_ready_names_the_blob_store_when_it_cannot_write(app, client):
    blobs = app.extensions["gateway"].blobs.backend.root
    aside = blobs.with_name("blobs-aside")
    blobs.rename(aside)
    blobs.write_text("a file where the blob folder should be")  # a mount gone wrong
    try:
        r = client.get("/ready")
        assert failed_checks(r) == ["blob store"]
        assert r.get_json()["issue"][0]["diagnostics"].startswith("blob store: ")
        assert client.get("/health").status_code == 200  # alive, only not ready
    finally:
        blobs.unlink()
        aside.rename(blobs)
    assert client.get("/ready").status_code == 200


def test_ready_names_the_broker_when_redis_does_not_answer(sender_config):
    from gateway import create_app

    closed = f"redis://127.0.0.1:{free_port()}"
    app = create_app({**sender_config, "redis_url": closed, "queue": "ops-test-ready"})
    app.extensions["gateway"].keys.ensure()
    try:
        client = app.test_client()
        r = client.get("/ready")
        assert failed_checks(r) == ["broker"]
        assert "does not answer" in r.get_json()["issue"][0]["diagnostics"]
        # the other figures are still served; only the queue depth has no sample
        families = metric_families(client.get("/metrics").get_data(as_text=True))
        assert families["records_gateway_queue_depth"] == {}
        assert families["records_gateway_transfers"][("completed",)] == 0
    finally:
        app.extensions["gateway"].close()


@pytest.mark.postgres
def test_ready_names_the_database_when_it_is_gone(sender_config):
    from gateway import create_app

    with throwaway_database("gw_ops") as url:
        app = create_app({**sender_config, "database_url": url})
        app.extensions["gateway"].keys.ensure()
        try:
            client = app.test_client()
            assert client.get("/ready").status_code == 200
            admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
            admin.dispose()
            r = client.get("/ready")
            assert failed_checks(r) == ["database"]
            diagnostics = r.get_json()["issue"][0]["diagnostics"]
            assert diagnostics.startswith("database: postgresql+psycopg://127.0.0.1:5432/")
            assert "does not answer" in diagnostics
        finally:
            app.extensions["gateway"].close()


# --- /metrics and JSON logs after a real transfer ---------------------------------------

def metric_families(exposition: str) -> dict[str, dict[tuple, float]]:
    """name -> {label values: value} for every sample (counters keep their _total)."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(exposition):
        out.setdefault(family.name, {})
        for sample in family.samples:
            key = tuple(v for k, v in sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[key] = sample.value
    return out


@pytest.fixture
def json_logs(sender_config, receiver_config):
    """Both gateways log one JSON object a line."""
    sender_config["log_format"] = receiver_config["log_format"] = "json"


def test_metrics_count_a_real_transfer(json_logs, app, client, operator, processes, sender_config,
                                       receiver_config, tmp_path, claims_for, sign, drop_dir):
    stack = Stack(app, client, operator, processes, sender_config, receiver_config, tmp_path)
    tid = stack.transfer(stack.authorize(claims_for(), sign))
    sent = write_pdfs(drop_dir / tid, count=3)
    # the recipient is down at first: the delivery step is retried
    wait_until(lambda: stack.events("transfer.step.retry"), 60, 0.2, "a delivery retry")
    stack.start_receiver()
    view = stack.wait_state(tid, TERMINAL)
    assert view["state"] == "completed", view["reason"]

    r = client.get("/metrics")
    assert r.status_code == 200 and r.content_type.startswith("text/plain")
    m = metric_families(r.get_data(as_text=True))
    assert m["records_gateway_transfers"][("completed",)] == 1
    assert m["records_gateway_transfers"][("delivering",)] == 0
    assert m["records_gateway_items_total"] == {("pdf-folder",): 3}
    sizes = sum((drop_dir / tid / name).stat().st_size for name in sent.values())
    assert m["records_gateway_item_bytes_total"] == {("pdf-folder",): sizes}
    steps = m["records_gateway_step_duration_seconds_count"]
    for step in ("pending", "pulling", "mapping", "assembling", "delivering", "awaiting_receipt"):
        assert steps[(("ok", step))] == 1, steps
    retries = len(stack.events("transfer.step.retry"))
    assert steps[("error", "delivering")] == retries  # each retry was a failed attempt
    assert m["records_gateway_step_retries_total"] == {("delivering",): retries}
    assert m["records_gateway_delivery_latency_seconds_count"][()] == 1
    with app.extensions["gateway"].db.session() as s:
        created, completed = s.execute(text("SELECT created_at, completed_at FROM transfers")).one()
    latency = m["records_gateway_delivery_latency_seconds_sum"][()]
    assert latency == pytest.approx((_dt(completed) - _dt(created)).total_seconds(), abs=1e-3)
    assert m["records_gateway_queue_depth"][("records-gateway",)] >= 0
    assert m["records_gateway_dead_letters"][()] == 0
    assert m["records_gateway_cases"][("open",)] == 0
    # a second scrape reads only new events: the same figures, not twice the figures
    again = metric_families(client.get("/metrics").get_data(as_text=True))
    assert again["records_gateway_step_duration_seconds_count"] == steps

    # JSON logs: every line of both gateways' processes parses, the transfer's lines carry
    # its id, and the synthetic patient is in none of them
    worker_log = stack.worker.log_path.read_text()
    receiver_log = stack.receiver.log_path.read_text()
    lines = [json.loads(line) for line in (worker_log + receiver_log).splitlines() if line]
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    moved = [line for line in lines if line.get("transfer_id") == tid]
    assert any("-> completed" in line["message"] for line in moved), moved
    assert {line["logger"] for line in moved} >= {"gateway.engine.transfers"}
    for word in PATIENT_TEXT:
        assert word not in worker_log and word not in receiver_log, word


def _dt(value):
    from datetime import datetime, timezone

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def test_metrics_can_ask_for_a_token_or_be_off(sender_config):
    from gateway import create_app

    app = create_app({**sender_config, "metrics_token": "scrape-secret-1"})
    try:
        client = app.test_client()
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret-1"})
        assert r.status_code == 200 and "records_gateway_transfers" in r.get_data(as_text=True)
    finally:
        app.extensions["gateway"].close()
    app = create_app({**sender_config, "metrics_enabled": False})
    try:
        assert app.test_client().get("/metrics").status_code == 404
    finally:
        app.extensions["gateway"].close()


# --- records-gateway doctor -------------------------------------------------------------

@pytest.fixture
def tls_receiver(processes, receiver_config, tmp_path):
    """A receiving gateway serving HTTPS with a certificate of its own CA; yields its URL,
    the CA that signed it and another CA."""
    ca_key, ca_cert = _ca("Doctor test CA")
    folder = tmp_path / "pki"
    folder.mkdir()
    cert, key = _write(folder, "center", *_issue(ca_key, ca_cert, "center.test", _server_auth(),
                                                 _loopback_san()))
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(_pem(ca_cert))
    other_file = folder / "other-ca.pem"
    other_file.write_bytes(_pem(_ca("Someone else's CA")[1]))
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    proc = processes({**receiver_config, "port": port, "base_url": url,
                      "tls_cert_file": str(cert), "tls_key_file": str(key)},
                     tmp_path, "tls-receiver", "serve", "--receive")

    def up():
        assert proc.proc.poll() is None, proc.log_path.read_text()[-2000:]
        try:
            return requests.get(f"{url}/health", verify=str(ca_file), timeout=1).ok
        except requests.RequestException:
            return False

    wait_until(up, 30, 0.2, "the TLS receiver")
    return {"url": url, "ca": ca_file, "other_ca": other_file}


def _server_auth():
    from cryptography.x509.oid import ExtendedKeyUsageOID

    return ExtendedKeyUsageOID.SERVER_AUTH


def _loopback_san():
    import ipaddress

    from cryptography import x509

    return [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def doctor(config: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / f"doctor-{len(list(tmp_path.glob('doctor-*')))}.json"
    path.write_text(json.dumps(config))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
           "GATEWAY_CONFIG_FILE": str(path)}
    return subprocess.run([sys.executable, "-m", "gateway", "doctor", "--timeout", "5"], env=env,
                          capture_output=True, text=True, timeout=120)


def lines_by_check(stdout: str) -> dict[str, str]:
    """check name -> "ok" or "FAIL", from lines "ok   name: detail"."""
    out = {}
    for line in stdout.splitlines():
        status, _, rest = line.partition(" ")
        out[rest.strip().split(":", 1)[0]] = status
    return out


def test_doctor_all_ok_on_a_good_installation(app, sender_config, tls_receiver, tmp_path):
    center = {**sender_config["peers"]["center"], "base_url": tls_receiver["url"],
              "ca_file": str(tls_receiver["ca"])}
    done = doctor({**sender_config, "peers": {"center": center}}, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert lines_by_check(done.stdout) == {name: "ok" for name in (
        "configuration", "keys", "blob key", "patient secret", "database", "broker",
        "blob store", "source fax", "source records", "peer center")}
    assert all(line.startswith("ok   ") for line in done.stdout.splitlines())
    assert sender_config["blob_key"] not in done.stdout + done.stderr


def test_doctor_names_an_unreachable_source_and_a_peer_with_the_wrong_ca(
        app, sender_config, tls_receiver, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}/fhir"
    sources = {**sender_config["sources"],
               "ehr": {"kind": "fhir-rest", "organization": "org-test-hospital",
                       "endpoint": closed, "options": {"base_url": closed}}}
    center = {**sender_config["peers"]["center"], "base_url": tls_receiver["url"],
              "ca_file": str(tls_receiver["other_ca"])}
    done = doctor({**sender_config, "sources": sources, "peers": {"center": center}}, tmp_path)
    assert done.returncode == 1
    checks = lines_by_check(done.stdout)
    assert {name for name, status in checks.items() if status == "FAIL"} == {"source ehr",
                                                                             "peer center"}
    assert len(checks) == len(done.stdout.splitlines()) == 11  # one line a check
    peer_line = next(line for line in done.stdout.splitlines() if "peer center" in line)
    assert "certificate verify failed" in peer_line and str(tls_receiver["other_ca"]) in peer_line
    assert "Traceback" not in done.stderr + done.stdout
    assert sender_config["blob_key"] not in done.stdout + done.stderr


def test_doctor_stops_at_a_configuration_that_does_not_load(tmp_path):
    done = doctor({"data_dir": str(tmp_path / "d"), "port": "not a port"}, tmp_path)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [done.stdout.splitlines()[0]]
    assert done.stdout.startswith("FAIL configuration: setting port")
    assert "Traceback" not in done.stderr



def test_log_lines_carry_the_ids_of_the_block_they_are_logged_in():
    import io
    import logging

    from gateway.runtime.logs import ContextIds, JsonFormatter, TextFormatter, log_context

    json_out, text_out = io.StringIO(), io.StringIO()
    logger = logging.getLogger("tests.operations.ids")
    logger.propagate, logger.level = False, logging.INFO
    for stream, formatter in ((json_out, JsonFormatter()), (text_out, TextFormatter())):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        handler.addFilter(ContextIds())
        logger.addHandler(handler)
    with log_context(case_id="case-1"):
        with log_context(transfer_id="t-1"):
            logger.info("inner %d", 1)
        logger.warning("case only")
    logger.info("neither")
    lines = [json.loads(line) for line in json_out.getvalue().splitlines()]
    assert [(x["message"], x.get("case_id"), x.get("transfer_id")) for x in lines] == [
        ("inner 1", "case-1", "t-1"), ("case only", "case-1", None), ("neither", None, None)]
    assert lines[1]["level"] == "WARNING" and lines[0]["logger"] == "tests.operations.ids"
    text_lines = text_out.getvalue().splitlines()
    assert text_lines[0].endswith("inner 1 [transfer_id=t-1 case_id=case-1]")
    assert text_lines[2].endswith("neither")


def queue_depth_after_one_message(app) -> float:
    """Enqueue one step with no worker running; the depth /metrics reports."""
    from gateway.engine.transfers import enqueue

    client = app.test_client()
    before = metric_families(client.get("/metrics").get_data(as_text=True))
    queue = app.extensions["gateway"].settings.queue
    assert before["records_gateway_queue_depth"] == {(queue,): 0}
    enqueue("0" * 32, "pending")  # a transfer that does not exist: nothing would run
    after = metric_families(client.get("/metrics").get_data(as_text=True))
    return after["records_gateway_queue_depth"][(queue,)]


def test_queue_depth_counts_the_embedded_brokers_messages(app):
    assert queue_depth_after_one_message(app) == 1


@pytest.mark.redis
def test_queue_depth_counts_the_redis_queue(sender_config):
    import redis

    from gateway import create_app
    from tests.helpers import REDIS_URL

    queue = f"ops-test-{os.getpid()}-{free_port()}"  # ours alone on the shared server
    app = create_app({**sender_config, "redis_url": REDIS_URL, "queue": queue})
    try:
        assert queue_depth_after_one_message(app) == 1
    finally:
        app.extensions["gateway"].close()
        server = redis.Redis.from_url(REDIS_URL)
        server.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        server.close()
