"""Benchmark: retrieve a study from Orthanc into the encrypted blob store, against dcmtk.

    python bench/dicom_retrieve.py [--rounds 5] [--keep]

Generates (pydicom, from its CT_small.dcm) a 300-instance 512x512 16-bit CT study
(~158 MB, 3 series), a 2x larger one and a single ~200 MB multi-frame instance; starts
Orthanc (with its DICOMweb plugin) on free ports and loads them with storescu. Then, in
interleaved rounds, it times the same retrieve of the study by
- dcmtk `movescu -od` (the reference: C-MOVE into its own storescp, files on disk);
- our DIMSE path: `DicomConnector` with C-MOVE into our Storage SCP (and C-GET);
- our DICOMweb path: WADO-RS streamed part by part;
each of ours in a fresh process that streams every instance into the gateway's
encrypted blob store (gateway.blobstore: AES-256-GCM in 1 MiB chunks, fsync per blob;
gateway/engine/dicom_sink.py plugs it in) with its per-instance sha256, and reports its wall
time and peak RSS (the whole receiving process, interpreter included). The 2x study and the multi-frame instance are retrieved the same way for
their peak RSS. Orthanc runs with its defaults (TCP_NODELAY=1 in its environment and
dcmtk's, as for every dcmtk tool). Medians are over the rounds; each run starts after
`sync`, so none pays for writing back the previous run's files.

The last line printed is one JSON object: wall_ratio_vs_movescu (the DIMSE path, C-MOVE
or C-GET, whichever was faster; both are given too), wado_ratio_vs_movescu,
peak_rss_mb_study, peak_rss_mb_study_2x, peak_rss_mb_multiframe, the medians in seconds,
and the load average (the machine is shared: other processes' load shows in the ratios,
which penalise our CPU-bound receive more than movescu, which mostly waits).
"""
from __future__ import annotations

import argparse
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


# -- the receiving process ---------------------------------------------------------------
def child(args) -> None:
    """Retrieve one patient's studies into a fresh blob store; print wall and count."""
    import base64
    import types

    from connectors.base import PatientIdentifier, RecordQuery
    from connectors.dicom.connector import DicomConnector

    # The blob store module and its errors only: gateway/__init__.py imports the Flask
    # app (and with it SQLAlchemy, ~55 MB) that a receiving process does not need.
    package = types.ModuleType("gateway")
    package.__path__ = [str(ROOT / "gateway")]
    sys.modules.setdefault("gateway", package)
    from gateway.storage.blobstore import BlobStore, new_master_key

    work = Path(args.workdir)
    store = BlobStore(work / "blobs", base64.b64decode(new_master_key()))

    from gateway.engine.dicom_sink import BlobStoreSink

    sink = BlobStoreSink(store)  # streams each instance into an encrypting blob writer

    opts = {"host": "127.0.0.1", "port": args.dicom_port, "ae_title": "ORTHANC",
            "calling_aet": "GATEWAY", "retrieve": args.method, "sink": sink,
            "parallel": args.parallel}
    if args.method == "move":
        opts.update(scp_port=args.scp_port, scp_host="127.0.0.1")
    if args.method == "wado":
        opts["dicomweb_url"] = args.dicomweb_url
    query = RecordQuery("bench", "bench", identifiers=(PatientIdentifier("mrn", args.patient),))
    start = time.perf_counter()
    with DicomConnector("orthanc", opts, work) as conn:
        records = [r for r in conn.fetch(query) if getattr(r, "kind", "") == "dicom"]
    wall = time.perf_counter() - start
    stored = sum(1 for _ in (work / "blobs").rglob("*") if _.is_file())
    status = Path("/proc/self/status").read_text()
    peak_kb = int(status.split("VmHWM:")[1].split()[0])  # peak RSS since exec
    print(json.dumps({"wall": wall, "instances": len(records), "blobs": stored,
                      "rss_mb": peak_kb / 1024,
                      "complete": all(o.complete for o in conn.outcomes)}))


def run_child(method: str, patient: str, env: dict, ctx: dict, parallel: int = 2) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench-{method}-", dir=ctx["tmp"]))
    os.sync()  # start with no dirty pages from the previous run being written back
    cmd = [sys.executable, __file__, "--child", method, "--patient", patient,
           "--workdir", str(work), "--dicom-port", str(ctx["dicom_port"]),
           "--scp-port", str(ctx["scp_port"]), "--dicomweb-url", ctx["dicomweb_url"],
           "--parallel", str(parallel)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, env=env, timeout=900)
    shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} retrieve failed ({proc.returncode})")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def run_movescu(ctx: dict, study_uid: str) -> dict:
    from tests.dicom.dicom_peers import dcmtk, peer_env

    out = Path(tempfile.mkdtemp(prefix="bench-movescu-", dir=ctx["tmp"]))
    os.sync()
    cmd = [dcmtk("movescu"), "-S", "-aet", "MOVESCU", "-aec", "ORTHANC", "-aem", "MOVESCU",
           "+P", str(ctx["movescu_port"]), "-od", str(out),
           "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
           "127.0.0.1", str(ctx["dicom_port"])]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=peer_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    peak_kb = 0
    while proc.poll() is None:  # its peak RSS, read while it runs (ru_maxrss of a
        try:                    # forked child counts the parent's pages before exec)
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.005)
    wall = time.perf_counter() - start
    count = len(list(out.iterdir()))
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError("movescu failed")
    return {"wall": wall, "instances": count, "rss_mb": peak_kb / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--child")
    parser.add_argument("--patient")
    parser.add_argument("--workdir")
    parser.add_argument("--dicom-port", type=int)
    parser.add_argument("--scp-port", type=int)
    parser.add_argument("--dicomweb-url")
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()
    if args.child:
        args.method = args.child
        return child(args)

    from tests.dicom.dicom_peers import Modality, Orthanc, free_port, have_peers
    from tests.dicom.dicom_studies import make_multiframe, make_study

    missing = have_peers()
    if missing:
        sys.exit(f"missing {', '.join(missing)}: apt-get install orthanc orthanc-dicomweb dcmtk")
    tmp = Path(tempfile.mkdtemp(prefix="dicom-bench-"))
    orthanc = None
    try:
        print("generating studies ...", flush=True)
        study = make_study(tmp / "gen" / "study", 300, 3, patient_id="BENCH-1")
        study2 = make_study(tmp / "gen" / "study2x", 600, 6, patient_id="BENCH-2")
        mframe = make_multiframe(tmp / "gen" / "mf", 200, patient_id="BENCH-3")
        scp_port, movescu_port = free_port(), free_port()
        orthanc = Orthanc(tmp / "orthanc", [Modality("GATEWAY", scp_port),
                                            Modality("MOVESCU", movescu_port)])
        # Orthanc's own defaults otherwise (synchronous C-MOVE, 16 KB PDUs, caches)
        orthanc.start()
        print(f"loading {study.size / 1e6:.0f} + {study2.size / 1e6:.0f} + "
              f"{mframe.size / 1e6:.0f} MB into Orthanc ...", flush=True)
        orthanc.upload(study.files + study2.files + mframe.files)
        ctx = {"tmp": tmp, "dicom_port": orthanc.dicom_port, "scp_port": scp_port,
               "movescu_port": movescu_port, "dicomweb_url": orthanc.dicomweb_url}
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        runs: dict[str, list[dict]] = {"movescu": [], "move": [], "get": [], "wado": []}
        for n in range(args.rounds):
            runs["movescu"].append(run_movescu(ctx, study.study_uid))
            for method in ("move", "get", "wado"):
                runs[method].append(run_child(method, "BENCH-1", env, ctx))
            print(f"round {n + 1}: " + "  ".join(
                f"{k} {v[-1]['wall']:.2f}s/{v[-1]['rss_mb']:.0f}MB" for k, v in runs.items()),
                flush=True)
        for name, r in runs.items():
            assert all(x["instances"] == 300 for x in r), (name, [x["instances"] for x in r])
        big = {m: run_child(m, "BENCH-2", env, ctx) for m in ("move", "wado")}
        mf = {m: run_child(m, "BENCH-3", env, ctx) for m in ("move", "get", "wado")}
        assert all(x["instances"] == 600 for x in big.values())
        assert all(x["instances"] == 1 for x in mf.values())
        med = {k: statistics.median(x["wall"] for x in v) for k, v in runs.items()}
        dimse = min(("move", "get"), key=lambda m: med[m])
        result = {
            # the DIMSE path is C-MOVE or C-GET (issue 4): the faster of the two here
            "wall_ratio_vs_movescu": round(med[dimse] / med["movescu"], 3),
            "dimse_path": {"move": "c-move", "get": "c-get"}[dimse],
            "move_ratio_vs_movescu": round(med["move"] / med["movescu"], 3),
            "get_ratio_vs_movescu": round(med["get"] / med["movescu"], 3),
            "wado_ratio_vs_movescu": round(med["wado"] / med["movescu"], 3),
            "peak_rss_mb_study": round(max(x["rss_mb"] for m in ("move", "get", "wado")
                                           for x in runs[m]), 1),
            "peak_rss_mb_study_2x": round(max(x["rss_mb"] for x in big.values()), 1),
            "peak_rss_mb_multiframe": round(max(x["rss_mb"] for x in mf.values()), 1),
            "movescu_s": round(med["movescu"], 3), "move_s": round(med["move"], 3),
            "get_s": round(med["get"], 3), "wado_s": round(med["wado"], 3),
            "movescu_rss_mb": round(max(x["rss_mb"] for x in runs["movescu"]), 1),
            "study_mb": round(study.size / 1e6, 1), "rounds": args.rounds,
            "loadavg": round(os.getloadavg()[0], 2),
        }
        print(f"2x study: move {big['move']['wall']:.2f}s/{big['move']['rss_mb']:.0f}MB, "
              f"wado {big['wado']['wall']:.2f}s/{big['wado']['rss_mb']:.0f}MB; multi-frame: "
              + ", ".join(f"{m} {x['wall']:.2f}s/{x['rss_mb']:.0f}MB" for m, x in mf.items()))
        print(json.dumps(result))
    finally:
        if orthanc is not None:
            orthanc.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
