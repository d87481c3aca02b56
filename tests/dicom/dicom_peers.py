"""Real DICOM peers for tests and benchmarks: Orthanc and dcmtk's dcmqrscp, each started
as a plain process on free loopback ports with its own config and data directory, ready
when it answers (GET /system, C-ECHO), stopped by its PID.

Imported by tests/dicom/conftest.py and by bench/dicom_retrieve.py; nothing here is
part of the gateway.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.helpers import free_port  # noqa: F401  (re-exported for the DICOM tests)

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
DCMTK_BIN = "/usr/bin"  # pynetdicom ships its own `storescu`/`movescu` apps: never use PATH


def dcmtk(tool: str) -> str:
    return os.path.join(DCMTK_BIN, tool)


def peer_env() -> dict:
    """Environment for Orthanc and dcmtk tools: without TCP_NODELAY they wait ~45 ms a PDU."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def _echo(host: str, port: int, aet: str, calling: str = "ECHOSCU") -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 2
    assoc = ae.associate(host, port, ae_title=aet)
    try:
        return assoc.is_established and assoc.send_c_echo().Status == 0
    finally:
        if assoc.is_established:
            assoc.release()


def _wait(ready, proc: subprocess.Popen, what: str, log: Path, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if ready():
                return
        except Exception:
            pass
        time.sleep(0.05)
    _stop(proc, timeout=5)  # never ready: not left running behind the failed fixture
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Modality:
    """A DICOM node the PACS may send to (its C-MOVE destinations, its allowed callers)."""

    aet: str
    port: int
    host: str = "127.0.0.1"


@dataclass
class Orthanc:
    """An Orthanc process with its own storage; `modalities` are the AEs it trusts."""

    workdir: Path
    modalities: list[Modality] = field(default_factory=list)
    aet: str = "ORTHANC"
    dicomweb: bool = True
    extra: dict = field(default_factory=dict)
    host: str = "127.0.0.1"
    dicom_port: int = 0
    http_port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self) -> "Orthanc":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dicom_port = self.dicom_port or free_port()
        self.http_port = self.http_port or free_port()
        storage = self.workdir / "storage"
        storage.mkdir(exist_ok=True)
        plugins = [DICOMWEB_PLUGIN] if self.dicomweb and os.path.exists(DICOMWEB_PLUGIN) else []
        config = {
            "Name": "test-orthanc",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "Plugins": plugins,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomModalities": {
                m.aet.lower(): [m.aet, m.host, m.port] for m in self.modalities
            },
            "SyncStorageArea": False,
            "SaveJobs": False,
            "StorageAccessOnFind": "Never",
            "StableAge": 3600,
            "DicomScuTimeout": 120,
            "DicomScpTimeout": 120,
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "MetricsEnabled": False,
            "HttpCompressionEnabled": False,
            "TcpNoDelay": True,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                         "Host": f"{self.host}:{self.http_port}"},
        }
        config.update(self.extra)
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=1))
        log = self.workdir / "orthanc.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=out, stderr=subprocess.STDOUT,
                                         env=peer_env(), cwd=self.workdir)
        _wait(lambda: requests.get(f"{self.url}/system", timeout=2).ok, self.proc, "Orthanc", log)
        return self

    def stop(self) -> None:
        _stop(self.proc)

    def upload(self, files) -> None:
        """Load instances over C-STORE with dcmtk's storescu (the PACS's usual path in)."""
        storescu(self.host, self.dicom_port, self.aet, files)

    def clear(self) -> None:
        for pid in requests.get(f"{self.url}/patients", timeout=30).json():
            requests.delete(f"{self.url}/patients/{pid}", timeout=60).raise_for_status()

    def instance_count(self) -> int:
        return requests.get(f"{self.url}/statistics", timeout=10).json()["CountInstances"]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@dataclass
class Dcmqrscp:
    """dcmtk's dcmqrscp (fork mode: its `-s` mode crashes) with its own index directory."""

    workdir: Path
    modalities: list[Modality] = field(default_factory=list)
    aet: str = "DCMQRSCP"
    host: str = "127.0.0.1"
    port: int = 0
    proc: subprocess.Popen | None = None

    def start(self) -> "Dcmqrscp":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        db = self.workdir / "db"
        db.mkdir(exist_ok=True)
        hosts = "\n".join(f"peer{i} = ({m.aet}, {m.host}, {m.port})"
                          for i, m in enumerate(self.modalities))
        cfg = self.workdir / "dcmqrscp.cfg"
        cfg.write_text(f"""NetworkTCPPort = {self.port}
MaxPDUSize = 16384
MaxAssociations = 32

HostTable BEGIN
{hosts}
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
{self.aet} {db} RW (2000, 4096mb) ANY
AETable END
""")
        log = self.workdir / "dcmqrscp.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([dcmtk("dcmqrscp"), "-c", str(cfg), "--fork"],
                                         stdout=out, stderr=subprocess.STDOUT, env=peer_env(),
                                         cwd=self.workdir, start_new_session=True)
        _wait(lambda: _echo(self.host, self.port, self.aet), self.proc, "dcmqrscp", log)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # fork mode: children serving associations are in the same process group
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _stop(self.proc)

    def upload(self, files) -> None:
        storescu(self.host, self.port, self.aet, files)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def storescu(host: str, port: int, aet: str, files, calling: str = "STORESCU") -> None:
    """Send files with dcmtk's storescu, many per run, one association per run."""
    files = [str(f) for f in files]
    for i in range(0, len(files), 500):
        batch = files[i:i + 500]
        run = subprocess.run(
            [dcmtk("storescu"), "-aet", calling, "-aec", aet, "--no-halt", "--required",
             host, str(port), *batch],
            env=peer_env(), capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            raise RuntimeError(f"storescu failed ({run.returncode}): {run.stderr[-2000:]}")


def movescu(host: str, port: int, aet: str, calling: str, dest: str, listen_port: int,
            outdir: Path, study_uid: str, extra: tuple = ()) -> subprocess.CompletedProcess:
    """dcmtk's movescu as the reference client: retrieve a study into `outdir` (-od)."""
    outdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [dcmtk("movescu"), "-S", "-aet", calling, "-aec", aet, "-aem", dest,
         "+P", str(listen_port), "-od", str(outdir), *extra,
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
         host, str(port)],
        env=peer_env(), capture_output=True, text=True, timeout=900)


def have_peers() -> list[str]:
    """Names of missing peer programs (empty when all are installed)."""
    return [p for p in (ORTHANC, dcmtk("dcmqrscp"), dcmtk("storescu"), dcmtk("movescu"))
            if not os.path.exists(p)]
