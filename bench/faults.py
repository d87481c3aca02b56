"""Benchmark: faults survived at load: nothing lost, nothing sent twice (issue 15).

    python bench/faults.py [--only 2,3] [--keep]

Imports every tests/faults/s*.py scenario module, runs each registered scenario in
number order, each in a fresh temporary folder, on real processes (gateway workers, a
receiving gateway, Redis and PostgreSQL on 127.0.0.1, the fault proxy): see each
module's docstring for its fault. Each scenario counts what the recipient really holds.

Writes docs/faults.md (a table: scenario, transfers, completed, lost, duplicated,
longest recovery, pass) and bench/results/faults.json, from a whole run (not with
--only). The last line is one JSON object: scenarios, scenarios_passed, transfers, lost,
duplicated, max_recovery_s.
"""
from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults.result import SCENARIOS, ScenarioResult  # noqa: E402

DOC = ROOT / "docs" / "faults.md"
RESULTS = ROOT / "bench" / "results" / "faults.json"


def load() -> None:
    for path in sorted((ROOT / "tests" / "faults").glob("s[0-9]*.py")):
        importlib.import_module(f"tests.faults.{path.stem}")


def run_one(number: int, name: str, fn, keep: bool) -> ScenarioResult:
    folder = Path(tempfile.mkdtemp(prefix=f"faults-s{number:02d}-"))
    started = time.monotonic()
    try:
        result = fn(folder)
    except Exception as exc:  # a scenario that cannot finish fails; the others still run
        traceback.print_exc()
        result = ScenarioResult(number, name, 0, 0, 0, 0, 0.0, False,
                                f"did not finish: {type(exc).__name__}: {str(exc)[:200]}")
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    result.notes = (result.notes + f"; ran {time.monotonic() - started:.0f} s").lstrip("; ")
    return result


def table(results: list[ScenarioResult]) -> str:
    lines = ["| # | scenario | transfers | completed | lost | duplicated | max recovery s | pass |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r.number} | {r.name} | {r.transfers} | {r.completed} | {r.lost} | "
                     f"{r.duplicated} | {r.max_recovery_s:.1f} | {'yes' if r.passed else 'NO'} |")
    return "\n".join(lines)


def write_doc(results: list[ScenarioResult]) -> None:
    DOC.write_text(
        "# Faults survived\n\n"
        "Each scenario runs real processes (sending gateway workers, a receiving gateway,\n"
        "Redis and PostgreSQL, Orthanc, the fault proxies of `tests/delivery/faultproxy.py`\n"
        "for HTTP and `tests/faults/dicom_proxy.py` for DICOM) through the harness in\n"
        "`tests/faults/harness.py`, injects its fault, and counts what the\n"
        "recipient really stored: bundles per idempotency key and per submission-group part,\n"
        "documents by sha256, uploads and DICOM instances. Lost: a transfer whose bundle or\n"
        "documents the recipient does not hold; duplicated: held more than once. Recovery:\n"
        "the longest time from a fault (or from the end of an outage) to work moving again.\n\n"
        "Rerun it all with `python bench/faults.py`; the quick scenarios run in the test\n"
        "suite (`tests/faults/test_quick.py`).\n\n"
        + table(results) + "\n\n"
        + "\n".join(f"- **{r.number}** {r.notes}" for r in results) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated scenario numbers")
    parser.add_argument("--keep", action="store_true", help="keep each scenario's folder")
    args = parser.parse_args()
    load()
    wanted = {int(n) for n in args.only.split(",")} if args.only else set(SCENARIOS)
    results = []
    for number in sorted(wanted & set(SCENARIOS)):
        name, fn = SCENARIOS[number]
        print(f"scenario {number}: {name} ...", flush=True)
        r = run_one(number, name, fn, args.keep)
        results.append(r)
        print(f"  {'pass' if r.passed else 'FAIL'}: transfers {r.transfers}, completed "
              f"{r.completed}, lost {r.lost}, duplicated {r.duplicated}, max recovery "
              f"{r.max_recovery_s:.1f} s ({r.notes})", flush=True)
    print(table(results))
    if not args.only:  # the committed report is of a whole run, never of a few scenarios
        write_doc(results)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps([r.as_dict() for r in results], indent=1) + "\n")
    print(json.dumps({"scenarios": len(results),
                      "scenarios_passed": sum(r.passed for r in results),
                      "transfers": sum(r.transfers for r in results),
                      "lost": sum(r.lost for r in results),
                      "duplicated": sum(r.duplicated for r in results),
                      "max_recovery_s": max((r.max_recovery_s for r in results), default=0.0)}))


if __name__ == "__main__":
    main()
