"""The deployed topology as processes on this machine: the API under gunicorn with
deploy/gunicorn.conf.py (two gunicorn workers), two Celery worker processes, one beat,
the standing DICOM receiver (`records-gateway dicom-receiver`), and a receiving gateway,
also under gunicorn, behind nginx with deploy/nginx/gateway.conf (TLS in front, a client
certificate required), against the real PostgreSQL (a throwaway database) and Redis (a
queue of its own). One transfer goes end to end, every call over HTTP, and comes back
with a verified receipt: a records folder, and a study pulled from a real Orthanc by
C-MOVE through the receiver, the pull running on a worker (not the receiver, which no
worker needs for a port). Every process is stopped by its PID."""
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

from gateway.storage.models import AuditEvent, DicomArrival, TransferSource
from gateway.trust.authorizations import example_claims
from tests.dicom.dicom_peers import Modality, Orthanc
from tests.dicom.dicom_studies import make_study
from tests.helpers import (
    ISSUER,
    RECEIVER_ORG,
    REDIS_URL,
    SENDER_ORG,
    GatewayProcess,
    bearer,
    free_port,
    make_token,
    stop_all,
    wait_until,
    write_pdfs,
)
from tests.test_tls import pki  # noqa: F401  (the fixture: a CA, the center's and a hospital's certificates)
from tests.test_transfer_flow import binaries, cli

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.postgres, pytest.mark.redis]


class Gunicorn(GatewayProcess):
    """`gunicorn -c deploy/gunicorn.conf.py gateway.wsgi:app`, plain HTTP on loopback
    (TLS is the terminator's, deploy/compose.yaml), on the config's port or `port`."""

    def __init__(self, config: dict, workdir: Path, name: str, port: int | None = None):
        super().__init__(config, workdir, name)
        self.port = port or config["port"]

    def wait_http(self, timeout: float = 30) -> "Gunicorn":
        def up():
            assert self.proc.poll() is None, f"{self.name} exited: {self.log_path.read_text()[-2000:]}"
            try:
                return requests.get(f"http://127.0.0.1:{self.port}/health", timeout=1).ok
            except requests.RequestException:
                return False

        wait_until(up, timeout, what=f"{self.name} to answer /health")
        return self

    def start(self, *args: str) -> "Gunicorn":
        self.env.update(GATEWAY_BIND=f"127.0.0.1:{self.port}", GATEWAY_HTTP_WORKERS="2")
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py"),
             "gateway.wsgi:app"], env=self.env, cwd=self.config_file.parent, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def children(self) -> list[int]:
        return _children(self.proc.pid)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _processes() -> list[tuple[int, str]]:
    """(parent PID, command line) of every process."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        out.append((int(stat.rpartition(")")[2].split()[1]), cmd))
    return out


class Nginx(GatewayProcess):
    """nginx with deploy/nginx/gateway.conf, its secrets and upstream put where this test
    has them, in a prefix of its own (no system configuration, no port 80)."""

    def __init__(self, workdir: Path, port: int, upstream: int, pki: dict):
        self.name, self.proc = "nginx", None
        self.prefix = workdir / "nginx"
        self.prefix.mkdir()
        self.log_path = self.prefix / "error.log"
        self.access_log = self.prefix / "access.log"
        site = (ROOT / "deploy" / "nginx" / "gateway.conf").read_text()
        for old, new in {"listen 8443": f"listen 127.0.0.1:{port}",
                         "/run/secrets/tls.crt": pki["server"][0], "/run/secrets/tls.key": pki["server"][1],
                         "/run/secrets/ca.pem": pki["ca"], "http://api:8080": f"http://127.0.0.1:{upstream}",
                         "/dev/stdout": self.access_log}.items():
            assert old in site, old
            site = site.replace(old, str(new))
        (self.prefix / "gateway.conf").write_text(site)
        temp = "\n".join(f"{kind}_temp_path {self.prefix}/{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(f"pid {self.prefix}/nginx.pid;\nerror_log {self.log_path};\n"
                             f"worker_processes 1;\nevents {{}}\nhttp {{\n{temp}\n"
                             f"include {self.prefix}/gateway.conf;\n}}\n")

    def start(self) -> "Nginx":
        check = subprocess.run(["nginx", "-t", "-p", str(self.prefix), "-c", str(self.conf)],
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        self.log = open(self.prefix / "stdout.log", "ab")
        self.proc = subprocess.Popen(["nginx", "-p", str(self.prefix), "-c", str(self.conf),
                                      "-g", "daemon off;"], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self


@pytest.fixture
def receiver_url() -> str:
    """The center as the hospital sees it: nginx, HTTPS."""
    return f"https://127.0.0.1:{free_port()}"


@pytest.fixture
def sender_config(sender_config, pki) -> dict:
    center = {**sender_config["peers"]["center"], "ca_file": str(pki["ca"]),
              "client_cert_file": str(pki["client"][0]), "client_key_file": str(pki["client"][1])}
    return {**sender_config, "peers": {"center": center}}


@pytest.fixture
def pacs(tmp_path):
    """A real Orthanc holding one small study, whose move destination is the gateway's
    standing DICOM receiver."""
    port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", [Modality("RECORDSGW-RX", port),
                                             Modality("GATEWAY", free_port())]).start()
    study = make_study(tmp_path / "study", 12, 2, patient_id="PAT-TOPO", rows=64, cols=64)
    orthanc.upload(study.files)
    yield orthanc, study, port
    orthanc.stop()


@pytest.fixture
def started():
    """Processes of the topology; each stopped by its PID (and process group) at teardown."""
    procs: list[GatewayProcess] = []
    yield procs
    stop_all(procs)


def test_api_two_workers_beat_and_a_receiver_deliver_a_transfer(
        started, sender_config, receiver_config, tmp_path, sign, drop_dir, pg_url, pki, pacs):
    from gateway import create_app
    from gateway.engine.faxes import ensure_cover_key

    orthanc, study, receiver_port = pacs
    sender_config.update(redis_url=REDIS_URL, database_url=pg_url,
                         queue=f"test-topology-{uuid.uuid4().hex[:8]}")
    sender_config["sources"].pop("fax")  # the drop folder, and the PACS by C-MOVE
    pacs_endpoint = f"dicom://ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    sender_config["sources"]["pacs"] = {
        "kind": "dicom", "organization": SENDER_ORG, "data_class": "imaging",
        "endpoint": pacs_endpoint,
        "options": {"host": "127.0.0.1", "port": orthanc.dicom_port, "ae_title": "ORTHANC",
                    "calling_aet": "GATEWAY", "retrieve": "receiver"}}
    sender_config["dicom_receiver"] = {"ae_title": "RECORDSGW-RX", "port": receiver_port,
                                       "health_port": free_port()}
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

    # the center: gunicorn on loopback, nginx in front on the port its URL names
    behind = free_port()
    receiver = start(Gunicorn(receiver_config, tmp_path, "receiver", port=behind)).wait_http()
    nginx = start(Nginx(tmp_path, receiver_config["port"], behind, pki))
    center = receiver_config["base_url"]

    def tls_up():
        assert nginx.proc.poll() is None, nginx.log_path.read_text()[-2000:]
        try:
            return requests.get(f"{center}/health", verify=str(pki["ca"]), cert=pki["client"],
                                timeout=2).ok
        except requests.ConnectionError:
            return False

    wait_until(tls_up, 30, what="nginx in front of the center")
    try:  # no client certificate: nginx refuses before the gateway sees anything
        stranger = requests.get(f"{center}/health", verify=str(pki["ca"]), timeout=5).status_code
    except requests.exceptions.SSLError:
        stranger = "refused"
    assert stranger in (400, "refused")
    api = start(Gunicorn(sender_config, tmp_path, "api")).wait_http()
    workers = [start(GatewayProcess(sender_config, tmp_path, f"worker-{n}"), "worker", "--pool",
                     "prefork", "--concurrency", "1") for n in (1, 2)]
    beat = start(GatewayProcess(sender_config, tmp_path, "beat"), "worker", "--beat",
                 "--concurrency", "1")
    dicom = start(GatewayProcess(sender_config, tmp_path, "dicom-receiver"), "dicom-receiver")
    health = f"http://127.0.0.1:{sender_config['dicom_receiver']['health_port']}/health"

    def receiving():
        assert dicom.proc.poll() is None, dicom.log_path.read_text()[-2000:]
        try:
            return requests.get(health, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_until(receiving, 60, what="the DICOM receiver's /health")
    assert len(api.children()) == 2  # gunicorn's master and its two workers

    def task_processes():  # the prefork children (forked once a worker starts) and the beat
        return sorted([*[c for w in workers for c in _children(w.proc.pid)], beat.proc.pid])

    def sandboxes():  # the process each document sandbox (fork server) serves, by PID
        tasks = set(task_processes())
        return sorted(ppid for ppid, cmd in _processes()
                      if "connectors.fax.zygote" in cmd and ppid in tasks)

    # each prefork child and the beat started their own before any task came; the workers'
    # parents (which run no task) none
    wait_until(lambda: len(sandboxes()) == 3, 60, 0.2, "a document sandbox in each worker process")
    assert sandboxes() == task_processes()

    url = f"http://127.0.0.1:{sender_config['port']}"
    claims = example_claims(
        ISSUER, f"auth-{uuid.uuid4().hex[:12]}",
        patient={"name": {"family": "Doe", "given": ["Jane"]}, "birthDate": "1970-01-01",
                 "identifiers": [{"system": "urn:oid:2.16.840.1.113883.19.5",
                                  "value": study.patient_id}]},
        disclosers=[{"id": SENDER_ORG, "name": "Test Hospital", "endpoints": [
            {"type": "pdf-folder", "address": str(drop_dir)},
            {"type": "dicom", "address": pacs_endpoint}]}],
        recipient={"id": RECEIVER_ORG, "name": "Test Center",
                   "endpoint": {"type": "gateway", "address": receiver_config["base_url"]}})
    r = requests.post(f"{url}/authorizations", json={"jws": sign(claims)}, headers=operator,
                      timeout=30)
    assert r.status_code == 201, r.text
    r = requests.post(f"{url}/transfers", json={"authorization": r.json()["id"],
                                                 "sources": ["records", "pacs"],
                                                 "recipient": "center"},
                      headers=operator, timeout=30)
    assert r.status_code == 202, r.text
    tid = r.json()["id"]

    def pulling_pacs():  # the process holding the PACS pull's lease: host:PID:claim
        with svc.db.session() as s:
            owner = s.scalar(select(TransferSource.lease_owner).filter_by(
                transfer_id=tid, name="pacs"))
        return owner and int(owner.split(":")[1])

    puller = wait_until(pulling_pacs, 120, 0.02, "a worker to take the PACS pull")
    sent = write_pdfs(drop_dir / tid, count=2)

    def finished():
        view = requests.get(f"{url}/transfers/{tid}", headers=operator, timeout=10).json()
        return view["state"] in {"completed", "failed", "cancelled"} and view

    view = wait_until(finished, 240, 0.3, "the transfer to finish")
    assert view["state"] == "completed", view["reason"]
    assert view["items"] == {"mapped": 2 + 12 + 1}  # the PDFs, the instances, the study
    assert view["receipt"]["dicomInstances"] == {study.study_uid: 12}
    # the PACS pull ran in a worker's process group (the beat's process is a worker too),
    # and its instances came through the receiver (stored there, once each)
    assert os.getpgid(puller) in {w.proc.pid for w in [*workers, beat]}
    with svc.db.session() as s:
        took = s.scalars(select(DicomArrival).filter_by(transfer_id=tid)).all()
    assert sorted(a.detail["sop_instance_uid"] for a in took) == sorted(study.sop_uids)
    assert view["receipt"]["status"] == "accepted" and view["receipt"]["iss"] == "org-test-center"
    assert view["receipt"]["sha256"] == view["bundle"]["sha256"]

    tls = {"verify": str(pki["ca"]), "cert": pki["client"], "timeout": 10}
    [received] = requests.get(f"{center}/inbox", headers=staff, **tls).json()["received"]
    assert received["sha256"] == view["bundle"]["sha256"]
    bundle = requests.get(f"{center}/inbox/{received['id']}/bundle", headers=staff, **tls).json()
    assert binaries(bundle) == set(sent)

    with svc.db.session() as s:
        verified = s.scalars(select(AuditEvent).filter_by(type="transfer.receipt.verified")).all()
        loaded = s.scalars(select(AuditEvent).filter_by(type="admin.configuration.loaded")).all()
    assert [e.transfer_id for e in verified] == [tid]
    # two workers, the beat and the DICOM receiver
    assert sorted(e.actor for e in loaded) == ["dicom-receiver"] + ["worker"] * 3
    # the bundle came through nginx; its access log names paths only
    access = nginx.access_log.read_text()
    assert '"POST /fhir" 200' in access and "?" not in access
    for proc in [api, receiver, nginx, beat, dicom, *workers]:
        assert proc.proc.poll() is None, f"{proc.name} exited: {proc.log_path.read_text()[-2000:]}"
    # gunicorn stops on SIGTERM to its master, its workers with it
    children = api.children()
    os.kill(api.proc.pid, signal.SIGTERM)
    assert api.proc.wait(30) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)
    # the DICOM receiver stops on SIGTERM, gracefully
    os.kill(dicom.proc.pid, signal.SIGTERM)
    assert dicom.proc.wait(60) == 0
    svc.close()
