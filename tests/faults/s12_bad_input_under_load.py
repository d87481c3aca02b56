"""Scenario 12: bad input under load. While 20 good transfers run, the receiving
gateway is flooded by its own trusted peer with malformed bundles, unsigned and
wrongly signed bundles, oversized bodies and hostile DICOM (STOW-RS), and the sender's
drop folder gets broken PDFs for 4 more transfers, and its fax drop folder broken
"faxes" (truncated, random bytes, empty, a link, a name with a newline). The good
transfers finish once each, every bad request is refused with a 4xx (never a 5xx, never
a dead process), the transfers of broken PDFs stop with the reason for each file, and
each broken fax lies in the fax quarantine with its reason, none matched to a transfer."""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import requests

from connectors.fax.store import display_name

from .harness import TERMINAL, Cluster, wait_until
from .result import ScenarioResult, scenario

GOOD, BAD_TRANSFERS = 20, 4
MAX_BODY = 2 * 1024 * 1024  # the receiver's limit in this scenario


def _bad_requests(base: str, token: str) -> list[tuple[str, str, dict, bytes]]:
    """(what, path, headers, body): each must be refused."""
    fhir = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}

    def key() -> dict:
        return {**fhir, "Idempotency-Key": uuid.uuid4().hex, "X-Bundle-Signature": "e30..e30"}

    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:" + str(uuid.uuid4()), "resource": {"resourceType": "Patient"}}]}
    dicom = b"\0" * 128 + b"DICM" + os.urandom(4000)
    boundary = "faultsboundary"
    stow = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + dicom
            + f"\r\n--{boundary}--\r\n".encode())
    return [
        ("not json", "/fhir", key(), b"{\"resourceType\": \"Bundle\", "),
        ("json, no signature", "/fhir", {**fhir, "Idempotency-Key": uuid.uuid4().hex},
         json.dumps(bundle).encode()),
        ("forged signature", "/fhir", key(), json.dumps(bundle).encode()),
        ("deep nesting", "/fhir", key(), b"[" * 100_000 + b"]" * 100_000),
        ("oversized", "/fhir", key(), b" " * (MAX_BODY + 1)),
        ("wrong media type", "/fhir", {**key(), "Content-Type": "text/plain"}, b"hello"),
        ("hostile dicom", "/dicomweb/studies",
         {"Authorization": f"Bearer {token}",
          "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}, stow),
        ("dicom, not multipart", "/dicomweb/studies",
         {"Authorization": f"Bearer {token}", "Content-Type": "application/dicom"}, dicom),
    ]


# broken faxes -> the reason the quarantine must give
BROKEN_FAXES = {"truncated.pdf": "truncated", "garbage.pdf": "unsupported", "empty.pdf": "empty",
                "link.pdf": "not-a-file", "bad\nname.pdf": "hostile-name"}


def _broken_faxes(drop: Path) -> None:
    """Each written elsewhere and renamed in, as a fax server delivers a complete file."""
    staging = drop.with_name(drop.name + ".staging")
    staging.mkdir()
    (staging / "truncated.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog")
    (staging / "garbage.pdf").write_bytes(os.urandom(5000))
    (staging / "empty.pdf").write_bytes(b"")
    (staging / "link.pdf").symlink_to("/etc/hostname")
    (staging / "bad\nname.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
    for name in BROKEN_FAXES:
        os.rename(staging / name, drop / name)
    staging.rmdir()


def _broken_pdfs(folder: Path) -> int:
    staging = folder.with_name(folder.name + ".staging")
    staging.mkdir()
    (staging / "truncated.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog")
    (staging / "empty.pdf").write_bytes(b"")
    (staging / "garbage.pdf").write_bytes(os.urandom(5000))
    (staging / "link.pdf").symlink_to("/etc/hostname")
    staging.rename(folder)
    return 4


@scenario(12, "bad input under load")
def run(workdir: Path) -> ScenarioResult:
    notes: list[str] = []
    cluster = Cluster(workdir / "cluster", workers=2, receiver={"max_body_bytes": MAX_BODY})
    fax_drop = cluster.add_fax()
    answers: Counter = Counter()
    bad_status: list[str] = []
    try:
        cluster.start()
        token = (cluster.dir / "sender" / "peer-token").read_text().strip()
        auth = cluster.authorize()
        good = [cluster.transfer(auth, documents=2) for _ in range(GOOD)]
        bad = []
        for _ in range(BAD_TRANSFERS):
            r = cluster.client.post("/transfers", json={"authorization": auth, "sources": ["records"],
                                                        "recipient": "center"}, headers=cluster.operator)
            bad.append(r.get_json()["id"])
            _broken_pdfs(cluster.drop / bad[-1])
        _broken_faxes(fax_drop)
        stop = threading.Event()

        def flood() -> None:
            session = requests.Session()
            while not stop.is_set():
                for what, path, headers, body in _bad_requests(cluster.receiver_url, token):
                    try:
                        r = session.post(cluster.receiver_url + path, headers=headers, data=body,
                                         timeout=30)
                        answers[r.status_code] += 1
                        if not 400 <= r.status_code < 500:
                            bad_status.append(f"{what}: {r.status_code}")
                    except requests.RequestException as exc:
                        answers[type(exc).__name__] += 1
                        bad_status.append(f"{what}: {type(exc).__name__}")

        floods = [threading.Thread(target=flood, daemon=True) for _ in range(3)]
        began = time.monotonic()
        for t in floods:
            t.start()
        final = cluster.wait_states(TERMINAL, 300, tids=good)
        stop.set()
        for t in floods:
            t.join(60)
        took = time.monotonic() - began
        bad_final = cluster.wait_states(TERMINAL, 120, tids=bad)
        reasons = [cluster.view(t)["reason"] or "" for t in bad]
        quarantine = wait_until(lambda: len(cluster.quarantined()) >= len(BROKEN_FAXES)
                                and cluster.quarantined(), 120, 0.5, "the broken faxes quarantined")
        fax_outcomes = Counter(e.type for t in ("fax.matched", "fax.review")
                               for e in cluster.events(t))
        left = sorted(p.name for p in fax_drop.iterdir())
        for tid in bad:
            cluster.expected.pop(tid, None)
        tally = cluster.tally()
        alive = cluster.receiver.alive and all(w.alive for w in cluster.workers)
        refused_right = all("4 record(s) cannot be delivered" in r for r in reasons)
        held = {q.source_name: q.reason for q in quarantine}
        names = {display_name(n.encode()): n for n in BROKEN_FAXES}  # as it shows them
        quarantined_right = (held == {shown: BROKEN_FAXES[n] for shown, n in names.items()}
                             and not fax_outcomes and not left)
        notes.append(f"{sum(answers.values())} bad requests under load: {dict(answers)}; "
                     f"broken-PDF transfers {dict(bad_final)}; good done in {took:.0f} s")
        notes.append(f"fax quarantine {dict(sorted(held.items()))}")
        if not quarantined_right:
            notes.append(f"fax outcomes {dict(fax_outcomes)}, left in the drop folder {left}")
        if bad_status:
            notes.append(f"not refused as 4xx: {sorted(set(bad_status))[:5]}")
        if not refused_right:
            notes.append(f"reasons: {[r[:120] for r in reasons]}")
        if not alive:
            notes.append("a process died")
        passed = (final == {"completed": GOOD} and tally.completed == GOOD and tally.lost == 0
                  and tally.duplicated == 0 and not bad_status and alive and refused_right
                  and quarantined_right
                  and bad_final == {"failed": BAD_TRANSFERS} and sum(answers.values()) > 0)
    finally:
        cluster.stop()
    return ScenarioResult(12, "bad input under load", GOOD + BAD_TRANSFERS, tally.completed,
                          tally.lost, tally.duplicated, 0.0, passed,
                          "; ".join(notes + tally.problems[:5]))
