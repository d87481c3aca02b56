"""WSGI entry point for gunicorn: `gunicorn -c deploy/gunicorn.conf.py gateway.wsgi:app`.
Settings come from the environment (GATEWAY_*) or GATEWAY_CONFIG_FILE."""
from . import create_app
from .config import load_settings
from .runtime.logs import configure_logging

_settings = load_settings()
configure_logging(_settings.log_level, _settings.log_format)  # before the app logs anything
app = create_app()
