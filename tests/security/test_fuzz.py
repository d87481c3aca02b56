"""Each fuzz harness in tests/security/fuzz/ runs for a few seconds in its own process
(atheris needs one), from a seed corpus the harness writes (valid synthetic objects, and
the inputs of past findings, so a regression fails at once), and must end cleanly: no input may raise anything but the errors the harness expects,
and none may take over 5 s (-timeout). About a minute for all of them; longer runs by
hand are in each harness's docstring."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).parent / "fuzz"
# seconds of fuzzing per harness (the slow ones, with a database or PDFium, get more)
BUDGET = {"bundle_receive": 10, "signed_objects": 6, "dicom_receive": 8, "pdf_tiff": 10}


def _run(args: list[str], tmp_path: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
           "TMPDIR": str(tmp_path)}  # the harnesses' work folders stay in tmp_path
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True,
                          timeout=timeout)


@pytest.mark.parametrize("name", sorted(BUDGET))
def test_fuzz_harness_finds_nothing(name, tmp_path):
    harness = str(FUZZ / f"{name}.py")
    corpus = tmp_path / "corpus"
    seeded = _run([harness, "--seeds", str(corpus)], tmp_path, 120)
    assert seeded.returncode == 0, seeded.stderr.decode(errors="replace")[-2000:]
    assert len(list(corpus.iterdir())) >= 3
    seconds = BUDGET[name]
    done = _run([harness, str(corpus), "-runs=2000000", f"-max_total_time={seconds}", "-timeout=5",
                 "-rss_limit_mb=2048", "-print_final_stats=1", f"-artifact_prefix={tmp_path}/"],
                tmp_path, seconds + 120)
    log = done.stderr.decode(errors="replace")
    findings = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-"))]
    crash = log.find("=== Uncaught")  # the finding's traceback, else the end of the log
    assert done.returncode == 0 and not findings, \
        f"{findings}\n{log[crash:crash + 6000] if crash >= 0 else log[-4000:]}"
    assert "Done " in log and "stat::number_of_executed_units" in log
