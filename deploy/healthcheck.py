"""Container health check: GET /health on this container's own API port.

Exit 0 when the API answers 200, 1 otherwise (the image's HEALTHCHECK). Over HTTPS when
gunicorn serves TLS (GATEWAY_TLS_CERT_FILE): the certificate is not checked, the call
never leaves the container; under mutual TLS a client certificate is needed, so that
deployment terminates TLS in front of the API instead (deploy/compose.yaml)."""
import os
import ssl
import sys
import urllib.request

port = os.environ.get("GATEWAY_BIND", "0.0.0.0:8080").rsplit(":", 1)[1]
tls = bool(os.environ.get("GATEWAY_TLS_CERT_FILE"))
context = ssl._create_unverified_context() if tls else None
url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/health"
try:
    with urllib.request.urlopen(url, timeout=4, context=context) as answer:
        sys.exit(0 if answer.status == 200 else 1)
except OSError as exc:
    print(f"{url}: {exc}", file=sys.stderr)
    sys.exit(1)
