"""`records-gateway requests ...`: the second-opinion center's requests."""
from __future__ import annotations

import click

from .common import echo_json, services


@click.group()
def requests() -> None:
    """The center's requests: each provider asked, and where its answer stands."""


@requests.command("list")
@click.option("--state", type=click.Choice(["open", "complete", "revoked", "expired"]), default=None)
@click.option("--limit", type=int, default=50)
def requests_list(state: str | None, limit: int) -> None:
    from sqlalchemy import select

    from gateway.center.requests import reference
    from gateway.storage.models import CenterRequest

    with services().db.session() as s:
        q = select(CenterRequest).order_by(CenterRequest.created_at.desc()).limit(limit)
        if state:
            q = q.where(CenterRequest.state == state)
        for row in s.scalars(q):
            providers = ", ".join(f"{p.name}={p.status}" for p in row.providers)
            click.echo(f"{row.id}  {reference(row.id)}  {row.state:<8} {providers}")


@requests.command("show")
@click.argument("request_id")
def requests_show(request_id: str) -> None:
    from gateway import audit
    from gateway.center.requests import get, staff_view

    with services().db.session() as s:
        row = get(s, request_id)
        audit.record(s, "cli.read.center-request", actor="cli", role="operator", request=row.id,
                     authorization_id=row.authorization_id)
        echo_json(staff_view(row))


@requests.command("tick")
def requests_tick() -> None:
    """One pass now: faxed replies, arrivals, reminders and deadlines."""
    from gateway.center.tasks import tick_now

    echo_json(tick_now(services()))


@requests.command("opinion-ready")
@click.argument("request_id")
def requests_opinion_ready(request_id: str) -> None:
    """Record that the written opinion is ready (the patient's status page says so)."""
    from gateway.center.requests import mark_opinion_ready

    mark_opinion_ready(services(), request_id, actor="cli", role="operator")
    click.echo(f"request {request_id}: the opinion is ready")


@requests.command("issuer-jwks")
def requests_issuer_jwks() -> None:
    """The trust document for the intake issuer key (hospitals add it to their trust file)."""
    from gateway.center.keys import trust_entry
    from gateway.center.requests import center

    svc = services()
    center(svc)
    echo_json(trust_entry(svc))


@requests.command("invite")
@click.option("--email", "address", required=True,
              help="The patient's address: the one-time link to the form goes there.")
@click.option("--link-base", default=None, help="The address patients reach (default: base_url).")
def requests_invite(address: str, link_base: str | None) -> None:
    """Email a patient a one-time link to fill in and sign the request form alone."""
    from gateway.center.invites import invite

    invite(services(), address, actor="cli", role="operator", link_base=link_base)
    click.echo("invitation sent")


@requests.command("reissue-link")
@click.argument("request_id")
@click.option("--link-base", default=None, help="The address patients reach (default: base_url).")
def requests_reissue_link(request_id: str, link_base: str | None) -> None:
    """Email the patient a new status link; the previous one stops working at once."""
    from gateway.center.links import reissue

    reissue(services(), request_id, actor="cli", role="operator", link_base=link_base)
    click.echo(f"request {request_id}: a new status link was emailed; the previous one is revoked")
