"""The shipped deployments parse and serve HTTPS only (the gunicorn settings take the
same TLS files as `serve`, TLS 1.2 at least, a client certificate where a CA is set)."""
from __future__ import annotations

import runpy
import ssl
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
TLS_VARS = {"GATEWAY_TLS_CERT_FILE", "GATEWAY_TLS_KEY_FILE", "GATEWAY_TLS_CLIENT_CA_FILE"}


def test_kubernetes_and_compose_files_parse_and_the_api_is_https():
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all((DEPLOY / "k8s" / "gateway.yaml").read_text())}
    api = docs["records-gateway-api"]["spec"]["template"]["spec"]["containers"][0]
    assert TLS_VARS <= {e["name"] for e in api["env"]}
    assert docs["records-gateway"]["spec"]["ports"] == [{"port": 443, "targetPort": 8080}]
    for name in ("records-gateway-worker", "records-gateway-reconciler"):
        container = docs[name]["spec"]["template"]["spec"]["containers"][0]
        assert {m["name"] for m in container["volumeMounts"]} == {"config", "secrets", "data"}
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert TLS_VARS <= set(compose["services"]["api"]["environment"])
    assert compose["services"]["api"]["ports"] == ["8443:8080"]


def test_gunicorn_settings_take_the_tls_files(monkeypatch, tmp_path):
    files = {"GATEWAY_TLS_CERT_FILE": "tls.crt", "GATEWAY_TLS_KEY_FILE": "tls.key",
             "GATEWAY_TLS_CLIENT_CA_FILE": "ca.pem"}
    for var, name in files.items():
        monkeypatch.setenv(var, str(tmp_path / name))
    conf = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    assert (conf["certfile"], conf["keyfile"]) == (str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
    assert conf["ca_certs"] == str(tmp_path / "ca.pem") and conf["cert_reqs"] == ssl.CERT_REQUIRED
    context = conf["ssl_context"](None, lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
