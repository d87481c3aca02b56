"""`records-gateway audit ...`: audit log tools for auditors.

`verify` needs no database: exported events, checkpoint documents and the public key.
`checkpoint`, `export` and `checkpoints` read this gateway's log.
"""
from __future__ import annotations

import json
import sys

import click

from gateway.audit.verify import verify_files_report
from gateway.errors import GatewayError

from .common import echo_json, services


@click.group("audit")
def audit() -> None:
    """Audit log tools for auditors."""


@audit.command("verify")
@click.option("--events", "events", type=click.Path(exists=True, dir_okay=False),
              help="Exported events: NDJSON log entries, NDJSON FHIR AuditEvents, or a FHIR "
                   "Bundle. Without it only the checkpoints are checked.")
@click.option("--checkpoints", "checkpoints", required=True, multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="Checkpoint document(s); repeat to add ones kept from earlier downloads.")
@click.option("--public-key", "public_key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The gateway's log signing key: PEM, JWK or JWKS.")
@click.option("--partial", is_flag=True,
              help="The export holds only some events (one patient or transfer): check each "
                   "by its inclusion proof instead of recomputing the whole tree.")
def verify_command(events: str | None, checkpoints: tuple[str, ...], public_key: str, partial: bool) -> None:
    """Recompute the tree, check every proof and checkpoint signature; one line per problem."""
    try:
        report = verify_files_report(events, list(checkpoints), public_key, partial=partial)
    except (GatewayError, ValueError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    for line in report.problems:
        click.echo(line)
    click.echo(report.summary(), err=True)
    sys.exit(1 if report.problems else 0)


@audit.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign a checkpoint of the log now (the worker also does it periodically)."""
    from gateway.engine.checkpoints import checkpoint_now

    cp = checkpoint_now(services(), actor="cli")
    if cp is None:
        raise GatewayError("the audit log is empty; nothing to checkpoint")
    echo_json(cp)


@audit.command("export")
@click.option("--out", type=click.File("w"), default="-", help="File to write (default stdout).")
@click.option("--fhir", is_flag=True, help="FHIR AuditEvents instead of log entries.")
@click.option("--transfer", default=None)
@click.option("--authorization", default=None)
def audit_export(out, fhir: bool, transfer: str | None, authorization: str | None) -> None:
    """Export events with inclusion proofs as NDJSON, for `audit verify`."""
    from gateway.audit import export
    from gateway.engine.checkpoints import identity

    svc = services()
    filters = {k: v for k, v in {"transfer_id": transfer, "authorization_id": authorization}.items() if v}
    with svc.db.session() as s:
        n = export.write_ndjson(s, out, fhir=fhir, me=identity(svc), **filters)
    click.echo(f"{n} event(s) exported", err=True)


@audit.command("checkpoints")
@click.option("--out", type=click.File("w"), default="-")
def audit_checkpoints(out) -> None:
    """Write the checkpoint document (checkpoints, consistency proofs, public keys)."""
    from gateway.audit import checkpoints

    svc = services()
    with svc.db.session() as s:
        doc = checkpoints.checkpoints_document(s, jwks=svc.keys.jwks())
    json.dump(doc, out, indent=1)
    click.echo(f"{len(doc['checkpoints'])} checkpoint(s)", err=True)
