"""A fault-injecting FHIR server, for what a real server will not do on demand: 429 with
Retry-After, 503 bursts, truncated pages, next links to other hosts, slow responses,
resources that move between pages while paging, Binary answered as FHIR JSON, another
FHIR version in /metadata.

It serves a small in-memory data set (`resources`, by type) with offset paging
(`_count`, `_offset`), `Patient?identifier=`, `Patient/<id>/$everything`, reads
(`<Type>/<id>`, 404 when absent) and `Binary/<id>`, and records every request.
`capability_types` (type -> search parameter names) replaces the CapabilityStatement's
resource list; `everything_omits` names types `$everything` leaves out. Faults are queued rules: the first rule whose `match` is a
substring of the request path+query fires (`times` times) instead of the normal answer.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # clients hanging up on purpose
        pass


@dataclass
class Fault:
    match: str
    kind: str  # "status", "truncate", "slow", "drop", "garbage"
    status: int = 503
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    times: int = 1


class FaultPeer:
    def __init__(self, fhir_version: str = "4.0.1", everything: bool = True):
        self.fhir_version = fhir_version
        self.everything = everything
        self.resources: dict[str, list[dict]] = {}
        self.binaries: dict[str, tuple[str, bytes]] = {}  # id -> (content type, bytes)
        self.binary_as_json = False
        self.faults: list[Fault] = []
        self.requests: list[dict] = []
        self.next_base: str | None = None  # where next links point (default: our base)
        self.on_page = None  # callable(path, offset) run before a search page is built
        self.capability_types: dict[str, list[str]] | None = None
        self.everything_omits: set[str] = set()
        self.lock = threading.Lock()
        self.server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "FaultPeer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, *resources: dict) -> None:
        for r in resources:
            self.resources.setdefault(r["resourceType"], []).append(r)

    def fault(self, match: str, kind: str, **kw) -> Fault:
        f = Fault(match, kind, **kw)
        self.faults.append(f)
        return f

    # -- answers -----------------------------------------------------------------------
    def capability(self) -> dict:
        if self.capability_types is not None:
            return {"resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
                    "fhirVersion": self.fhir_version, "format": ["json"],
                    "rest": [{"mode": "server", "resource": [
                        {"type": t, "searchParam": [{"name": n, "type": "token"} for n in names],
                         **({"operation": [{"name": "everything"}]} if t == "Patient" and self.everything else {})}
                        for t, names in self.capability_types.items()]}]}
        return {"resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
                "fhirVersion": self.fhir_version, "format": ["json"],
                "rest": [{"mode": "server", "resource": [
                    {"type": t, "searchParam": [{"name": "patient", "type": "reference"},
                                                {"name": "date", "type": "date"},
                                                {"name": "_lastUpdated", "type": "date"}],
                     **({"operation": [{"name": "everything",
                                        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}]}
                        if t == "Patient" and self.everything else {})}
                    for t in ("Patient", "Observation", "Condition", "DocumentReference", "DiagnosticReport")]}]}

    def page(self, path: str, rtype: str, items: list[dict], params: dict) -> dict:
        count = int(params.get("_count", 20))
        offset = int(params.get("_offset", 0))
        if self.on_page:
            self.on_page(path, offset)
            items = self._items(path, params)
        chunk = items[offset:offset + count]
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(items),
                  "entry": [{"fullUrl": f"{self.base_url}/{r['resourceType']}/{r['id']}", "resource": r,
                             "search": {"mode": "match"}} for r in chunk],
                  "link": [{"relation": "self", "url": f"{self.base_url}/{path}"}]}
        if offset + count < len(items):
            q = {k: v for k, v in params.items() if k != "_offset"}
            q["_offset"] = str(offset + count)
            bundle["link"].append({"relation": "next",
                                   "url": f"{self.next_base or self.base_url}/{path}?{urlencode(q)}"})
        return bundle

    def read(self, rtype: str, rid: str):
        """`GET [base]/Type/id`: the stored resource (a dict, or bytes served as they are)."""
        return next((r for r in self.resources.get(rtype, []) if r.get("id") == rid), None)

    def _items(self, path: str, params: dict) -> list[dict]:
        if path.endswith("$everything"):
            return [r for t, rs in self.resources.items() if t not in self.everything_omits for r in rs]
        rtype = path.split("/")[0]
        items = list(self.resources.get(rtype, []))
        if rtype == "Patient" and "identifier" in params:
            system, _, value = params["identifier"].partition("|")
            items = [p for p in items if any(i.get("system") == system and i.get("value") == value
                                             for i in p.get("identifier", []))]
        return items

    def _handler(self):
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def send_json(self, status: int, doc, headers=None, ctype="application/fhir+json"):
                body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                parts = urlsplit(self.path)
                path = parts.path[len("/fhir/"):] if parts.path.startswith("/fhir/") else parts.path
                params = dict(parse_qsl(parts.query))
                target = path + ("?" + parts.query if parts.query else "")
                with peer.lock:
                    peer.requests.append({"path": path, "params": params, "time": time.time(),
                                          "auth": self.headers.get("Authorization"),
                                          "accept": self.headers.get("Accept")})
                    fault = next((f for f in peer.faults if f.times > 0 and f.match in target), None)
                    if fault:
                        fault.times -= 1
                if fault is not None and self._fault(fault, path, params):
                    return
                if path == "metadata":
                    return self.send_json(200, peer.capability())
                if path.startswith("Binary/"):
                    ctype, data = peer.binaries.get(path[7:], (None, None))
                    if data is None:
                        return self.send_json(404, {"resourceType": "OperationOutcome", "issue": [
                            {"severity": "error", "code": "not-found"}]})
                    if peer.binary_as_json:
                        import base64
                        return self.send_json(200, {"resourceType": "Binary", "id": path[7:], "contentType": ctype,
                                                    "data": base64.b64encode(data).decode()})
                    return self.send_json(200, data, ctype=ctype)
                rtype, _, rid = path.partition("/")
                if rid and "/" not in rid and "$" not in rid:  # a read
                    found = peer.read(rtype, rid)
                    if found is None:
                        return self.send_json(404, {"resourceType": "OperationOutcome", "issue": [
                            {"severity": "error", "code": "not-found"}]})
                    return self.send_json(200, found)
                return self.send_json(200, peer.page(path, rtype, peer._items(path, params), params))

            def _fault(self, fault: Fault, path: str, params: dict) -> bool:
                if fault.kind == "status":
                    self.send_json(fault.status, {"resourceType": "OperationOutcome", "issue": [
                        {"severity": "error", "code": "transient", "diagnostics": "injected"}]}, fault.headers)
                    return True
                if fault.kind == "slow":
                    time.sleep(fault.delay)
                    return False
                if fault.kind == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return True
                if fault.kind in ("truncate", "garbage"):
                    rtype = path.split("/")[0]
                    body = json.dumps(peer.page(path, rtype, peer._items(path, params), params)).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/fhir+json")
                    if fault.kind == "truncate":  # promise the whole body, send half, hang up
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body[: len(body) // 2])
                    else:  # a complete HTTP answer whose JSON stops half-way
                        half = body[: len(body) // 2]
                        self.send_header("Content-Length", str(len(half)))
                        self.end_headers()
                        self.wfile.write(half)
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.close()
                    return True
                return False

        return Handler


def patient(pid: str, mrn: str, family: str = "Doe", birth: str = "1970-01-01") -> dict:
    return {"resourceType": "Patient", "id": pid,
            "identifier": [{"system": "urn:mrn", "value": mrn}],
            "name": [{"family": family, "given": ["Jan"]}], "birthDate": birth}


def observation(oid: str, pid: str, when: str = "2024-01-02T03:04:05Z", version: str = "1",
                category: str = "laboratory") -> dict:
    return {"resourceType": "Observation", "id": oid, "meta": {"versionId": version},
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": category}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose"}]},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": when,
            "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org",
                              "code": "mmol/L"}}
