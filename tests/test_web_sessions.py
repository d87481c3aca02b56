"""Web sessions without a browser: people made and disabled on the command line, the
password hash, a session ended by its token's revocation or its person's disabling or
its age, and the cookie's flags over TLS."""
from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select

from gateway import create_app
from gateway.cli.main import main
from gateway.storage.models import WebSession, WebUser
from gateway.trust.tokens import create_token, revoke_token
from gateway.trust.users import password_matches


def _sign_in(client, **form) -> object:
    page = client.get("/ui/sign-in").get_data(as_text=True)
    nonce = re.search(r'name="form_nonce" value="([^"]+)"', page)[1]
    return client.post("/ui/sign-in", data={"form_nonce": nonce, **form})


def test_user_commands_create_list_and_disable(runner, app):
    r = runner.invoke(main, ["user", "create", "--username", "sam.ops", "--role", "operator",
                             "--password-stdin"], input="a long enough secret\n")
    assert r.exit_code == 0, r.output
    with app.extensions["gateway"].db.session() as s:
        row = s.scalars(select(WebUser).where(WebUser.username == "sam.ops")).one()
        assert row.password_hash.startswith("scrypt$") and "a long enough" not in row.password_hash
        assert password_matches(row.password_hash, "a long enough secret")
        assert not password_matches(row.password_hash, "a long enough secreT")
    client = app.test_client()
    assert _sign_in(client, username="sam.ops", password="a long enough secret").status_code == 303
    assert client.get("/ui/operator/").status_code == 200
    r = runner.invoke(main, ["user", "list"])
    assert '"username": "sam.ops"' in r.output and "scrypt" not in r.output
    assert runner.invoke(main, ["user", "disable", "sam.ops"]).exit_code == 0
    r = client.get("/ui/operator/")  # the open session ends at its next page
    assert r.status_code == 303 and r.headers["Location"].endswith("/ui/sign-in?why=revoked")
    assert _sign_in(client, username="sam.ops", password="a long enough secret").status_code == 401
    # one line, non-zero exit, for what a person can fix
    r = runner.invoke(main, ["user", "create", "--username", "x y", "--role", "operator",
                             "--password-stdin"], input="a long enough secret\n")
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "username" in r.output
    r = runner.invoke(main, ["user", "create", "--username", "short", "--role", "auditor",
                             "--password-stdin"], input="tiny\n")
    assert r.exit_code == 1 and "at least 12" in r.output


def test_revoking_the_token_ends_its_sessions(app):
    with app.extensions["gateway"].db.session() as s:
        row, token = create_token(s, "desk", "operator", actor="test")
        token_id = row.id
    client = app.test_client()
    assert _sign_in(client, token=token).status_code == 303
    assert client.get("/ui/operator/").status_code == 200
    with app.extensions["gateway"].db.session() as s:
        revoke_token(s, token_id, actor="test")
    assert client.get("/ui/operator/").headers["Location"].endswith("why=revoked")


def test_a_session_ends_at_its_longest_age_however_busy(app):
    with app.extensions["gateway"].db.session() as s:
        _, token = create_token(s, "busy", "operator", actor="test")
    client = app.test_client()
    _sign_in(client, token=token)
    max_age = app.extensions["gateway"].settings.web.max_age_s
    with app.extensions["gateway"].db.session() as s:
        row = s.scalars(select(WebSession).where(WebSession.actor == "busy")).one()
        row.created_at -= timedelta(seconds=max_age + 1)  # signed in that long ago, used now
    assert client.get("/ui/operator/").headers["Location"].endswith("why=expired")


def test_the_cookie_is_secure_behind_tls(sender_config):
    app = create_app({**sender_config, "base_url": "https://gateway.example.org"})
    try:
        with app.extensions["gateway"].db.session() as s:
            _, token = create_token(s, "tls", "auditor", actor="test")
        r = _sign_in(app.test_client(), token=token)
        cookie = next(c for c in r.headers.getlist("Set-Cookie") if c.startswith("rgw_session="))
        assert {"Secure", "HttpOnly", "SameSite=Strict", "Path=/ui"} <= {
            part.strip() for part in cookie.split(";")}
    finally:
        app.extensions["gateway"].close()
