"""Connector options as configured, plus what the gateway holds for them (keys kept in
its data dir, never in the configuration file)."""
from __future__ import annotations

from .config import SourceConfig
from .services import Services


def connector_options(svc: Services, source: SourceConfig) -> dict:
    options = dict(source.options)
    if source.kind == "fax-drop":
        options.setdefault("cover_key_file", str(svc.settings.keys_dir / "fax-cover.key"))
    if source.kind == "fhir-rest":
        auth = dict(options.get("auth") or {})
        if auth.get("type") == "smart-backend" and not (auth.get("private_key") or
                                                          auth.get("private_key_file")):
            # the gateway's own SMART client key, published in /.well-known/jwks.json
            from .keys import ClientKeys

            keys = ClientKeys(svc.settings.keys_dir)
            auth["private_key_file"] = str(keys.path)
            auth.setdefault("kid", keys.kid())
            options["auth"] = auth
    return options
