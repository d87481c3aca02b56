"""Records interoperability gateway for second opinions.

One package per role (docs/architecture.md has the map): storage, exchange, audit,
trust, runtime, outbound (sending) and inbound (receiving), engine, and the faces (api,
web, cli). This module builds the Flask app from settings."""
from __future__ import annotations

from typing import Any

from flask import Flask

from gateway.runtime.services import init_services

from .config import load_settings


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The Flask app: settings (environment, file, then `config`), services, blueprints."""
    settings = load_settings(config)
    svc = init_services(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["gateway"] = svc
    from .api import register

    register(app, settings.mode)
    return app
