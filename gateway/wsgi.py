"""WSGI entry point for gunicorn: `gunicorn -c deploy/gunicorn.conf.py gateway.wsgi:app`.
Settings come from the environment (GATEWAY_*) or GATEWAY_CONFIG_FILE."""
from . import create_app

app = create_app()
