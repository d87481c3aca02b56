"""docs/settings.md is generated from the settings model: regenerating it gives the
committed page byte for byte (a field added, renamed or re-described without
regenerating fails here), and every field has a description."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.cli.settings_reference import reference
from gateway.config import Settings

PAGE = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


def rows() -> dict[str, list[str]]:
    out = {}
    for line in reference().splitlines():
        if line.startswith("| ") and not line.startswith(("| setting", "| ---")):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            out[cells[0]] = cells
    return out


def test_the_committed_page_is_what_the_model_generates():
    done = subprocess.run([sys.executable, "-m", "gateway", "settings-reference"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == PAGE.read_text(), (
        "docs/settings.md is out of date: records-gateway settings-reference > docs/settings.md")


def test_every_setting_has_type_default_variable_and_description():
    table = rows()
    assert set(Settings.model_fields) <= set(table)
    undocumented = [name for name, cells in table.items() if not cells[4]]
    assert undocumented == [], f"add a comment beside these fields in gateway/config.py: {undocumented}"
    assert table["redis_url"][1:4] == ["string or none", "none", "`GATEWAY_REDIS_URL`"]
    assert table["port"][2] == "`8080`"
    assert table["peers.<name>.base_url"][3] == "`GATEWAY_PEERS__<NAME>__BASE_URL`"
    assert table["peers.<name>.ca_file"][4]  # inherited from TlsClient, still described
    # a table's own default (notify.retry is not the transfers' retry)
    assert table["notify.retry.max_attempts"][2] == "`12`"
    assert table["retry.max_attempts"][2] == "`200`"
    assert table["notify.email.from"][2] == "required"
    assert table["notify.webhooks[].url"][3] == "(JSON, whole list)"


def test_the_documented_variables_set_the_settings(monkeypatch):
    from gateway.config import load_settings

    for key in [k for k in __import__("os").environ if k.startswith("GATEWAY_")]:
        monkeypatch.delenv(key)
    table = rows()
    values = {"notify.retry.max_attempts": "7", "peers.<name>.organization": "org-x",
              "peers.<name>.base_url": "https://center.example", "port": "9443"}
    for name, value in values.items():
        monkeypatch.setenv(table[name][3].strip("`").replace("<NAME>", "CENTER"), value)
    settings = load_settings()
    assert settings.notify.retry.max_attempts == 7 and settings.port == 9443
    assert settings.peers["center"].base_url == "https://center.example"


def test_tables_of_several_kinds_get_a_section_each():
    from typing import Literal

    from pydantic import BaseModel, Field

    class Folder(BaseModel):
        """Blobs in a folder."""

        kind: Literal["folder"] = "folder"  # the folder kind
        path: str = "blobs"  # where

    class Bucket(BaseModel):
        """Blobs in a bucket."""

        kind: Literal["bucket"]  # the bucket kind
        name: str  # the bucket's name

    class Model(BaseModel):
        store: Folder | Bucket = Field(default_factory=Folder, discriminator="kind")  # blobs go here
        lanes: list[Folder] = Field(default_factory=list)  # more folders

    page = reference(Model)
    assert '## store (kind = "folder")' in page and '## store (kind = "bucket")' in page
    assert "| store.path | string | `\"blobs\"` | `GATEWAY_STORE__PATH` | where |" in page
    assert "| store.name | string | required | `GATEWAY_STORE__NAME` | the bucket's name |" in page
    assert "| lanes[].path | string | `\"blobs\"` | (JSON, whole list) | where |" in page
    assert "| store | table | (table below) | `GATEWAY_STORE` | blobs go here |" in page
