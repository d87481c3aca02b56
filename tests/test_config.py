import pytest

from gateway.config import load_settings
from gateway.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in [k for k in os.environ if k.startswith("GATEWAY_")]:
        monkeypatch.delenv(key)


def test_defaults_embedded():
    s = load_settings()
    assert s.redis_url is None
    assert s.db_url.startswith("sqlite:///") and s.db_url.endswith("gateway-data/gateway.db")


def test_environment_with_nesting(monkeypatch):
    monkeypatch.setenv("GATEWAY_PORT", "9123")
    monkeypatch.setenv("GATEWAY_PEERS__CENTER__BASE_URL", "https://center.example/")
    monkeypatch.setenv("GATEWAY_PEERS__CENTER__ORGANIZATION", "org-center")
    monkeypatch.setenv("GATEWAY_RETRY__MAX_ATTEMPTS", "7")
    s = load_settings()
    assert s.port == 9123
    assert s.peers["center"].base_url == "https://center.example"
    assert s.retry.max_attempts == 7


def test_file_then_env_then_code(monkeypatch, tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text('organization = "from-file"\nport = 1111\n[sources.fax]\nkind = "pdf-folder"\n'
                   'organization = "org-a"\nendpoint = "/srv/drop"\n')
    monkeypatch.setenv("GATEWAY_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("GATEWAY_PORT", "2222")
    s = load_settings({"organization": "from-code"})
    assert (s.organization, s.port) == ("from-code", 2222)
    assert s.sources["fax"].endpoint == "/srv/drop"


@pytest.mark.parametrize("env,value,named", [
    ("GATEWAY_PORT", "eighty", "GATEWAY_PORT"),
    ("GATEWAY_DATABASE_URL", "mysql://x", "GATEWAY_DATABASE_URL"),
    ("GATEWAY_REDIS_URL", "http://x", "GATEWAY_REDIS_URL"),
    ("GATEWAY_PEERS__C__BASE_URL", "ftp://x", "GATEWAY_PEERS__C"),
    ("GATEWAY_MODE", "sideways", "GATEWAY_MODE"),
])
def test_wrong_setting_is_named(monkeypatch, env, value, named):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert named in str(err.value)


def test_unknown_setting_in_file(monkeypatch, tmp_path):
    cfg = tmp_path / "gw.json"
    cfg.write_text('{"prot": 1}')
    monkeypatch.setenv("GATEWAY_CONFIG_FILE", str(cfg))
    with pytest.raises(ConfigError, match="prot"):
        load_settings()


def test_unreadable_or_broken_file(monkeypatch, tmp_path):
    monkeypatch.setenv("GATEWAY_CONFIG_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings()
    bad = tmp_path / "bad.toml"
    bad.write_text("port = = 3")
    monkeypatch.setenv("GATEWAY_CONFIG_FILE", str(bad))
    with pytest.raises(ConfigError, match="not valid"):
        load_settings()


@pytest.mark.parametrize("where, settings", [
    ("peers.center", {"peers": {"center": {"base_url": "http://center.example",
                                           "organization": "org-center"}}}),
    ("peers.center", {"peers": {"center": {"base_url": "https://center.example",
                                           "jwks_url": "http://keys.example/jwks.json",
                                           "organization": "org-center"}}}),
    ("peers.center.dicom", {"peers": {"center": {
        "base_url": "https://center.example", "organization": "org-center",
        "dicom": {"kind": "stow-rs", "url": "http://pacs.center.example/dicom-web"}}}}),
    ("senders.hospital", {"senders": {"hospital": {"organization": "org-h",
                                                   "base_url": "http://10.1.2.3:8080"}}}),
])
def test_plain_http_to_another_host_is_refused(where, settings):
    """Everything between hosts goes over TLS unless a setting says so explicitly."""
    with pytest.raises(ConfigError) as err:
        load_settings(settings)
    assert f"setting {where}" in str(err.value) and "allow_http" in str(err.value)


def test_plain_http_on_loopback_or_when_allowed():
    s = load_settings({
        "peers": {"local": {"base_url": "http://127.0.0.1:8081", "organization": "o1"},
                  "v6": {"base_url": "http://[::1]:8082", "organization": "o2"},
                  "named": {"base_url": "http://localhost:8083", "organization": "o3"},
                  "lab": {"base_url": "http://center.example", "organization": "o4",
                          "allow_http": True},
                  "tls": {"base_url": "https://center.example", "organization": "o5"}},
        "senders": {"h": {"organization": "oh", "base_url": "http://127.0.0.5:9000"}}})
    assert s.peers["lab"].base_url == "http://center.example" and len(s.peers) == 5
