"""Property: nothing reaches the recipient without an authorization valid at that moment,
and a transfer whose authorization stays valid is delivered.

Hypothesis draws an authorization situation (valid; expired before the first step;
expiring or revoked between two steps, drawn; revoked while the recipient takes a
bundle; naming another recipient; signature broken; issuer untrusted) and a number of
records (1-3, about one bundle each). The transfer runs step by step in this process
(`engine/transfers.run_step`, as the Celery task does, with duplicate messages for
steps already run), against a real receiving gateway served on a loopback port. A thin
WSGI layer in front of it notes, for every request that carries records, whether the
transfer's authorization was valid (active, not expired) when it arrived, and performs
the situation's revocation there when it asks for one. Expiry between steps is time
passing: the stored expiry is moved into the past.

The patient of a transfer is always its authorization's (a transfer names no patient
of its own), so "an authorization for another patient" has no sender-side form; the
receiver's refusal of a bundle whose Consent is about another patient is in
tests/test_receive.py.
"""
from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from werkzeug.serving import make_server

from gateway import create_app
from gateway.engine import operations, pulls
from gateway.engine.transfers import run_step
from gateway.errors import AuthorizationDenied
from gateway.storage.models import Authorization, ReceivedBundle, Transfer, TransferBundle
from gateway.trust.authorizations import new_issuer_key, sign_authorization

from tests.helpers import RECEIVER_ORG, make_token, wait_until, write_pdfs
from tests.security import jws_forge as forge

STEPS = ("pending", "pulling", "mapping", "assembling", "delivering", "awaiting_receipt")


class Recipient:
    """WSGI layer in front of the receiving gateway: for each request carrying records
    (POST /fhir, PUT /fhir/Binary/...), whether the authorization was valid on arrival;
    `revoke_on` revokes it when that request (1-based) arrives, after noting it."""

    def __init__(self, app, sender):
        self.app, self.sender = app, sender
        self.authorization_id: str | None = None
        self.arrivals: list[bool] = []
        self.revoke_on: int | None = None

    def valid_now(self) -> bool:
        with self.sender.db.session() as s:
            row = s.get(Authorization, self.authorization_id)
            expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=timezone.utc)
            return row.status == "active" and datetime.now(timezone.utc) < expires

    def __call__(self, environ, start_response):
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD")
        if (method, path) == ("POST", "/fhir") or (method == "PUT" and path.startswith("/fhir/Binary/")):
            self.arrivals.append(self.valid_now())
            if self.revoke_on == len(self.arrivals):
                operations.revoke_authorization(self.sender, self.authorization_id,
                                                "patient withdrew consent", actor="test")
        return self.app(environ, start_response)


@pytest.fixture
def gateways(sender_config, receiver_config, receiver_url, tmp_path):
    """The sending gateway (in process, small bundles) and the receiving one, served on
    its loopback port behind the `Recipient` layer."""
    sender_config["bundle_max_bytes"] = 2500  # about one PDF a bundle
    sender_app = create_app(sender_config)
    sender = sender_app.extensions["gateway"]
    sender.keys.ensure()
    (tmp_path / "sender-jwks.json").write_text(json.dumps(sender.keys.jwks()))
    receiver_app = create_app(receiver_config)
    receiver_app.extensions["gateway"].keys.ensure()
    Path(sender_config["peers"]["center"]["token_file"]).write_text(
        make_token(receiver_app, "peer", "test-hospital"))
    recipient = Recipient(receiver_app, sender)
    server = make_server("127.0.0.1", receiver_config["port"], recipient, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield sender, receiver_app.extensions["gateway"], recipient
    server.shutdown()
    thread.join(10)
    sender.close()
    receiver_app.extensions["gateway"].close()


SITUATIONS = st.one_of(
    st.just(("valid", None)),
    st.just(("expired-before-start", None)),
    st.tuples(st.just("expires-before-step"), st.sampled_from(STEPS)),
    st.tuples(st.just("revoked-before-step"), st.sampled_from(STEPS)),
    st.tuples(st.just("revoked-on-arrival"), st.integers(1, 3)),
    st.just(("other-recipient", None)),
    st.just(("signature-broken", None)),
    st.just(("issuer-untrusted", None)),
)


def _accepted(receiver) -> int:
    with receiver.db.session() as s:
        return s.scalar(select(func.count()).select_from(ReceivedBundle)
                        .where(ReceivedBundle.state == "accepted"))


def _expire(sender, authorization_id: str) -> None:
    with sender.db.session() as s:
        s.get(Authorization, authorization_id).expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)


def _run(sender, tid: str, situation: tuple, duplicates: bool) -> str:
    """Run the transfer's steps as the worker would, the situation's event before its step;
    returns the final state."""
    kind, at = situation
    state = "pending"
    for _ in range(40):
        if kind == "expires-before-step" and state == at:
            _expire(sender, _auth_of(sender, tid))
        if kind == "revoked-before-step" and state == at:
            operations.revoke_authorization(sender, _auth_of(sender, tid), "withdrawn", actor="test")
        moved = run_step(sender, tid, state)
        if duplicates:
            assert run_step(sender, tid, state) is None  # a duplicate message does nothing
        if state == "pulling" and moved is None:  # each source's own task pulls it (pulls.py)
            for name in _sources(sender, tid):
                pulls.run_pull(sender, tid, name)
                if duplicates:
                    pulls.run_pull(sender, tid, name)
            moved = "pulled"
        with sender.db.session() as s:
            t = s.get(Transfer, tid)
            state, retry_at = t.state, t.next_attempt_at
        if state in ("completed", "failed", "cancelled", "dead_letter"):
            return state
        if retry_at is not None:  # a transient fault: the task runs again when it is due
            wait_until(lambda: _due(sender, tid), 30, 0.05, "the retry to be due")
        elif moved is None:
            return state
    raise AssertionError(f"transfer {tid} did not finish: {state}")


def _due(sender, tid: str) -> bool:
    with sender.db.session() as s:
        at = s.get(Transfer, tid).next_attempt_at
    return at is None or (at if at.tzinfo else at.replace(tzinfo=timezone.utc)) <= datetime.now(timezone.utc)


def _sources(sender, tid: str) -> list[str]:
    with sender.db.session() as s:
        return [src.name for src in s.get(Transfer, tid).sources]


def _auth_of(sender, tid: str) -> str:
    with sender.db.session() as s:
        return s.get(Transfer, tid).authorization_id


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(situation=SITUATIONS, records=st.integers(1, 3), duplicates=st.booleans())
# revoked while the recipient takes the first of three bundles: the other two must stay
# home (they left in the same step before the re-check before each bundle)
@example(situation=("revoked-on-arrival", 1), records=3, duplicates=False)
def test_no_delivery_without_a_valid_authorization(gateways, claims_for, issuer_private_key,
                                                   drop_dir, situation, records, duplicates):
    sender, receiver, recipient = gateways
    kind, at = situation
    before = _accepted(receiver)
    recipient.arrivals, recipient.revoke_on = [], at if kind == "revoked-on-arrival" else None
    claims = claims_for(f"auth-{uuid.uuid4().hex[:12]}")
    if kind == "other-recipient":
        claims = json.loads(json.dumps(claims).replace(RECEIVER_ORG, "org-another-center"))
    key = new_issuer_key("stranger-1") if kind == "issuer-untrusted" else issuer_private_key
    jws = sign_authorization(claims, key)
    if kind == "signature-broken":
        jws = forge.flip_signature_byte(jws)
    try:
        auth = operations.import_authorization(sender, jws, actor="test")
    except AuthorizationDenied:
        assert kind in ("signature-broken", "issuer-untrusted")
        assert _accepted(receiver) == before and recipient.arrivals == []
        return
    assert kind not in ("signature-broken", "issuer-untrusted")
    if kind == "expired-before-start":
        _expire(sender, auth.id)
    try:
        tid = operations.create_transfer(sender, auth.id, ["records"], "center", actor="test")["id"]
    except AuthorizationDenied:
        assert kind in ("expired-before-start", "other-recipient")
        assert _accepted(receiver) == before and recipient.arrivals == []
        return
    recipient.authorization_id = auth.id
    write_pdfs(drop_dir / tid, count=records)
    final = _run(sender, tid, situation, duplicates)

    assert recipient.arrivals.count(False) == 0, (situation, recipient.arrivals)
    delivered = _accepted(receiver) - before
    assert delivered == sum(recipient.arrivals)  # every valid arrival was taken
    if kind == "valid" or (kind == "revoked-on-arrival" and at > len(recipient.arrivals)):
        assert final == "completed", final
        with sender.db.session() as s:
            parts = s.scalar(select(func.count()).select_from(TransferBundle)
                             .where(TransferBundle.transfer_id == tid))
        assert delivered == parts >= 1
    else:
        assert final == "cancelled", (situation, final)
