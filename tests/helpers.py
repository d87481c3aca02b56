"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import requests

ISSUER = "https://esign.test.invalid"
SENDER_ORG, RECEIVER_ORG = "org-test-hospital", "org-test-center"
PG_ADMIN = os.environ.get("GATEWAY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_slice() -> range:
    """This test process's own ports: below the kernel's ephemeral range, where no outgoing
    connection (a pooled database socket, say) can hold a port a server is about to listen
    on, and split between the xdist workers so two never hand out the same one. They start
    above 10080, the highest port browsers refuse to open (ERR_UNSAFE_PORT)."""
    low, high = 11000, _ephemeral_floor()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    index = int(worker) % count if worker.isdigit() else 0
    size = (high - low) // count
    return range(low + index * size, low + (index + 1) * size)


_PORTS = _port_slice()
_next_port = [_PORTS.start + os.getpid() % len(_PORTS)]


def free_port() -> int:
    """A loopback port nothing holds now, never handed out twice by one process while it
    has others left (a server started later may still be on its way to binding one)."""
    for _ in range(len(_PORTS)):
        port = _next_port[0]
        _next_port[0] = _PORTS.start + (port + 1 - _PORTS.start) % len(_PORTS)
        with socket.socket() as s:  # no SO_REUSEADDR: a port in TIME_WAIT is passed over too
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {_PORTS.start}-{_PORTS.stop - 1}")


def wait_until(check, timeout: float = 30, interval: float = 0.1, what: str = "condition"):
    """Poll `check` until it returns a truthy value (returned) or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class GatewayProcess:
    """A real `records-gateway` process (serve or worker) with its own config file."""

    def __init__(self, config: dict, workdir: Path, name: str):
        self.config, self.name = config, name
        self.config_file = workdir / f"{name}.json"
        self.config_file.write_text(json.dumps(config, default=str))
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
                    "GATEWAY_CONFIG_FILE": str(self.config_file)}

    def start(self, *args: str) -> "GatewayProcess":
        self.log = open(self.log_path, "ab")
        # its own process group: stopping it also stops its pool and beat children
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", *args], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def wait_http(self, timeout: float = 30) -> "GatewayProcess":
        url = f"http://127.0.0.1:{self.config['port']}/health"

        def up():
            assert self.proc.poll() is None, f"{self.name} exited: {self.log_path.read_text()[-2000:]}"
            try:
                return requests.get(url, timeout=1).ok
            except requests.RequestException:
                return False

        try:
            wait_until(up, timeout, what=f"{self.name} to answer /health")
        except AssertionError:  # never ready: not left running behind the failed fixture
            self.stop(grace=1)
            raise
        return self

    def _signal_group(self, sig) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # the group id is the PID we started
        except ProcessLookupError:
            pass

    def kill(self, sig=signal.SIGKILL) -> None:
        """Kill it and its children at once (a crash: nothing gets to clean up)."""
        if self.proc:
            self._signal_group(sig)
            self.proc.wait(15)

    def stop(self, grace: float = 15) -> None:
        """SIGTERM, up to `grace` seconds to finish (a worker hands back the messages
        it holds, logs are flushed), then SIGKILL for whatever of the group is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)
        self.proc.wait()
        self.log.close()


def stop_all(procs, grace: float = 1) -> None:
    """A test's teardown: every process asked to stop at once, `grace` seconds for all
    together, then killed (nothing after a test depends on a clean exit, and stopping
    them one by one cost up to 15 s each)."""
    running = [p for p in procs if p.proc is not None and p.proc.poll() is None]
    for p in running:
        p._signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in running:
        try:
            p.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        p.stop(grace=0)


def make_token(app, role: str, name: str | None = None) -> str:
    from gateway.trust.tokens import create_token

    svc = app.extensions["gateway"]
    with svc.db.session() as s:
        _, plain = create_token(s, name or f"test-{role}", role, actor="test")
    return plain


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}



def write_pdfs(folder: Path, count: int = 3, patient: dict | None = None) -> dict[str, str]:
    """Synthetic PDFs, written elsewhere and renamed into place; returns sha256 -> name."""
    import hashlib

    from gateway.cli.demo import make_pdf

    staging = folder.parent / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    patient = patient or {"name": {"family": "Testperson", "given": ["Avery"]}, "birthDate": "1970-01-01"}
    out = {}
    for n in range(count):
        path = staging / f"document-{n}.pdf"
        make_pdf(path, f"Synthetic report {n}", [f"line {n}", "synthetic"], patient)
        out[hashlib.sha256(path.read_bytes()).hexdigest()] = path.name
    staging.rename(folder)
    return out


@contextlib.contextmanager
def throwaway_database(prefix: str = "gw_test"):
    """Create a PostgreSQL database on the test server; yield its URL; drop it."""
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        raise AssertionError(f"PostgreSQL is not reachable at {PG_ADMIN} (tests/run.sh starts it): "
                             f"{type(exc).__name__}") from None
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


GENERATED = {"60591-5", "completeness-manifest"}  # the patient summary PDF and the manifest


def record_binaries(bundle: dict) -> list[dict]:
    """The Binary resources of the records in a bundle (not the summary PDF or the
    manifest the sender adds)."""
    resources = [e["resource"] for e in bundle["entry"]]
    generated = {d["content"][0]["attachment"]["url"] for d in resources
                 if d["resourceType"] == "DocumentReference"
                 and d["type"]["coding"][0]["code"] in GENERATED}
    return [e["resource"] for e in bundle["entry"]
            if e["resource"]["resourceType"] == "Binary" and e["fullUrl"] not in generated]


@contextlib.contextmanager
def racing_the_write(row_type, row_id, action, grace: float = 1.0):
    """The first time a session is about to write a change to that row, run `action` in
    another thread and give it `grace` seconds to commit: a commit landing between a
    read and the write that depends on it. Yields the list the thread goes in; joins it
    at the end (a writer that holds the row makes the thread wait for its commit)."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    started, errors = [], []

    def run():
        try:
            action()
        except BaseException as exc:  # raised in the test's thread at the end
            errors.append(exc)

    def before_flush(session, _context, _instances):
        if not started and any(isinstance(o, row_type) and o.id == row_id for o in session.dirty):
            thread = threading.Thread(target=run)
            started.append(thread)
            thread.start()
            thread.join(timeout=grace)

    event.listen(Session, "before_flush", before_flush)
    try:
        yield started
    finally:
        event.remove(Session, "before_flush", before_flush)
        for thread in started:
            thread.join(timeout=60)
            assert not thread.is_alive(), "the racing commit never got through"
    if errors:
        raise errors[0]
