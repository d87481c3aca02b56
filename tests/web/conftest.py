"""Browser tests of the web pages: one chromium for the run (Debian's, driven by
Playwright), one app server per module on a free 127.0.0.1 port with a seeded store, a
fresh browser context per test. docs/web.md describes the fixtures."""
from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from gateway.storage.blobstore import new_master_key
from gateway.trust.authorizations import example_claims, sign_authorization
from gateway.trust.issuers import trust_document

from tests.helpers import ISSUER, RECEIVER_ORG, SENDER_ORG, free_port
from tests.security import route_world

CHROMIUM = "/usr/bin/chromium"
AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"


@dataclass
class WebWorld:
    url: str
    app: object
    ids: dict
    tokens: dict
    leaks: list
    config: dict
    tmp: Path
    claims_for: object
    sign: object


def web_config(tmp: Path, issuer_key) -> tuple[dict, object, object]:
    """The sending gateway's settings (as tests/conftest.py's sender_config), the claims
    builder and the signer, all under `tmp`."""
    for name in ("sender", "drop", "fax-in", "fax-store"):
        (tmp / name).mkdir(exist_ok=True)
    trust = tmp / "issuers.json"
    trust.write_text(json.dumps(trust_document({ISSUER: [issuer_key]})))
    receiver_url = f"http://127.0.0.1:{free_port()}"
    (tmp / "sender" / "peer-token").write_text("not-yet-issued")
    drop, fax = tmp / "drop", tmp / "fax-in"
    config = {
        "data_dir": str(tmp / "sender"), "blob_key": new_master_key(), "trust_file": str(trust),
        "organization": SENDER_ORG, "port": free_port(),
        "sources": {"records": {"kind": "pdf-folder", "organization": SENDER_ORG,
                                "endpoint": str(drop), "data_class": "notes",
                                "options": {"path": str(drop)}},
                    "fax": {"kind": "fax-drop", "organization": SENDER_ORG, "endpoint": str(fax),
                            "options": {"drop": str(fax), "store": str(tmp / "fax-store"),
                                        "settle_seconds": 0, "file_settle_seconds": 0.3,
                                        "return_fax": "+1 555 0100"}}},
        "peers": {"center": {"base_url": receiver_url, "organization": RECEIVER_ORG,
                             "token_file": str(tmp / "sender" / "peer-token")}},
        "retry": {"base_delay_s": 0.2, "max_delay_s": 1.0, "max_attempts": 1000},
        "step_lease_s": 5, "reconcile_interval_s": 1, "checkpoint_interval_s": 1,
        "fax_scan_interval_s": 0.5, "warm_up_fhir_models": False,
    }

    def claims_for(jti: str | None = None, **kw):
        return example_claims(
            ISSUER, jti or f"auth-{uuid.uuid4().hex[:12]}",
            disclosers=[{"id": SENDER_ORG, "name": "Test Hospital",
                         "endpoints": [{"type": "pdf-folder", "address": str(drop)},
                                       {"type": "fax", "address": str(fax)}]}],
            recipient={"id": RECEIVER_ORG, "name": "Test Center",
                       "endpoint": {"type": "gateway", "address": receiver_url}}, **kw)

    return config, claims_for, lambda claims: sign_authorization(claims, issuer_key)


class ServerThread:
    """The Flask app under werkzeug in a thread, on 127.0.0.1 and a free port."""

    def __init__(self, app):
        self.server = make_server("127.0.0.1", free_port(), app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.thread.join(10)


@pytest.fixture(scope="module")
def web(tmp_path_factory, issuer_private_key):
    """The app serving pages with something of every kind in its store."""
    tmp = tmp_path_factory.mktemp("web")
    config, claims_for, sign = web_config(tmp, issuer_private_key)
    world = route_world.build(config, tmp, sign, claims_for)
    with ServerThread(world.app) as server:
        yield WebWorld(url=server.url, app=world.app, ids=world.ids, tokens=world.tokens,
                       leaks=world.leaks, config=world.config, tmp=tmp, claims_for=claims_for,
                       sign=sign)
    world.app.extensions["gateway"].close()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "chromium is missing: apt-get install chromium"
    with sync_playwright() as pw:
        # root in a container: chromium's own sandbox needs user namespaces it may not have
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, web):
    context = browser.new_context(base_url=web.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.csp_violations = []  # console lines of blocked inline code or foreign sources

    def on_console(msg):
        if "Content Security Policy" in msg.text:
            page.csp_violations.append(msg.text)

    page.on("console", on_console)
    yield page
    context.close()


def screenshots_dir(tmp_path_factory) -> Path:
    """$RGW_SCREENSHOTS, else a folder in this run's temporary base (pytest prints it)."""
    folder = os.environ.get("RGW_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.getbasetemp() / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def check_page(page, tmp_path_factory):
    """axe-core on the page as it stands (no violation of any impact), no CSP violation
    in the console, and a screenshot named `name` (docs/web.md)."""
    assert AXE.exists(), "axe-core is missing: run tests/setup/web.sh (npm ci in tests/web)"
    source = AXE.read_text()
    folder = screenshots_dir(tmp_path_factory)

    def check(name: str) -> dict:
        # evaluated through the DevTools protocol, which the page's CSP does not govern
        page.evaluate(source + "\n;0")
        result = page.evaluate("""() => axe.run(document, {resultTypes: ["violations"]})
            .then(r => r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                  nodes: v.nodes.map(n => n.target.join(" ")).slice(0, 5)})))""")
        assert result == [], f"{name}: accessibility violations: {json.dumps(result, indent=1)}"
        assert page.csp_violations == [], f"{name}: {page.csp_violations}"
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
        return {"violations": result}

    return check
