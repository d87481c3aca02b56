"""`records-gateway demo` as a user runs it: a real process, the embedded default."""
import json
import os
import subprocess
import sys


def test_demo_runs_a_whole_transfer(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    done = subprocess.run([sys.executable, "-m", "gateway", "demo"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.split("receiver stored:\n", 1)[1])
    assert summary["state"] == "completed"
    assert summary["documents_verified"] == ["lab-report.pdf", "pathology-report.pdf",
                                             "progress-note.pdf"]
    assert summary["receiver_stored"]["sha256"] == summary["bundle"]["sha256"]
    # the three PDFs, the patient summary PDF and the completeness manifest
    assert summary["receiver_stored"]["entries"]["Binary"] == 5
    assert summary["receiver_stored"]["entries"]["Composition"] == 1
    assert "signed 'opened' receipt" in done.stderr
    assert "receipt verified" in done.stderr
    assert not list(tmp_path.iterdir())  # it cleans up after itself
