"""`records-gateway demo`: one whole transfer on this machine, no server to install.

Starts a sending gateway (embedded broker and worker) and a receiving gateway on two
loopback ports, each a real `records-gateway serve` process with its own data dir;
makes a demo issuer key and signs an authorization; writes synthetic PDFs into the
sender's drop folder; runs the transfer through the API; prints the verified receipt
and what the receiver stored. Exits non-zero if any step fails.

By default it prints a short human summary (`--json`: the same facts as JSON). With
`--keep` both gateways stay up, their pages' addresses and sign-in tokens printed, until
Ctrl-C (or SIGTERM), then stop and their data is removed.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import requests

from gateway.errors import GatewayError
from gateway.trust.authorizations import example_claims, new_issuer_key, sign_authorization
from gateway.trust.issuers import trust_document

from .progress import follow_transfer

ISSUER = "https://esign.demo.invalid"
SENDER_ORG, RECEIVER_ORG = "org-demo-hospital", "org-second-opinion"
SENDER_PAGE = RECEIVER_PAGE = "/ui/"  # where `--keep` sends a newcomer: sign-in, then home
DOCUMENTS = [  # (file name, title, data class, lines) - synthetic, no real patient
    ("progress-note.pdf", "Progress note", "notes",
     ["Follow-up visit. Symptoms stable.", "Plan: continue current therapy; review in 6 weeks."]),
    ("lab-report.pdf", "Laboratory report", "labs",
     ["Hemoglobin 13.9 g/dL (ref 12.0-15.5)", "Creatinine 0.9 mg/dL (ref 0.6-1.1)"]),
    ("pathology-report.pdf", "Pathology report", "pathology",
     ["Specimen: synthetic biopsy.", "Diagnosis: demonstration text only."]),
]


class DemoFailed(GatewayError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(env: dict, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "gateway", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise DemoFailed(f"`records-gateway {' '.join(args[:2])}` failed: "
                         f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return done.stdout.strip()


def make_pdf(path: Path, title: str, lines: list[str], patient: dict) -> None:
    from reportlab.lib.pagesizes import letter
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=letter, invariant=1)
    c.setTitle(title)
    c.setFont("Helvetica-Bold", 16)
    c.drawString(72, 720, title)
    c.setFont("Helvetica", 11)
    c.drawString(72, 696, f"Patient: {' '.join(patient['name']['given'])} "
                          f"{patient['name']['family']}  DOB {patient['birthDate']}  (synthetic)")
    for n, line in enumerate(lines):
        c.drawString(72, 660 - 18 * n, line)
    c.showPage()
    c.save()


class _Gateway:
    def __init__(self, name: str, root: Path, port: int, config: dict):
        self.name, self.port = name, port
        self.dir = root / name
        self.dir.mkdir(parents=True)
        config = {"data_dir": str(self.dir / "data"), "host": "127.0.0.1", "port": port,
                  "base_url": f"http://127.0.0.1:{port}", "reconcile_interval_s": 5, **config}
        (self.dir / "config.json").write_text(json.dumps(config, indent=2))
        self.env = {**os.environ, "GATEWAY_CONFIG_FILE": str(self.dir / "config.json"),
                    "GATEWAY_LOG_LEVEL": "WARNING"}
        self.env.pop("GATEWAY_REDIS_URL", None)
        self.env.pop("GATEWAY_DATABASE_URL", None)
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self, *args: str) -> None:
        self.log = open(self.dir / "serve.log", "wb")
        # its own session: Ctrl-C reaches the demo alone, which then stops it in order
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", *args],
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DemoFailed(f"{self.name} gateway exited at start; see {self.dir / 'serve.log'}")
            try:
                if requests.get(f"{self.url}/health", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise DemoFailed(f"{self.name} gateway did not answer on port {self.port} in 30 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()


def _api(method: str, url: str, token: str, **kw) -> dict:
    r = requests.request(method, url, headers={"Authorization": f"Bearer {token}"}, timeout=30, **kw)
    if not r.ok:
        try:
            detail = r.json()["issue"][0]["diagnostics"]
        except (ValueError, KeyError, IndexError):
            detail = r.text[:200]
        raise DemoFailed(f"{method} {url.split('/', 3)[-1]} -> HTTP {r.status_code}: {detail}")
    return r.json() if r.content else {}


def run_demo(keep: bool = False, as_json: bool = False, timeout: float = 180) -> dict:
    root = Path(tempfile.mkdtemp(prefix="records-gateway-demo-"))
    say = lambda msg: click.echo(f"demo: {msg}", err=True)  # noqa: E731
    sender_port, receiver_port = _free_port(), _free_port()
    drop = root / "drop"
    receiver = _Gateway("receiver", root, receiver_port, {
        "mode": "receive", "organization": RECEIVER_ORG,
        # the sending gateway it trusts: its keys, and where "opened" receipts go back
        "senders": {SENDER_ORG: {"organization": SENDER_ORG,
                                 "jwks_file": str(root / "sender-jwks.json"),
                                 "base_url": f"http://127.0.0.1:{sender_port}",
                                 "token_file": str(root / "receiver" / "sender-token")}}})
    sender = _Gateway("sender", root, sender_port, {
        "organization": SENDER_ORG,
        "sources": {"records-office": {"kind": "pdf-folder", "organization": SENDER_ORG,
                                       "endpoint": str(drop), "data_class": "notes",
                                       "options": {"path": str(drop)}}},
        "peers": {"center": {"base_url": receiver.url, "organization": RECEIVER_ORG,
                             "token_file": str(root / "sender" / "peer-token")}},
    })
    try:
        say(f"working in {root}")
        for gw in (receiver, sender):
            _cli(gw.env, "init")
        (root / "sender" / "peer-token").write_text(
            _cli(receiver.env, "token", "create", "--name", SENDER_ORG, "--role", "peer"))
        inbox_token = _cli(receiver.env, "token", "create", "--name", "center-staff",
                           "--role", "recipient")
        operator_token = _cli(sender.env, "token", "create", "--name", "demo-operator",
                              "--role", "operator")
        (root / "receiver" / "sender-token").write_text(
            _cli(sender.env, "token", "create", "--name", RECEIVER_ORG, "--role", "peer"))
        from gateway.trust.keys import SigningKeys

        (root / "sender-jwks.json").write_text(json.dumps(
            SigningKeys(sender.dir / "data" / "keys").jwks()))

        issuer_key = new_issuer_key("demo-esign-1")
        trust_file = root / "sender" / "data" / "trust" / "issuers.json"
        trust_file.write_text(json.dumps(trust_document({ISSUER: [issuer_key]}), indent=2))
        claims = example_claims(
            ISSUER, "demo-auth-1",
            disclosers=[{"id": SENDER_ORG, "name": "Demo Hospital",
                         "endpoints": [{"type": "pdf-folder", "address": str(drop)}]}],
            recipient={"id": RECEIVER_ORG, "name": "Second Opinion Center",
                       "endpoint": {"type": "gateway", "address": receiver.url}},
            data_classes=("notes",))
        jws = sign_authorization(claims, issuer_key)
        say("signed a demo release authorization (synthetic patient)")

        say(f"starting the receiving gateway on port {receiver_port} and the sending "
            f"gateway on port {sender_port}")
        receiver.start("--receive")
        sender.start()

        auth = _api("POST", f"{sender.url}/authorizations", operator_token, json={"jws": jws})
        say(f"authorization {auth['id']} verified and stored")
        transfer = _api("POST", f"{sender.url}/transfers", operator_token,
                        json={"authorization": auth["id"], "sources": ["records-office"],
                              "recipient": "center"})
        staging = root / "staging"
        staging.mkdir()
        expected = {}
        for name, title, _cls, lines in DOCUMENTS:
            make_pdf(staging / name, title, lines, claims["patient"])
            expected[hashlib.sha256((staging / name).read_bytes()).hexdigest()] = name
        drop.mkdir(exist_ok=True)
        staging.rename(drop / transfer["id"])  # appears whole, as a fax server should drop it
        say(f"transfer {transfer['id']} started; {len(DOCUMENTS)} synthetic PDFs in the drop folder")

        view = follow_transfer(lambda: _api("GET", f"{sender.url}/transfers/{transfer['id']}",
                                            operator_token), timeout)
        if view["state"] != "completed":
            raise DemoFailed(f"transfer ended {view['state']}: {view['reason']}"
                             if view["state"] in ("failed", "cancelled")
                             else f"transfer still {view['state']} after {timeout:.0f} s")
        receipt = view["receipt"]
        say("receipt verified against the receiver's published key")

        inbox = _api("GET", f"{receiver.url}/inbox", inbox_token)["received"]
        if len(inbox) != 1:
            raise DemoFailed(f"receiver holds {len(inbox)} bundles, expected 1")
        stored = _api("GET", f"{receiver.url}/inbox/{inbox[0]['id']}/bundle", inbox_token)
        kinds, delivered = _stored_contents(stored)
        if delivered != set(expected):
            raise DemoFailed("the documents stored by the receiver differ from the PDFs sent")
        if inbox[0]["sha256"] != view["bundle"]["sha256"] != receipt["sha256"]:
            raise DemoFailed("bundle hashes differ between sender, receipt and receiver")
        opened = _api("POST", f"{receiver.url}/inbox/{inbox[0]['id']}/opened", inbox_token)
        if not opened["senderNotified"]:
            raise DemoFailed("the sender did not take the signed 'opened' receipt")
        view = _api("GET", f"{sender.url}/transfers/{transfer['id']}", operator_token)
        say(f"the center opened the records; the sender holds the signed 'opened' receipt "
            f"(by {view['bundles'][0]['opened']['openedBy']})")
        summary = {"transfer": view["id"], "state": view["state"], "bundle": view["bundle"],
                   "pulled": [{"source": src["name"], "kind": "pdf-folder",
                               "organization": SENDER_ORG, "items": src["items"],
                               "bytes": src["bytes"]} for src in view["sources"]],
                   "delivered_to": RECEIVER_ORG,
                   "receipt": {k: receipt.get(k) for k in ("receipt_id", "iss", "sha256",
                                                           "entries", "received_at")},
                   "receiver_stored": {"id": inbox[0]["id"], "sha256": inbox[0]["sha256"],
                                       "entries": kinds},
                   "documents_verified": sorted(expected.values()),
                   "opened": view["bundles"][0]["opened"]}
        click.echo(json.dumps(summary, indent=2, sort_keys=True) if as_json
                   else "\n".join(human_summary(summary)))
        if keep:
            _look_around(sender, operator_token, receiver, inbox_token, as_json)
        return summary
    finally:
        sender.stop()
        receiver.stop()
        shutil.rmtree(root, ignore_errors=True)


def _stored_contents(stored: dict) -> tuple[dict[str, int], set[str]]:
    """Resources by type in the stored bundle, and the sha256 of each delivered document
    (the PDFs sent, not the summary and manifest the sender generated)."""
    kinds: dict[str, int] = {}
    delivered = set()
    generated = {d["content"][0]["attachment"]["url"] for d in (e["resource"] for e in stored["entry"])
                 if d["resourceType"] == "DocumentReference"
                 and d["type"]["coding"][0]["code"] in ("60591-5", "completeness-manifest")}
    for entry in stored["entry"]:
        rtype = entry["resource"]["resourceType"]
        kinds[rtype] = kinds.get(rtype, 0) + 1
        if rtype == "Binary" and entry["fullUrl"] not in generated:
            delivered.add(hashlib.sha256(base64.b64decode(entry["resource"]["data"])).hexdigest())
    return kinds, delivered


def human_summary(summary: dict) -> list[str]:
    """What happened, in the words a newcomer reads: one line a step."""
    lines = []
    for src in summary["pulled"]:
        lines.append(f"Pulled     {src['items']} documents ({src['bytes']:,} bytes) from "
                     f"{src['source']} ({src['kind']}) at {src['organization']}")
    entries = summary["receiver_stored"]["entries"]
    what = ", ".join(f"{n} {kind}" for kind, n in sorted(entries.items()))
    bundle = summary["bundle"]
    lines.append(f"Delivered  one signed FHIR bundle ({bundle['size']:,} bytes, sha256 "
                 f"{bundle['sha256'][:16]}...) to {summary['delivered_to']}: {what}")
    receipt = summary["receipt"]
    lines.append(f"Receipt    {receipt['receipt_id']} signed by {receipt['iss']}, verified "
                 f"against its published key; it names all {receipt['entries']} entries")
    lines.append(f"Stored     {len(summary['documents_verified'])} PDFs byte-identical at the "
                 f"receiver: {', '.join(summary['documents_verified'])}")
    opened = summary["opened"] or {}
    lines.append(f"Opened     by {opened.get('openedBy')} at {opened.get('openedAt')}; the "
                 "sender holds the center's signed 'opened' receipt")
    lines.append(f"Transfer   {summary['transfer']} {summary['state']}")
    return lines


def _look_around(sender: _Gateway, operator_token: str, receiver: _Gateway,
                 inbox_token: str, as_json: bool) -> None:
    """Leave both gateways up for a newcomer's browser until Ctrl-C or SIGTERM."""
    out = sys.stderr if as_json else sys.stdout
    pages = [("Sending gateway (operator)", f"{sender.url}{SENDER_PAGE}", operator_token),
             ("Receiving center (staff)", f"{receiver.url}{RECEIVER_PAGE}", inbox_token)]
    lines = ["", "Both gateways keep running. Open a page and sign in with its token:"]
    for who, url, token in pages:
        lines += [f"  {who}: {url}", f"    token: {token}"]
    lines.append("Press Ctrl-C to stop them.")
    click.echo("\n".join(lines), file=out)
    out.flush()
    stop = {"now": False}

    def _stop(signum, frame):
        stop["now"] = True

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop["now"]:
            for gw in (sender, receiver):
                if gw.proc.poll() is not None:
                    raise DemoFailed(f"the {gw.name} gateway stopped (exit {gw.proc.returncode}); "
                                     f"see its serve.log")
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo("demo: stopping both gateways", err=True)
