"""`records-gateway authorization ...`: signed release authorizations."""
from __future__ import annotations

import click

from .common import echo_json, services


@click.group()
def authorization() -> None:
    """Signed release authorizations."""


def _read_jws(source) -> str:
    return source.read().strip()


@authorization.command("import")
@click.argument("source", type=click.File("r"))
def authorization_import(source) -> None:
    """Verify and store a signed authorization (a file with the compact JWS, or -)."""
    from gateway.engine.operations import authorization_view, import_authorization

    row = import_authorization(services(), _read_jws(source), actor="cli", role="operator")
    echo_json(authorization_view(row))


@authorization.command("verify")
@click.argument("source", type=click.File("r"))
def authorization_verify(source) -> None:
    """Verify a signed authorization without storing it."""
    from gateway.engine.operations import trust_store
    from gateway.trust.authorizations import verify_authorization

    verified = verify_authorization(_read_jws(source), trust_store(services()))
    click.echo(f"valid: authorization {verified.id} from {verified.issuer}, "
               f"expires {verified.expires_at.isoformat()}")


@authorization.command("revoke")
@click.argument("authorization_id")
@click.option("--reason", required=True)
def authorization_revoke(authorization_id: str, reason: str) -> None:
    """Revoke at once; transfers in flight under it are cancelled."""
    from gateway.engine.operations import revoke_authorization

    row, stopped = revoke_authorization(services(), authorization_id, reason, actor="cli",
                                        role="operator")
    click.echo(f"authorization {row.id} revoked; {stopped} transfer(s) cancelled")
