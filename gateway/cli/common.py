"""What several command groups share: the services, JSON output, and the root group class
that turns our errors into one line."""
from __future__ import annotations

import json

import click

from gateway.errors import GatewayError


def services():
    """The gateway's services from the settings (imported late: keeps `--help` fast)."""
    from gateway.config import load_settings
    from gateway.runtime.services import init_services

    return init_services(load_settings())


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
