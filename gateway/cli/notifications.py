"""`records-gateway notification ...`: what the gateway told people; replaying a dead one."""
from __future__ import annotations

import click

from .common import services


@click.group()
def notification() -> None:
    """Notifications sent to webhooks and by email."""


@notification.command("list")
@click.option("--state", type=click.Choice(["pending", "sent", "dead"]), default=None)
@click.option("--limit", type=int, default=100, show_default=True)
def notification_list(state: str | None, limit: int) -> None:
    """One line per notification, newest first: id, state, attempts, channel, event, error."""
    from gateway.notify.outbox import list_notifications

    svc = services()
    with svc.db.session() as s:
        rows = list_notifications(s, state, limit)
    for n in rows:
        about = n["case"] or n["transfer"] or n["authorization"] or "-"
        click.echo(f"{n['id']}  {n['state']:<7} {n['attempts']:>3}  {n['channel']:<20} "
                   f"{n['type']:<22} {about}" + (f"  ({n['last_error']})" if n["last_error"] else ""))
    if not rows:
        click.echo(f"no {state + ' ' if state else ''}notifications")


@notification.command("replay")
@click.argument("notification_id")
def notification_replay(notification_id: str) -> None:
    """Send a dead notification again, with the same event id."""
    from gateway.notify.outbox import replay

    svc = services()
    with svc.db.session() as s:
        view = replay(s, notification_id, "cli", "operator")
    click.echo(f"notification {view['id']} ({view['channel']}, {view['type']}) queued again")
