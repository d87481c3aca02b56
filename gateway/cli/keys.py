"""`records-gateway keys ...`: the gateway's signing keys."""
from __future__ import annotations

import click

from .common import services


@click.group()
def keys() -> None:
    """The gateway's signing keys."""


@keys.command("rotate")
def keys_rotate() -> None:
    """Sign with a new key from now on; old public keys stay published so old
    signatures (receipts, checkpoints) still verify."""
    from gateway import audit

    svc = services()
    old = svc.keys.current().kid
    kid = svc.keys.rotate()
    with svc.db.session() as s:
        audit.record(s, "admin.key.rotated", actor="cli", role="admin", old_kid=old, new_kid=kid)
    click.echo(f"signing key rotated: {old} -> {kid}")
