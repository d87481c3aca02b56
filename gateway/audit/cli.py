"""`records-gateway audit ...`: the click group the main CLI attaches (`cli.add_command(audit)`).

`verify` needs no database: exported events, checkpoint documents and the public key.
"""
from __future__ import annotations

import sys

import click

from ..errors import GatewayError
from .verify import verify_files_report


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
