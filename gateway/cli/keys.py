"""`records-gateway keys ...`: the gateway's signing keys, one per purpose."""
from __future__ import annotations

import click

from gateway.trust.keys import PURPOSES

from .common import services


@click.group()
def keys() -> None:
    """The gateway's signing keys (bundles, receipts, log checkpoints)."""


@keys.command("list")
def keys_list() -> None:
    """Every key with its purpose and state (active, retired, revoked)."""
    for k in services().keys.states():
        click.echo(f"{k['kid']}  {k.get('purpose') or '-':<10} {k['state']:<8} "
                   f"{k.get('created_at') or ''}")


@keys.command("rotate")
@click.option("--purpose", type=click.Choice(PURPOSES), default=None,
              help="Only this purpose's key (default: all three).")
def keys_rotate(purpose: str | None) -> None:
    """Sign with new keys from now on; the old ones are retired: still published, so
    what they signed (bundles, receipts, checkpoints) still verifies."""
    from gateway import audit

    svc = services()
    made = svc.keys.rotate(purpose)
    with svc.db.session() as s:
        audit.record(s, "admin.key.rotated", actor="cli", role="admin", new_kids=made)
    for p, kid in made.items():
        click.echo(f"{p} signing key rotated: now {kid}")


@keys.command("retire")
@click.argument("kid")
def keys_retire(kid: str) -> None:
    """Sign nothing new with KID (a new key takes its purpose); it still verifies."""
    _set_state(kid, "retired")


@keys.command("revoke")
@click.argument("kid")
def keys_revoke(kid: str) -> None:
    """KID leaked: nothing it signed verifies from now on (it leaves the JWKS)."""
    _set_state(kid, "revoked")


def _set_state(kid: str, state: str) -> None:
    from gateway import audit

    svc = services()
    (svc.keys.retire if state == "retired" else svc.keys.revoke)(kid)
    with svc.db.session() as s:
        audit.record(s, f"admin.key.{state}", actor="cli", role="admin", kid=kid)
    click.echo(f"signing key {kid} {state}")
