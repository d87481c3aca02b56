"""API tokens expire at the time set when they were made, and a revoked one is refused
at once: through the API, and through `records-gateway token`."""
import os
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from gateway.cli.main import main
from gateway.errors import InvalidInput, Unauthenticated
from gateway.storage.db import Database
from gateway.storage.models import ApiToken, AuditEvent, utcnow
from gateway.trust.tokens import authenticate, create_token, revoke_token

from tests.helpers import bearer


def _token(app, role="operator", **kw):
    with app.extensions["gateway"].db.session() as s:
        row, plain = create_token(s, f"life-{role}", role, actor="test", **kw)
    return row.id, plain


def _age(app, token_id, by: timedelta):
    """The token as it stands `by` later: its expiry moved back by that much."""
    with app.extensions["gateway"].db.session() as s:
        row = s.get(ApiToken, token_id)
        s.execute(update(ApiToken).where(ApiToken.id == token_id)
                  .values(expires_at=row.expires_at - by))


def test_a_token_works_until_it_expires(app, client):
    token_id, plain = _token(app, expires_in=timedelta(hours=1))
    assert client.get("/transfers", headers=bearer(plain)).status_code == 200
    _age(app, token_id, timedelta(hours=1, seconds=1))
    r = client.get("/transfers", headers=bearer(plain))
    assert r.status_code == 401 and r.get_json()["resourceType"] == "OperationOutcome"
    assert "expired" in r.get_json()["issue"][0]["diagnostics"]


def test_expiry_is_set_at_creation_and_audited(app):
    before = utcnow()
    token_id, _ = _token(app, "auditor", expires_in=timedelta(days=90))
    with app.extensions["gateway"].db.session() as s:
        row = s.get(ApiToken, token_id)
        event = s.scalars(select(AuditEvent).filter_by(type="admin.token.created")).one()
    assert timedelta(days=90) <= row.expires_at - before < timedelta(days=90, minutes=1)
    assert event.detail["expires_at"] == row.expires_at.isoformat()
    forever_id, _ = _token(app, "admin")
    with app.extensions["gateway"].db.session() as s:
        assert s.get(ApiToken, forever_id).expires_at is None


def test_a_lifetime_must_be_positive(app):
    with pytest.raises(InvalidInput, match="positive"):
        _token(app, expires_in=timedelta(0))


def test_cli_creates_expiring_tokens_and_revokes_them(runner, sender_config):
    from gateway import create_app

    made = runner.invoke(main, ["token", "create", "--name", "ops", "--role", "operator",
                                "--expires-in", "12h"])
    assert made.exit_code == 0, made.output
    plain = made.stdout.strip().splitlines()[-1]
    assert plain.startswith("rgw_") and "expires" in made.stderr
    bad = runner.invoke(main, ["token", "create", "--name", "x", "--role", "operator",
                               "--expires-in", "soon"])
    assert bad.exit_code == 2 and "30m, 12h or 90d" in bad.output
    app = create_app(sender_config)
    try:
        client = app.test_client()
        with app.extensions["gateway"].db.session() as s:
            row = s.scalars(select(ApiToken).filter_by(name="ops")).one()
            assert timedelta(hours=11, minutes=59) < row.expires_at - row.created_at <= timedelta(hours=12)
            token_id = row.id
        assert client.get("/transfers", headers=bearer(plain)).status_code == 200
        revoked = runner.invoke(main, ["token", "revoke", token_id])
        assert revoked.exit_code == 0 and f"token {token_id} revoked" in revoked.output
        assert client.get("/transfers", headers=bearer(plain)).status_code == 401
    finally:
        app.extensions["gateway"].close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_expiry_and_revocation_hold_on_both_databases(backend, request, tmp_path):
    """The migration adds the column, and the time comparison holds on each backend."""
    url = f"sqlite:///{tmp_path}/state.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    db = Database(url, os.urandom(32))
    db.upgrade()
    try:
        with db.session() as s:
            expiring, expiring_plain = create_token(s, "t1", "auditor", "test", expires_in=timedelta(minutes=1))
            kept, kept_plain = create_token(s, "t2", "auditor", "test")
        with db.session() as s:
            assert authenticate(s, expiring_plain).id == expiring.id
            s.execute(update(ApiToken).where(ApiToken.id == expiring.id)
                      .values(expires_at=utcnow() - timedelta(seconds=1)))
        with db.session() as s:
            with pytest.raises(Unauthenticated, match="expired"):
                authenticate(s, expiring_plain)
            assert authenticate(s, kept_plain).id == kept.id
            revoke_token(s, kept.id, actor="test")
        with db.session() as s:
            with pytest.raises(Unauthenticated, match="revoked"):
                authenticate(s, kept_plain)
    finally:
        db.dispose()
