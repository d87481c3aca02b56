"""A DICOMweb source that redirects is refused: the configured headers (an API key) must
never follow a redirect to another host or port."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from connectors.base import SourceRejected
from connectors.dicom.web import DicomWebClient


class _Server:
    def __init__(self, answer):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append({"path": self.path, "key": self.headers.get("X-Api-Key")})
                answer(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    def json_answer(h):
        h.send_response(200)
        h.send_header("Content-Type", "application/dicom+json")
        h.end_headers()
        h.wfile.write(b"[]")

    elsewhere = _Server(json_answer)

    def redirect(h):
        h.send_response(302)
        h.send_header("Location", elsewhere.url + h.path)
        h.end_headers()

    source = _Server(redirect)
    yield source, elsewhere
    source.stop()
    elsewhere.stop()


def test_redirects_are_refused_and_the_key_stays_home(servers):
    source, elsewhere = servers
    client = DicomWebClient(source.url + "/dicom-web", headers={"X-Api-Key": "secret-key"})
    with pytest.raises(SourceRejected, match="redirect"):
        client.search_studies({"PatientID": "42"})
    assert [r["key"] for r in source.requests] == ["secret-key"]
    assert elsewhere.requests == []  # neither the request nor the key went there
