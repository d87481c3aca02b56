"""`records-gateway transfer ...`: transfers of records to a recipient."""
from __future__ import annotations

from pathlib import Path

import click

from gateway.errors import GatewayError

from .common import echo_json, services
from .progress import follow_transfer


@click.group()
def transfer() -> None:
    """Transfers of records to a recipient."""


@transfer.command("create")
@click.option("--authorization", "authorization_id", required=True)
@click.option("--source", "sources", multiple=True, required=True, help="Configured source name.")
@click.option("--recipient", required=True, help="Configured peer name.")
def transfer_create(authorization_id: str, sources: tuple[str, ...], recipient: str) -> None:
    from gateway.engine.operations import create_transfer

    echo_json(create_transfer(services(), authorization_id, list(sources), recipient, actor="cli",
                              role="operator"))


@transfer.command("status")
@click.argument("transfer_id")
@click.option("--follow", is_flag=True, help="Show a progress bar until the transfer ends.")
@click.option("--timeout", type=float, default=None, help="Give up following after N seconds.")
def transfer_status(transfer_id: str, follow: bool, timeout: float | None) -> None:
    from gateway.engine.operations import get_transfer
    from gateway.engine.transfers import TERMINAL

    svc = services()
    view = get_transfer(svc, transfer_id)
    if follow:
        view = follow_transfer(lambda: get_transfer(svc, transfer_id), timeout)
    echo_json(view)
    if view["state"] in ("failed", "cancelled", "dead_letter"):
        raise GatewayError(f"transfer {transfer_id} {view['state']}: {view['reason']}")
    if follow and view["state"] not in TERMINAL:
        raise GatewayError(f"transfer {transfer_id} still {view['state']} after {timeout}s")


@transfer.command("report")
@click.argument("transfer_id")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
def transfer_report(transfer_id: str, as_json: bool) -> None:
    """What each source found, delivers, refused (and why), and could not be asked for."""
    from gateway.engine.operations import get_transfer

    view = get_transfer(services(), transfer_id)
    if as_json:
        echo_json(view["completeness"])
        return
    click.echo(f"transfer {view['id']}  {view['state']}")
    for line in completeness_lines(view["completeness"]):
        click.echo(line)


def completeness_lines(report: dict) -> list[str]:
    """The completeness report as a table a person reads: a row per source, then why."""
    head = f"{'source':<20} {'state':<10} {'found':>6} {'delivered':>9} {'pending':>7} {'refused':>7}"
    lines = [head]
    for name, src in report.items():
        refused = sum(r["count"] for r in src["refused"])
        lines.append(f"{name:<20} {src['state']:<10} {src['found']:>6} {src['delivered']:>9} "
                     f"{src['pending']:>7} {refused:>7}")
        lines += [f"  refused {r['count']}: {r['reason']}" for r in src["refused"]]
        lines += [f"  invalid: {g['what']} ({g['reason']})" for g in src["invalid"]]
        lines += [f"  not searchable: {g['what']} ({g['reason']})" for g in src["notSearchable"]]
        lines += [f"  unresolved: {g['what']} ({g['reason']})" for g in src["unresolved"]]
    complete = all(src["complete"] for src in report.values())
    lines.append("complete: yes" if complete else "complete: no (see above)")
    return lines


@transfer.command("list")
@click.option("--state", default=None)
@click.option("--authorization", "authorization_id", default=None)
@click.option("--limit", type=int, default=50)
def transfer_list(state, authorization_id, limit) -> None:
    from gateway.engine.operations import list_transfers

    for t in list_transfers(services(), state, authorization_id, limit):
        click.echo(f"{t['id']}  {t['state']:<16} {t['percent']:>3}%  {t['recipient']}  "
                   f"{t['createdAt']}")


@transfer.command("retry")
@click.argument("transfer_id")
@click.option("--skip-failed-items", is_flag=True,
              help="Deliver the rest without the records that cannot be mapped.")
def transfer_retry(transfer_id: str, skip_failed_items: bool) -> None:
    from gateway.engine.operations import retry_transfer

    view = retry_transfer(services(), transfer_id, "cli", "operator", skip_failed_items)
    click.echo(f"transfer {transfer_id} resumes at {view['state']}")


@transfer.command("replay")
@click.argument("transfer_id")
def transfer_replay(transfer_id: str) -> None:
    """Deliver a dead-lettered transfer again."""
    from gateway.engine.operations import replay_transfer

    view = replay_transfer(services(), transfer_id, "cli", "operator")
    click.echo(f"transfer {transfer_id} resumes at {view['state']}")


@transfer.command("cancel")
@click.argument("transfer_id")
@click.option("--reason", default="cancelled by an operator")
def transfer_cancel(transfer_id: str, reason: str) -> None:
    from gateway.engine.operations import cancel_transfer

    cancel_transfer(services(), transfer_id, reason, "cli", "operator")
    click.echo(f"transfer {transfer_id} cancelled")


@transfer.command("cover-sheet")
@click.argument("transfer_id")
@click.option("--source", default=None, help="The fax source (needed when there are several).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def transfer_cover_sheet(transfer_id: str, source: str | None, out: Path) -> None:
    """Write the records-request cover sheet the provider faxes back first."""
    from gateway.engine.faxes import cover_sheet

    out.write_bytes(cover_sheet(services(), transfer_id, source, "cli", "operator"))
    click.echo(f"cover sheet written to {out}")
