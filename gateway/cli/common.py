"""What several command groups share: the services, JSON output, and the root group class
that turns our errors into one line."""
from __future__ import annotations

import json
import os

import click

from gateway.errors import GatewayError

_log_level: str | None = None  # from --log-level: wins over the settings


def set_up_logging(log_level: str | None = None, settings=None) -> None:
    """Logging in the settings' format (`log_format`) at `--log-level`, else the settings'
    level; before the settings are loaded, from GATEWAY_LOG_LEVEL and GATEWAY_LOG_FORMAT."""
    from gateway.runtime.logs import configure_logging

    global _log_level
    _log_level = log_level or _log_level
    if settings is None:
        level = os.environ.get("GATEWAY_LOG_LEVEL", "INFO")
        fmt = os.environ.get("GATEWAY_LOG_FORMAT", "text")
    else:
        level, fmt = settings.log_level, settings.log_format
    configure_logging(_log_level or level, fmt)


def services():
    """The gateway's services from the settings (imported late: keeps `--help` fast)."""
    from gateway.config import load_settings
    from gateway.runtime.services import init_services

    settings = load_settings()
    set_up_logging(settings=settings)
    return init_services(settings)


def echo_json(data) -> None:
    """Print `data` as indented, sorted JSON."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


class OneLineErrors(click.Group):
    """Turns our errors into one line and exit status 1 (2 for bad usage, as click does)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except GatewayError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except OSError as exc:
            click.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
            ctx.exit(1)
