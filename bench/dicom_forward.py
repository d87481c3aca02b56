"""Benchmark: forward a study's instances to a recipient, against dcmtk's storescu.

    python bench/dicom_forward.py [--rounds 3] [--keep]

Generates the 300-instance 512x512 16-bit CT study (~158 MB, pydicom, from CT_small.dcm),
starts an Orthanc (with its DICOMweb plugin) and a gateway in receive mode on free
loopback ports, and in interleaved rounds times sending the study's files by
- dcmtk `storescu` to Orthanc (the reference; one association);
- connectors.dicom.forward.forward_c_store to Orthanc;
- forward_stow_rs to Orthanc's DICOMweb (the files' bytes streamed as multipart/related);
- forward_stow_rs to the receiving gateway (`POST /dicomweb/studies`: parsed as it
  streams into the encrypted blob store, sha256 per instance, one row per instance).
Orthanc is emptied before each of its runs; the gateway gets each round under a new
sender (a resent instance would be answered from what it already holds).

The last line printed is one JSON object: the medians in seconds, each path's ratio
to storescu, and the load average (the machine is shared).
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


def timed(fn) -> float:
    subprocess.run(["sync"], check=False)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def start_receiver(tmp: Path, rounds: int):
    """A gateway in receive mode, with one trusted sender and peer token per round."""
    from gateway import create_app
    from gateway.storage.blobstore import new_master_key
    from gateway.trust.tokens import create_token
    from tests.helpers import GatewayProcess, free_port

    port = free_port()
    (tmp / "jwks.json").write_text('{"keys": []}')
    senders = {f"bench-{n}": {"organization": "org-bench", "jwks_file": str(tmp / "jwks.json")}
               for n in range(rounds)}
    config = {"data_dir": str(tmp / "receiver"), "blob_key": new_master_key(),
              "organization": "org-center", "mode": "receive", "port": port,
              "base_url": f"http://127.0.0.1:{port}", "senders": senders, "log_level": "WARNING"}
    (tmp / "receiver").mkdir()
    app = create_app(config)
    svc = app.extensions["gateway"]
    svc.keys.ensure()
    tokens = []
    with svc.db.session() as s:
        for name in senders:
            tokens.append(create_token(s, name, "peer", "bench")[1])
    svc.close()
    proc = GatewayProcess(config, tmp, "receiver").start("serve", "--receive").wait_http()

    def count() -> int:
        app2 = create_app(config)
        from sqlalchemy import func, select

        from gateway.storage.models import ReceivedInstance
        with app2.extensions["gateway"].db.session() as s:
            n = s.scalar(select(func.count()).select_from(ReceivedInstance))
        app2.extensions["gateway"].close()
        return n

    return proc, f"http://127.0.0.1:{port}/dicomweb", tokens, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()

    from connectors.dicom.forward import forward_c_store, forward_stow_rs, outgoing_from_file
    from tests.dicom.dicom_peers import Orthanc, have_peers, storescu
    from tests.dicom.dicom_studies import make_study

    missing = have_peers()
    if missing:
        sys.exit(f"missing {', '.join(missing)}: apt-get install orthanc orthanc-dicomweb dcmtk")
    tmp = Path(tempfile.mkdtemp(prefix="dicom-forward-bench-"))
    orthanc = receiver = None
    try:
        print("generating the study ...", flush=True)
        study = make_study(tmp / "gen", 300, 3, patient_id="BENCH-FWD")
        items = [outgoing_from_file(f) for f in study.files]
        orthanc = Orthanc(tmp / "orthanc").start()
        receiver, gw_url, tokens, gw_count = start_receiver(tmp, args.rounds)
        runs: dict[str, list[float]] = {"storescu": [], "c_store": [], "stow_orthanc": [],
                                        "stow_gateway": []}

        def check(report) -> None:
            assert len(report.sent) == len(items) and report.complete, report.failed

        for n in range(args.rounds):
            orthanc.clear()
            runs["storescu"].append(timed(lambda: storescu(
                "127.0.0.1", orthanc.dicom_port, orthanc.aet, study.files)))
            assert orthanc.instance_count() == 300
            orthanc.clear()
            runs["c_store"].append(timed(lambda: check(forward_c_store(
                items, "127.0.0.1", orthanc.dicom_port, orthanc.aet, "GATEWAY"))))
            orthanc.clear()
            runs["stow_orthanc"].append(timed(lambda: check(forward_stow_rs(
                items, orthanc.dicomweb_url))))
            assert orthanc.instance_count() == 300
            headers = {"Authorization": f"Bearer {tokens[n]}"}
            runs["stow_gateway"].append(timed(lambda: check(forward_stow_rs(
                items, gw_url, headers=headers))))
            print(f"round {n + 1}: " + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in runs.items()),
                  flush=True)
        assert gw_count() == 300 * args.rounds
        med = {k: statistics.median(v) for k, v in runs.items()}
        result = {f"{k}_s": round(v, 3) for k, v in med.items()}
        result.update({f"{k}_ratio_vs_storescu": round(med[k] / med["storescu"], 3)
                       for k in ("c_store", "stow_orthanc", "stow_gateway")})
        result.update(study_mb=round(study.size / 1e6, 1), instances=len(items),
                      rounds=args.rounds, loadavg=round(os.getloadavg()[0], 2))
        print(json.dumps(result))
    finally:
        if receiver is not None:
            receiver.stop()
        if orthanc is not None:
            orthanc.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
