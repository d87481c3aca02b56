"""`records-gateway demo` as a user runs it: a real process, the embedded default."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import requests


def _env(tmp: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["TMPDIR"] = tmp  # the demo's working folder, so the test sees it cleaned up
    return env


def test_demo_json_summary_of_a_whole_transfer(tmp_path):
    work = tmp_path / "tmp"
    work.mkdir()
    done = subprocess.run([sys.executable, "-m", "gateway", "demo", "--json"], env=_env(str(work)),
                          cwd=tmp_path, capture_output=True, text=True, timeout=290)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["state"] == "completed"
    assert summary["documents_verified"] == ["lab-report.pdf", "pathology-report.pdf",
                                             "progress-note.pdf"]
    assert summary["receiver_stored"]["sha256"] == summary["bundle"]["sha256"]
    assert summary["receipt"]["sha256"] == summary["bundle"]["sha256"]
    assert summary["pulled"] == [{"source": "records-office", "kind": "pdf-folder",
                                  "organization": "org-demo-hospital", "items": 3,
                                  "bytes": summary["pulled"][0]["bytes"]}]
    # the three PDFs, the patient summary PDF and the completeness manifest
    assert summary["receiver_stored"]["entries"]["Binary"] == 5
    assert summary["receiver_stored"]["entries"]["Composition"] == 1
    assert summary["opened"]["openedBy"] == "center-staff"
    assert "signed 'opened' receipt" in done.stderr
    assert "receipt verified" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]  # nothing left in the cwd
    assert not list(work.iterdir())  # and its working folder removed


def _wait_for(path, text: str, proc, timeout: float = 290) -> str:
    """Poll the process's output file until `text` appears (or the process ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = path.read_text()
        if text in out or proc.poll() is not None:
            return out
        time.sleep(0.2)
    return path.read_text()


def test_demo_prints_a_summary_and_keeps_the_gateways_running_until_ctrl_c(tmp_path):
    work = tmp_path / "tmp"
    work.mkdir()
    out_file, err_file = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out_file, "w") as out, open(err_file, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--keep"],
                                env=_env(str(work)), cwd=work, stdout=out, stderr=err)
    try:
        text = _wait_for(out_file, "Press Ctrl-C", proc)
        assert proc.poll() is None, err_file.read_text()[-3000:]
        lines = text.splitlines()
        assert lines[0].startswith("Pulled     3 documents (")
        assert "from records-office (pdf-folder) at org-demo-hospital" in lines[0]
        assert lines[1].startswith("Delivered  one signed FHIR bundle (")
        assert "to org-second-opinion: 5 Binary, 1 Composition" in lines[1]
        assert "verified against its published key" in lines[2]
        assert lines[3] == ("Stored     3 PDFs byte-identical at the receiver: lab-report.pdf, "
                            "pathology-report.pdf, progress-note.pdf")
        assert lines[4].startswith("Opened     by center-staff at ")
        assert re.fullmatch(r"Transfer   [0-9a-f]{32} completed", lines[5])
        pages = re.findall(r"^  (.+): (http://127\.0\.0\.1:\d+\S*)\n    token: (\S+)$", text, re.M)
        assert [p[0] for p in pages] == ["Sending gateway (operator)", "Receiving center (staff)"]
        # the printed tokens sign in: each gateway answers its own API with them
        sender_url = pages[0][1].split("/", 3)[:3]
        receiver_url = pages[1][1].split("/", 3)[:3]
        sender, receiver = "/".join(sender_url), "/".join(receiver_url)
        assert requests.get(pages[0][1], timeout=10).status_code == 200
        transfers = requests.get(f"{sender}/transfers", timeout=10,
                                 headers={"Authorization": f"Bearer {pages[0][2]}"})
        assert transfers.json()["transfers"][0]["state"] == "completed"
        inbox = requests.get(f"{receiver}/inbox", timeout=10,
                             headers={"Authorization": f"Bearer {pages[1][2]}"})
        assert len(inbox.json()["received"]) == 1
        # and the center's page, signed in with the printed token as a newcomer would
        browser = requests.Session()
        form = browser.get(pages[1][1], timeout=10)
        assert form.url == f"{receiver}/ui/sign-in"
        nonce = re.search(r'name="form_nonce" value="([^"]+)"', form.text).group(1)
        page = browser.post(f"{receiver}/ui/sign-in", data={"form_nonce": nonce,
                                                            "token": pages[1][2]}, timeout=30)
        assert page.url == f"{receiver}/ui/center/"
        assert page.text.count("data-received=") == 1
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
    assert rc == 0, err_file.read_text()[-3000:]
    assert "stopping both gateways" in err_file.read_text()
    for url in (sender, receiver):  # both stopped
        try:
            requests.get(f"{url}/health", timeout=2)
            raise AssertionError(f"{url} still answers after Ctrl-C")
        except requests.ConnectionError:
            pass
    assert not list(work.iterdir())
