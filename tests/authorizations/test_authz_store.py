"""import_authorization, revoke and check_active against a real database (SQLite and
PostgreSQL), with the audit events each appends."""
from __future__ import annotations

import logging
import os
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.authorizations.authz_support import ISSUER, NOW, PATIENT_SECRET
from gateway.trust.authorizations import (check_active, example_claims, import_authorization,
                                          revoke, signed_form, verify_authorization)
from gateway.errors import (AuthorizationExpired, AuthorizationInvalid, AuthorizationNotYetValid,
                            AuthorizationRevoked, Conflict, InvalidInput, NotFound)
from gateway.storage.models import AuditEvent, Authorization

PATIENT_VALUES = ("Testperson", "Avery", "MRN-000001", "1970-01-01")


def events(session):
    return [(e.type, e.outcome, e.authorization_id)
            for e in session.scalars(select(AuditEvent).order_by(AuditEvent.seq))]


def count(session) -> int:
    return session.scalar(select(func.count()).select_from(Authorization))


def test_reimport_of_the_same_jws_is_idempotent(claims, sign, trust, session):
    jws = sign(claims)
    first = import_authorization(session, jws, trust, actor="a", now=NOW, patient_secret=PATIENT_SECRET)
    session.commit()
    again = import_authorization(session, jws + "\n", trust, actor="b", now=NOW + timedelta(hours=1), patient_secret=PATIENT_SECRET)
    session.commit()
    assert again.id == first.id == "auth-0001"
    assert count(session) == 1
    assert events(session) == [("authorization.received", "success", None),
                               ("authorization.verified", "success", "auth-0001"),
                               ("authorization.received", "success", "auth-0001")]
    assert session.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc())).first().detail["duplicate"] is True


def test_same_jti_with_a_different_jws_is_a_conflict(claims, sign, trust, session):
    import_authorization(session, sign(claims), trust, actor="a", now=NOW, patient_secret=PATIENT_SECRET)
    session.commit()
    claims["purpose"] = "A different purpose"
    with pytest.raises(Conflict) as info:
        import_authorization(session, sign(claims), trust, actor="a", now=NOW, patient_secret=PATIENT_SECRET)
    session.commit()  # the caller keeps the rejection on the audit log
    assert str(info.value).startswith("authorization auth-0001 is already stored with a different JWS")
    assert info.value.http_status == 409
    assert count(session) == 1
    stored = session.get(Authorization, "auth-0001")
    assert stored.claims["purpose"] != "A different purpose"
    assert events(session)[-2:] == [("authorization.received", "success", None),
                                    ("authorization.rejected", "failure", "auth-0001")]


def test_rejection_is_audited_and_nothing_is_stored(claims, sign, trust, session, caplog):
    del claims["statements"]["rightToRevoke"]
    jws = sign(claims)
    with caplog.at_level(logging.INFO, logger="gateway"):
        with pytest.raises(AuthorizationInvalid):
            import_authorization(session, jws, trust, actor="intake", role="operator", now=NOW, patient_secret=PATIENT_SECRET)
    session.commit()
    assert count(session) == 0
    rejected = session.scalars(select(AuditEvent).where(AuditEvent.type == "authorization.rejected")).one()
    assert rejected.outcome == "failure" and rejected.actor == "intake" and rejected.role == "operator"
    assert rejected.detail["reason"] == "authorization is missing statements.rightToRevoke"
    assert rejected.detail["error"] == "AuthorizationInvalid"
    import hashlib
    assert rejected.detail["sha256"] == hashlib.sha256(jws.encode()).hexdigest()
    assert "authorization rejected" in caplog.text
    for value in PATIENT_VALUES:
        assert value not in caplog.text
        assert value not in repr(rejected.detail)


def test_expired_authorization_is_refused_on_import(claims, sign, trust, session):
    with pytest.raises(AuthorizationExpired):
        import_authorization(session, sign(claims), trust, actor="a", now=NOW + timedelta(days=40), patient_secret=PATIENT_SECRET)
    session.commit()
    assert count(session) == 0
    assert events(session)[-1][:2] == ("authorization.rejected", "failure")


def test_no_patient_data_in_logs_on_success(claims, sign, trust, session, caplog):
    with caplog.at_level(logging.DEBUG):
        import_authorization(session, sign(claims), trust, actor="a", now=NOW, patient_secret=PATIENT_SECRET)
        revoke(session, "auth-0001", "patient asked", actor="a", now=NOW)
    assert "auth-0001 verified" in caplog.text and "auth-0001 revoked" in caplog.text
    for value in PATIENT_VALUES:
        assert value not in caplog.text


def test_revoke_takes_effect_at_once_for_every_reader(claims, sign, trust, session, engine):
    import_authorization(session, sign(claims), trust, actor="a", now=NOW, patient_secret=PATIENT_SECRET)
    session.commit()
    with Session(engine) as worker:  # another process's view, e.g. a transfer step
        check_active(worker.get(Authorization, "auth-0001"), now=NOW + timedelta(days=1))
    row = revoke(session, "auth-0001", "patient withdrew consent by phone", actor="officer", role="admin",
                 now=NOW + timedelta(days=2))
    session.commit()
    assert row.status == "revoked"
    with Session(engine) as worker:
        stored = worker.get(Authorization, "auth-0001")
        assert stored.status == "revoked"
        assert stored.revoked_reason == "patient withdrew consent by phone"
        assert stored.revoked_at.replace(tzinfo=None) == (NOW + timedelta(days=2)).replace(tzinfo=None)
        with pytest.raises(AuthorizationRevoked) as info:
            check_active(stored, now=NOW + timedelta(days=3))
    assert str(info.value) == "authorization auth-0001 was revoked: patient withdrew consent by phone"
    revoked = session.scalars(select(AuditEvent).where(AuditEvent.type == "authorization.revoked")).one()
    assert (revoked.actor, revoked.role, revoked.authorization_id) == ("officer", "admin", "auth-0001")
    assert revoked.detail["reason"] == "patient withdrew consent by phone"


def test_revoking_twice_is_harmless(claims, sign, trust, session):
    import_authorization(session, sign(claims), trust, actor="a", now=NOW, patient_secret=PATIENT_SECRET)
    revoke(session, "auth-0001", "first", actor="a", now=NOW + timedelta(days=1))
    session.commit()
    row = revoke(session, "auth-0001", "second", actor="a", now=NOW + timedelta(days=5))
    session.commit()
    assert row.revoked_reason == "first"
    assert row.revoked_at.replace(tzinfo=None) == (NOW + timedelta(days=1)).replace(tzinfo=None)
    kinds = [e for e in events(session) if e[0] == "authorization.revoked"]
    assert len(kinds) == 2
    last = session.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc())).first()
    assert last.detail == {"already_revoked": True}


def test_reimport_does_not_reactivate_a_revoked_authorization(claims, sign, trust, session):
    jws = sign(claims)
    import_authorization(session, jws, trust, actor="a", now=NOW, patient_secret=PATIENT_SECRET)
    revoke(session, "auth-0001", "withdrawn", actor="a", now=NOW)
    session.commit()
    row = import_authorization(session, jws, trust, actor="a", now=NOW, patient_secret=PATIENT_SECRET)
    session.commit()
    assert row.status == "revoked"
    with pytest.raises(AuthorizationRevoked):
        check_active(row, now=NOW)


def test_revoke_errors(claims, sign, trust, session):
    with pytest.raises(NotFound, match="authorization nope is not stored here"):
        revoke(session, "nope", "reason", actor="a")
    import_authorization(session, sign(claims), trust, actor="a", now=NOW, patient_secret=PATIENT_SECRET)
    with pytest.raises(InvalidInput, match="needs a reason"):
        revoke(session, "auth-0001", "  ", actor="a")
    with pytest.raises(InvalidInput, match="longer than 1000"):
        revoke(session, "auth-0001", "x" * 1001, actor="a")
    assert session.get(Authorization, "auth-0001").status == "active"


def test_check_active_validity_period_from_the_stored_row(sign, trust, session):
    claims = example_claims(ISSUER, "auth-later", valid_days=10, now=NOW + timedelta(days=5))
    # imported before it starts: stored, but not usable yet
    import_authorization(session, sign(claims), trust, actor="a", now=NOW + timedelta(days=5), patient_secret=PATIENT_SECRET)
    session.commit()
    session.expire_all()
    row = session.get(Authorization, "auth-later")
    with pytest.raises(AuthorizationNotYetValid, match="auth-later is not valid before"):
        check_active(row, now=NOW)
    check_active(row, now=NOW + timedelta(days=5))
    check_active(row, now=NOW + timedelta(days=15) - timedelta(seconds=1))
    with pytest.raises(AuthorizationExpired, match="auth-later expired at"):
        check_active(row, now=NOW + timedelta(days=15))


def test_signed_form_is_kept_once(sign, trust, session):
    pdf = b"%PDF-1.4\n% synthetic signed form\n%%EOF\n"
    claims = example_claims(ISSUER, "auth-form", signed_form=pdf, now=NOW)
    jws = sign(claims)
    row = import_authorization(session, jws, trust, actor="a", now=NOW, patient_secret=PATIENT_SECRET)
    session.commit()
    import hashlib
    assert "attachment" not in row.claims
    assert row.claims["signedForm"] == {"contentType": "application/pdf", "title": "signed authorization form",
                                        "sha256": hashlib.sha256(pdf).hexdigest(), "size": len(pdf)}
    # the bytes are in the stored JWS, which still verifies
    assert verify_authorization(row.jws, trust, now=NOW).form_sha256 == hashlib.sha256(pdf).hexdigest()
    assert signed_form(row) == pdf


def test_no_signed_form(claims, sign, trust, session):
    row = import_authorization(session, sign(claims), trust, actor="a", now=NOW, patient_secret=PATIENT_SECRET)
    assert signed_form(row) is None


@pytest.mark.postgres
def test_concurrent_import_of_the_same_authorization(claims, sign, trust, pg_url):
    """The second of two racing imports fails at the database; its retry returns the row."""
    import threading
    import time

    from sqlalchemy import text

    from sqlalchemy import create_engine
    from sqlalchemy.exc import IntegrityError

    from gateway.storage.models import Base
    from gateway.storage.sealed import ColumnKeys, bind_keys
    engine = create_engine(pg_url)
    bind_keys(engine, ColumnKeys(os.urandom(32)))
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    jws = sign(claims)
    outcome = {}
    try:
        with Session(engine) as first, Session(engine) as second:
            import_authorization(first, jws, trust, actor="first", now=NOW,
                                 patient_secret=PATIENT_SECRET)  # flushed, not committed

            def race():
                try:
                    import_authorization(second, jws, trust, actor="second", now=NOW,
                                         patient_secret=PATIENT_SECRET)
                    second.commit()
                    outcome["second"] = "stored"
                except IntegrityError:
                    second.rollback()
                    outcome["second"] = "conflict"
                    outcome["retry"] = import_authorization(
                        second, jws, trust, actor="second", now=NOW,
                        patient_secret=PATIENT_SECRET).id
                    second.commit()

            # the second session's own backend: only its lock wait counts, not any other
            racer_pid = second.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()
            racer = threading.Thread(target=race)
            racer.start()
            # wait (polling) until the second is blocked on the first's uncommitted row
            deadline = time.monotonic() + 20
            with engine.connect() as watcher:
                while not watcher.scalar(text(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = :pid "
                        "AND wait_event_type = 'Lock'"), {"pid": racer_pid}):
                    assert time.monotonic() < deadline, "the second import never reached the database"
                    assert racer.is_alive(), f"the second import did not block: {outcome}"
                    time.sleep(0.02)
            first.commit()
            racer.join(10)
            assert not racer.is_alive()
        assert outcome == {"second": "conflict", "retry": "auth-0001"}
        with Session(engine) as check:
            assert count(check) == 1
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()
