"""A small resource-server front for the FHIR test server: accepts only access tokens
issued by the test authorization server (oidc-provider) for this FHIR base, then
forwards the request to sekmet unchanged.

    python jwt_proxy.py --port P --upstream http://127.0.0.1:S/fhir --issuer ISS
                        --audience https://base/fhir --token-endpoint URL

`/fhir/metadata` and `/fhir/.well-known/smart-configuration` are public, as SMART
servers make them; every other request needs `Authorization: Bearer <JWT>` signed by a
key of the issuer's JWKS, with iss = issuer, aud = the FHIR base, not expired.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry


class Verifier:
    def __init__(self, issuer: str, audience: str):
        self.issuer = issuer
        self.audience = audience
        self.lock = threading.Lock()
        self.keys: KeySet | None = None
        self.claims = JWTClaimsRegistry(iss={"essential": True, "value": issuer},
                                        aud={"essential": True, "value": audience},
                                        exp={"essential": True})

    def _load(self) -> KeySet:
        conf = requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=5).json()
        return KeySet.import_key_set(requests.get(conf["jwks_uri"], timeout=5).json())

    def verify(self, token: str) -> dict:
        with self.lock:
            if self.keys is None:
                self.keys = self._load()
            keys = self.keys
        try:
            decoded = jwt.decode(token, keys, algorithms=["RS256"])
        except (JoseError, ValueError):
            with self.lock:
                self.keys = self._load()  # rotated keys: one reload
            decoded = jwt.decode(token, self.keys, algorithms=["RS256"])
        self.claims.validate(decoded.claims)
        return decoded.claims


def make_handler(upstream: str, verifier: Verifier, smart_conf: dict, public_base: str):
    session = requests.Session()
    prefix = "/fhir"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/fhir+json", extra=None):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _denied(self, why: str):
            body = json.dumps({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "login", "diagnostics": why}]}).encode()
            self._send(401, body, extra={"WWW-Authenticate": 'Bearer error="invalid_token"'})

        def do_GET(self):
            path, _, query = self.path.partition("?")
            if not path.startswith(prefix):
                return self._send(404, b"{}", "application/json")
            rest = path[len(prefix):]
            if rest == "/.well-known/smart-configuration":
                return self._send(200, json.dumps(smart_conf).encode(), "application/json")
            if rest != "/metadata":
                auth = self.headers.get("Authorization", "")
                if not auth.startswith("Bearer "):
                    return self._denied("no bearer token")
                try:
                    claims = verifier.verify(auth[7:])
                except Exception as exc:  # noqa: BLE001 - any failure is a refusal
                    return self._denied(f"token refused: {type(exc).__name__}")
                scopes = str(claims.get("scope", "")).split()
                if not any(s.startswith("system/") for s in scopes):
                    return self._denied("token has no system scope")
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() in ("accept", "if-none-match", "prefer")}
            resp = session.get(upstream + rest + (f"?{query}" if query else ""), headers=headers, timeout=120)
            extra = {k: v for k, v in resp.headers.items() if k.lower() in ("etag", "last-modified", "date")}
            self._send(resp.status_code, resp.content, resp.headers.get("Content-Type", "application/json"), extra)

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--issuer", required=True)
    ap.add_argument("--audience", required=True)
    ap.add_argument("--token-endpoint", required=True)
    args = ap.parse_args()
    smart_conf = {
        "issuer": args.issuer,
        "token_endpoint": args.token_endpoint,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["system/*.read", "system/*.rs"],
        "capabilities": ["client-confidential-asymmetric"],
    }
    server = ThreadingHTTPServer(("127.0.0.1", args.port),
                                 make_handler(args.upstream.rstrip("/"), Verifier(args.issuer, args.audience),
                                              smart_conf, args.audience))
    server.daemon_threads = True
    started = time.time()
    print(f"jwt proxy on 127.0.0.1:{args.port} -> {args.upstream} (started {started:.0f})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
