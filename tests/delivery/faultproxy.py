"""A fault-injecting HTTP proxy on 127.0.0.1 for what real peers cannot be made to do.

Each POST takes the next fault from `faults`, each PUT from `put_faults` (then passes
once its queue is empty); other requests pass. Faults:
  pass          forward as is
  drop          read the request, close without an answer
  503           answer 503 with an OperationOutcome, never forward
  retry_after:S       answer 503 with `Retry-After: S` (seconds), never forward
  retry_after_date:S  answer 429 with `Retry-After` an HTTP-date S seconds ahead
  late:S        forward, then hold the answer S seconds (the test kills the client meanwhile)
  flip_byte     forward the body with one byte changed (a tampered upload)
  slow:S        wait S seconds, then forward
  cut_request   forward the headers and half the body upstream, then hang up both ways
  stall         like cut_request but wait until `release` is set (the test kills the
                upstream meanwhile), then hang up
  cut_response  forward, then send the client only half the answer and hang up
  tamper        forward, then change one claim of the receipt in the answer
"""
from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
from collections import deque
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}


class FaultProxy:
    def __init__(self, listen_port: int, upstream_port: int):
        self.upstream_port = upstream_port
        self.faults: deque[str] = deque()
        self.put_faults: deque[str] = deque()
        self.log: list[tuple[str, str, int]] = []  # (path, fault, upstream status or 0)
        self.at: list[float] = []  # time.time() each request of `log` arrived
        self.lock = threading.Lock()
        self.stalled = threading.Event()
        self.release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy._handle(self, b"")

            def do_HEAD(self):
                proxy._handle(self, b"")

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                proxy._handle(self, self.rfile.read(length))

            do_PUT = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", listen_port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "FaultProxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def posts(self, fault: str | None = None, method: str = "POST") -> list:
        return [e for e in self.log if e[0].startswith(method + " ") and (fault is None or e[1] == fault)]

    def times(self, method: str = "POST") -> list[float]:
        return [at for e, at in zip(self.log, self.at) if e[0].startswith(method + " ")]

    # --------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        queue = {"POST": self.faults, "PUT": self.put_faults}.get(h.command)
        fault = queue.popleft() if queue else "pass"
        where = f"{h.command} {h.path}"
        arrived = time.time()
        if fault == "drop":
            self._record(where, fault, 0, arrived)
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "503" or fault.startswith("retry_after"):
            self._record(where, fault, 0, arrived)
            out = json.dumps({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "transient", "diagnostics": "injected 503"}]}).encode()
            wait = float(fault.split(":", 1)[1]) if ":" in fault else None
            h.send_response(429 if fault.startswith("retry_after_date") else 503)
            if fault.startswith("retry_after_date"):
                h.send_header("Retry-After", formatdate(time.time() + wait, usegmt=True))
            elif wait is not None:
                h.send_header("Retry-After", str(int(wait)))
            h.send_header("Content-Type", "application/fhir+json")
            h.send_header("Content-Length", str(len(out)))
            h.end_headers()
            h.wfile.write(out)
            return
        if fault in ("cut_request", "stall"):
            self._cut_request(h, body, stall=fault == "stall")
            self._record(where, fault, 0, arrived)
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault.startswith("slow:"):
            time.sleep(float(fault.split(":", 1)[1]))
        if fault == "flip_byte" and body:
            body = body[:len(body) // 2] + bytes([body[len(body) // 2] ^ 1]) + body[len(body) // 2 + 1:]
        status, headers, answer = self._forward(h, body)
        self._record(where, fault, status, arrived)
        if fault.startswith("late:"):
            time.sleep(float(fault.split(":", 1)[1]))
        if fault == "tamper":
            answer = _tamper(answer)
        h.send_response(status)
        for k, v in headers:
            if k.lower() not in HOP and k.lower() != "content-length":
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(answer)))
        h.end_headers()
        if fault == "cut_response":
            h.wfile.write(answer[: len(answer) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.wfile.write(answer)

    def _record(self, where: str, fault: str, status: int, arrived: float) -> None:
        with self.lock:
            self.log.append((where, fault, status))
            self.at.append(arrived)

    def _headers(self, h) -> list[tuple[str, str]]:
        return [(k, v) for k, v in h.headers.items() if k.lower() not in HOP and k.lower() != "host"]

    def _forward(self, h, body: bytes):
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            headers = dict(self._headers(h))
            headers["Host"] = f"127.0.0.1:{self.upstream_port}"
            conn.request(h.command, h.path, body=body if h.command in ("POST", "PUT") else None,
                         headers=headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        except OSError:
            out = b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient"}]}'
            return 502, [("Content-Type", "application/fhir+json")], out
        finally:
            conn.close()

    def _cut_request(self, h, body: bytes, stall: bool) -> None:
        try:
            up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
        except OSError:
            return
        try:
            head = f"{h.command} {h.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.upstream_port}\r\n"
            for k, v in self._headers(h):
                head += f"{k}: {v}\r\n"
            up.sendall(head.encode() + b"Connection: close\r\n\r\n" + body[: len(body) // 2])
            if stall:
                self.stalled.set()
                self.release.wait(60)
            else:
                time.sleep(0.3)  # let the receiver start reading
        except OSError:
            pass
        finally:
            up.close()


def _tamper(answer: bytes) -> bytes:
    """Change the receipt's hash claim, keeping the original signature."""
    try:
        reply = json.loads(answer)
        jws = base64.b64decode(reply["signature"]["data"]).decode()
        head, payload, sig = jws.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["sha256"] = "0" * 64
        forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        reply["signature"]["data"] = base64.b64encode(f"{head}.{forged}.{sig}".encode()).decode()
        return json.dumps(reply).encode()
    except (ValueError, KeyError, TypeError):
        return answer
