"""`records-gateway fax ...`: fax drop folders, ingest now, and the review queue."""
from __future__ import annotations

from pathlib import Path

import click

from gateway.errors import GatewayError

from .common import services


@click.group()
def fax() -> None:
    """Fax drop folders: ingest now, and the review queue."""


@fax.command("ingest")
def fax_ingest() -> None:
    """Take every complete fax from the drop folders now (the worker does it periodically)."""
    from gateway.engine.faxes import ingest_now

    counts = ingest_now(services())
    click.echo(", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no new faxes")


@fax.command("review")
@click.option("--source", default=None)
def fax_review(source: str | None) -> None:
    """List faxes awaiting review and files in quarantine."""
    from gateway.engine.faxes import read_review

    name, queue = read_review(services(), source, "list", "cli", "operator")
    for item in queue.list():
        click.echo(f"{item.fax_id}  review  {item.pages}p  received {item.received_at}  "
                   f"candidates: {', '.join(item.candidates) or '-'}  ({'; '.join(item.reasons)})")
    for q in queue.quarantined():
        click.echo(f"{q.fax_id}  quarantine  {q.reason}: {q.detail}")


@fax.command("preview")
@click.argument("fax_id")
@click.option("--source", default=None)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def fax_preview(fax_id: str, source: str | None, out: Path) -> None:
    """Write a PNG of the fax's first page."""
    from connectors.fax.review import ReviewError
    from gateway.engine.faxes import read_review

    _, queue = read_review(services(), source, "preview", "cli", "operator", fax_id)
    try:
        out.write_bytes(queue.preview(fax_id).read_bytes())
    except ReviewError as exc:
        raise GatewayError(str(exc)) from None
    click.echo(f"preview written to {out}")


@fax.command("assign")
@click.argument("fax_id")
@click.argument("transfer_id")
@click.option("--source", default=None)
def fax_assign(fax_id: str, transfer_id: str, source: str | None) -> None:
    """Attach a fax awaiting review to an open transfer."""
    from gateway.engine.faxes import assign

    assign(services(), source, fax_id, transfer_id, "cli", "operator")
    click.echo(f"fax {fax_id} assigned to transfer {transfer_id}")


@fax.command("reject")
@click.argument("fax_id")
@click.option("--reason", required=True)
@click.option("--source", default=None)
def fax_reject(fax_id: str, reason: str, source: str | None) -> None:
    """Set a fax aside for good."""
    from gateway.engine.faxes import reject

    reject(services(), source, fax_id, reason, "cli", "operator")
    click.echo(f"fax {fax_id} rejected")
