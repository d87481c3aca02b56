"""Records interoperability gateway for second opinions."""
from __future__ import annotations

from typing import Any

from flask import Flask

from .config import load_settings
from .services import init_services


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
