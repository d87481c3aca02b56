"""`records-gateway user ...`: people who sign in to the web pages with a password."""
from __future__ import annotations

import click

from .common import echo_json, services


@click.group()
def user() -> None:
    """People who sign in to the web pages (username and password)."""


@user.command("create")
@click.option("--username", required=True, help="What they type to sign in.")
@click.option("--role", required=True,
              type=click.Choice(["operator", "recipient", "auditor", "admin"]))
@click.option("--organization", default=None,
              help="Recipient staff: the center whose inbox they read.")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from standard input (else it is asked for twice).")
def user_create(username: str, role: str, organization: str | None, password_stdin: bool) -> None:
    """Create a person; the password is stored only as a scrypt hash."""
    from gateway.trust.users import create_user

    if password_stdin:
        password = click.get_text_stream("stdin").readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    svc = services()
    with svc.db.session() as s:
        row = create_user(s, username, password, role, actor="cli", organization=organization)
        click.echo(f"person {row.username} created ({role}), id {row.id}")


@user.command("disable")
@click.argument("username")
def user_disable(username: str) -> None:
    """Refuse this person's sign-in; their open sessions end at their next page."""
    from gateway.trust.users import disable_user

    svc = services()
    with svc.db.session() as s:
        disable_user(s, username, actor="cli")
    click.echo(f"person {username} disabled")


@user.command("list")
def user_list() -> None:
    """Every person: name, role, organization, whether disabled (no password hashes)."""
    from gateway.trust.users import list_users

    svc = services()
    with svc.db.session() as s:
        echo_json([{"username": u.username, "role": u.role, "organization": u.organization,
                    "created": u.created_at.isoformat(),
                    "disabled": u.disabled_at.isoformat() if u.disabled_at else None}
                   for u in list_users(s)])
