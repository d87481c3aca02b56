"""`records-gateway token ...`: API tokens."""
from __future__ import annotations

import click

from .common import services


@click.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--name", required=True, help="Who or what uses it (shown in the audit log).")
@click.option("--role", required=True,
              type=click.Choice(["operator", "recipient", "auditor", "admin", "peer"]))
@click.option("--organization", default=None,
              help="Recipient tokens: the center whose inbox it reads (default: this gateway's).")
def token_create(name: str, role: str, organization: str | None) -> None:
    """Create a token; it is printed once and stored only hashed."""
    from gateway.trust.tokens import create_token

    svc = services()
    with svc.db.session() as s:
        row, plain = create_token(s, name, role, actor="cli", organization=organization)
        token_id = row.id
    click.echo(f"token id {token_id} ({role}):", err=True)
    click.echo(plain)


@token.command("revoke")
@click.argument("token_id")
def token_revoke(token_id: str) -> None:
    from gateway.trust.tokens import revoke_token

    svc = services()
    with svc.db.session() as s:
        revoke_token(s, token_id, actor="cli")
    click.echo(f"token {token_id} revoked")
