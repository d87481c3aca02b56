"""The deployed topology as processes on this machine: the API under gunicorn with
deploy/gunicorn.conf.py (two gunicorn workers), two Celery worker processes, one beat,
and a receiving gateway, also under gunicorn, against the real PostgreSQL (a throwaway
database) and Redis (a queue of its own). One transfer goes end to end, every call over
HTTP, and comes back with a verified receipt; every process is stopped by its PID."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from gateway.storage.models import AuditEvent

from tests.helpers import REDIS_URL, GatewayProcess, bearer, make_token, wait_until, write_pdfs
from tests.test_transfer_flow import binaries, cli

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.postgres, pytest.mark.redis]


class Gunicorn(GatewayProcess):
    """`gunicorn -c deploy/gunicorn.conf.py gateway.wsgi:app` on the config's port, plain
    HTTP on loopback (TLS is the terminator's, deploy/compose.yaml)."""

    def start(self, *args: str) -> "Gunicorn":
        self.env.update(GATEWAY_BIND=f"127.0.0.1:{self.config['port']}", GATEWAY_HTTP_WORKERS="2")
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py"),
             "gateway.wsgi:app"], env=self.env, cwd=self.config_file.parent, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def children(self) -> list[int]:
        text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [int(pid) for pid in text.split()]


@pytest.fixture
def started():
    """Processes of the topology; each stopped by its PID (and process group) at teardown."""
    procs: list[GatewayProcess] = []
    yield procs
    for proc in reversed(procs):
        proc.stop()


def test_api_two_workers_beat_and_a_receiver_deliver_a_transfer(
        started, sender_config, receiver_config, tmp_path, claims_for, sign, drop_dir, pg_url):
    from gateway import create_app
    from gateway.engine.faxes import ensure_cover_key

    sender_config.update(redis_url=REDIS_URL, database_url=pg_url,
                         queue=f"test-topology-{uuid.uuid4().hex[:8]}")
    sender_config["sources"].pop("fax")  # the drop folder is enough here
    # keys, the schema and an operator token, made once as `records-gateway init` would
    app = create_app(sender_config)
    svc = app.extensions["gateway"]
    svc.keys.ensure()
    ensure_cover_key(svc.settings.keys_dir)
    (tmp_path / "sender-jwks.json").write_text(json.dumps(svc.keys.jwks()))
    operator = bearer(make_token(app, "operator"))

    # the receiving center: its tokens, then its API under gunicorn
    rc = tmp_path / "receiver-cli.json"
    rc.write_text(json.dumps(receiver_config))
    cli(rc, "init")
    (tmp_path / "sender" / "peer-token").write_text(
        cli(rc, "token", "create", "--name", "test-hospital", "--role", "peer"))
    staff = bearer(cli(rc, "token", "create", "--name", "staff", "--role", "recipient"))

    def start(proc: GatewayProcess, *args: str) -> GatewayProcess:
        started.append(proc)
        return proc.start(*args)

    receiver = start(Gunicorn(receiver_config, tmp_path, "receiver")).wait_http()
    api = start(Gunicorn(sender_config, tmp_path, "api")).wait_http()
    workers = [start(GatewayProcess(sender_config, tmp_path, f"worker-{n}"), "worker", "--pool",
                     "prefork", "--concurrency", "1") for n in (1, 2)]
    beat = start(GatewayProcess(sender_config, tmp_path, "beat"), "worker", "--beat",
                 "--concurrency", "1")
    assert len(api.children()) == 2  # gunicorn's master and its two workers

    url = f"http://127.0.0.1:{sender_config['port']}"
    r = requests.post(f"{url}/authorizations", json={"jws": sign(claims_for())}, headers=operator,
                      timeout=30)
    assert r.status_code == 201, r.text
    r = requests.post(f"{url}/transfers", json={"authorization": r.json()["id"],
                                                 "sources": ["records"], "recipient": "center"},
                      headers=operator, timeout=30)
    assert r.status_code == 202, r.text
    tid = r.json()["id"]
    sent = write_pdfs(drop_dir / tid, count=2)

    def finished():
        view = requests.get(f"{url}/transfers/{tid}", headers=operator, timeout=10).json()
        return view["state"] in {"completed", "failed", "cancelled"} and view

    view = wait_until(finished, 180, 0.3, "the transfer to finish")
    assert view["state"] == "completed", view["reason"]
    assert view["items"] == {"mapped": 2}
    assert view["receipt"]["status"] == "accepted" and view["receipt"]["iss"] == "org-test-center"
    assert view["receipt"]["sha256"] == view["bundle"]["sha256"]

    center = receiver_config["base_url"]
    [received] = requests.get(f"{center}/inbox", headers=staff, timeout=10).json()["received"]
    assert received["sha256"] == view["bundle"]["sha256"]
    bundle = requests.get(f"{center}/inbox/{received['id']}/bundle", headers=staff, timeout=10).json()
    assert binaries(bundle) == set(sent)

    with svc.db.session() as s:
        verified = s.scalars(select(AuditEvent).filter_by(type="transfer.receipt.verified")).all()
        loaded = s.scalars(select(AuditEvent).filter_by(type="admin.configuration.loaded")).all()
    assert [e.transfer_id for e in verified] == [tid]
    assert sorted(e.actor for e in loaded) == ["worker"] * 3  # two workers and the beat
    for proc in [api, receiver, beat, *workers]:
        assert proc.proc.poll() is None, f"{proc.name} exited: {proc.log_path.read_text()[-2000:]}"
    # gunicorn stops on SIGTERM to its master, its workers with it
    children = api.children()
    os.kill(api.proc.pid, signal.SIGTERM)
    assert api.proc.wait(30) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)
    svc.close()
