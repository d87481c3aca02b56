"""`records-gateway token ...`: API tokens."""
from __future__ import annotations

import re
from datetime import timedelta

import click

from .common import services

UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def _lifetime(_ctx, _param, value: str | None) -> timedelta | None:
    """'90d', '12h', '30m' -> a timedelta (None: the token does not expire)."""
    if value is None:
        return None
    match = re.fullmatch(r"([1-9][0-9]{0,5})([mhd])", value.strip())
    if match is None:
        raise click.BadParameter("give a number and a unit: 30m, 12h or 90d")
    return timedelta(**{UNITS[match[2]]: int(match[1])})


@click.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--name", required=True, help="Who or what uses it (shown in the audit log).")
@click.option("--role", required=True,
              type=click.Choice(["operator", "recipient", "auditor", "admin", "peer"]))
@click.option("--organization", default=None,
              help="Recipient tokens: the center whose inbox it reads (default: this gateway's).")
@click.option("--expires-in", "expires_in", default=None, callback=_lifetime,
              help="Lifetime, e.g. 30m, 12h, 90d (default: until revoked).")
def token_create(name: str, role: str, organization: str | None,
                 expires_in: timedelta | None) -> None:
    """Create a token; it is printed once and stored only hashed."""
    from gateway.trust.tokens import create_token

    svc = services()
    with svc.db.session() as s:
        row, plain = create_token(s, name, role, actor="cli", organization=organization,
                                  expires_in=expires_in)
        token_id = row.id
        until = f", expires {row.expires_at.isoformat()}" if row.expires_at else ""
    click.echo(f"token id {token_id} ({role}{until}):", err=True)
    click.echo(plain)


@token.command("revoke")
@click.argument("token_id")
def token_revoke(token_id: str) -> None:
    """Revoke a token at once: every later request with it is refused (401)."""
    from gateway.trust.tokens import revoke_token

    svc = services()
    with svc.db.session() as s:
        revoke_token(s, token_id, actor="cli")
    click.echo(f"token {token_id} revoked")
