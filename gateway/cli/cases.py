"""`records-gateway case ...`: cases, everything done under one authorization."""
from __future__ import annotations

import sys
import time

import click

from gateway.errors import GatewayError

from .common import echo_json, services


@click.group()
def case() -> None:
    """Cases: a patient's whole request, run by itself under one authorization."""


@case.command("list")
@click.option("--state", type=click.Choice(["review", "open", "closed"]), default=None)
@click.option("--limit", type=int, default=50)
def case_list(state: str | None, limit: int) -> None:
    from gateway.engine.operations import list_cases

    for c in list_cases(services(), state, limit):
        statuses = ", ".join(f"{s['name']}={s['status']}" for s in c["sources"]) or "no sources"
        click.echo(f"{c['id']}  {c['state']:<7} {'complete' if c['complete'] else '':<8} "
                   f"{c['recipient'] or 'unrouted'}  {statuses}")


@case.command("show")
@click.argument("case_id")
def case_show(case_id: str) -> None:
    from gateway.engine.operations import get_case

    echo_json(get_case(services(), case_id))


@case.command("follow")
@click.argument("case_id")
@click.option("--timeout", type=float, default=None, help="Give up following after N seconds.")
def case_follow(case_id: str, timeout: float | None) -> None:
    """Show the case's progress live until it is complete or closed."""
    from gateway.engine.operations import get_case

    svc = services()
    deadline = time.monotonic() + timeout if timeout else None
    view = get_case(svc, case_id)

    def label(_) -> str:
        return " ".join(f"{s['name']}:{s['status']}" for s in view["sources"])

    with click.progressbar(length=100, label=f"case {case_id[:8]}", file=sys.stderr,
                           show_percent=True, show_eta=False, item_show_func=label) as bar:
        while True:
            bar.update(view["percent"] - bar.pos)
            if view["complete"] or view["state"] == "closed":
                break
            if deadline and time.monotonic() > deadline:
                break
            time.sleep(0.5)
            view = get_case(svc, case_id)
    echo_json(view)
    if not (view["complete"] or view["state"] == "closed"):
        raise GatewayError(f"case {case_id} still {view['state']} and not complete after {timeout}s")


@case.command("approve")
@click.argument("case_id")
def case_approve(case_id: str) -> None:
    """Let a case waiting for review start its review sources."""
    from gateway.engine.operations import approve_case

    view = approve_case(services(), case_id, "cli", "operator")
    click.echo(f"case {case_id} approved; {len(view['transfers'])} transfer(s)")


@case.command("no-records")
@click.argument("case_id")
@click.argument("source")
@click.option("--reason", required=True, help="Why the source has nothing (e.g. the office's answer).")
def case_no_records(case_id: str, source: str, reason: str) -> None:
    """Record that SOURCE holds no records for the case's patient."""
    from gateway.engine.operations import mark_no_records

    mark_no_records(services(), case_id, source, reason, "cli", "operator")
    click.echo(f"case {case_id}: source {source} has no records")


@case.command("close")
@click.argument("case_id")
@click.option("--reason", default=None)
@click.option("--event", default=None, help="The authorization's expiration event happened.")
def case_close(case_id: str, reason: str | None, event: str | None) -> None:
    """Close a case: nothing more is pulled or sent under it."""
    from gateway.engine.operations import close_case

    close_case(services(), case_id, "cli", "operator", reason=reason, event=event)
    click.echo(f"case {case_id} closed")


@case.command("tick")
def case_tick() -> None:
    """One pass now: the intake folder, then every open case (the worker does this itself)."""
    from gateway.engine.unattended import tick_now

    counts = tick_now(services())
    click.echo(f"{counts['imported']} imported, {counts['rejected']} refused, "
               f"{counts['cases']} case(s) checked")
