"""The state store on both backends: migrations, leases, audit in the same transaction."""
import os
from datetime import timedelta

import pytest
from sqlalchemy import inspect, select

from gateway import audit
from gateway.storage.blobstore import BlobStore
from gateway.config import load_settings
from gateway.storage.db import Database
from gateway.trust.keys import SigningKeys
from gateway.storage.models import (AuditEvent, Authorization, Item, Transfer, TransferSource,
                                    utcnow)
from gateway.runtime.services import Services
from gateway.engine.lease import claim
from gateway.engine.transfers import reconcile_now


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request, tmp_path):
    url = (f"sqlite:///{tmp_path}/state.db" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    database = Database(url, os.urandom(32))
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def svc(db, tmp_path):
    settings = load_settings({"data_dir": tmp_path, "step_lease_s": 60, "reconcile_interval_s": 0})
    return Services(settings=settings, db=db, blobs=BlobStore(tmp_path / "b", os.urandom(32)),
                    keys=SigningKeys(tmp_path / "k"), patient_secret=os.urandom(32))


def _transfer(db, state="pulling") -> str:
    now = utcnow()
    with db.session() as s:
        s.add(Authorization(id="a1", issuer="i", key_id="k", jws_sha256="0" * 64, jws="x",
                            claims={}, consent={}, recipient_id="r", not_before=now,
                            expires_at=now + timedelta(days=1)))
        t = Transfer(id="t" * 32, authorization_id="a1", recipient="r", state=state)
        t.sources = [TransferSource(name="s1")]
        s.add(t)
    return t.id


def test_migrations_create_every_table_and_are_idempotent(db):
    db.upgrade()
    tables = set(inspect(db.engine).get_table_names())
    assert {"authorizations", "transfers", "transfer_sources", "items", "api_tokens",
            "received_bundles", "audit_events", "alembic_version"} <= tables


def test_datetimes_come_back_aware_utc(db):
    tid = _transfer(db)
    with db.session() as s:
        t = s.get(Transfer, tid)
        assert t.created_at.tzinfo is not None and t.created_at.utcoffset() == timedelta(0)


def test_only_one_claim_wins(svc, db):
    tid = _transfer(db)
    assert claim(svc, tid, "pulling", "worker-a") is True
    assert claim(svc, tid, "pulling", "worker-b") is False  # held by a
    assert claim(svc, tid, "mapping", "worker-c") is False  # wrong state
    with db.session() as s:
        s.get(Transfer, tid).lease_until = utcnow() - timedelta(seconds=1)  # a died
    assert claim(svc, tid, "pulling", "worker-b") is True
    with db.session() as s:
        assert s.get(Transfer, tid).lease_owner == "worker-b"


def test_items_are_unique_per_origin(db):
    from sqlalchemy.exc import IntegrityError

    tid = _transfer(db)
    row = dict(transfer_id=tid, source="s1", origin="a.pdf", kind="pdf", media_type="application/pdf",
               size=1, sha256="0" * 64, blob_key="0" * 32, fetched_at=utcnow())
    with db.session() as s:
        s.add(Item(**row))
    with pytest.raises(IntegrityError):
        with db.session() as s:
            s.add(Item(**row))
    with db.session() as s:
        assert len(s.scalars(select(Item)).all()) == 1


def test_audit_event_rolls_back_with_the_state_change(db):
    tid = _transfer(db)
    with pytest.raises(RuntimeError):
        with db.session() as s:
            s.get(Transfer, tid).state = "cancelled"
            audit.record(s, "transfer.cancelled", actor="test", transfer_id=tid)
            raise RuntimeError("crash before commit")
    with db.session() as s:
        assert s.get(Transfer, tid).state == "pulling"
        assert s.scalars(select(AuditEvent).filter_by(type="transfer.cancelled")).all() == []
    with db.session() as s:
        s.get(Transfer, tid).state = "cancelled"
        audit.record(s, "transfer.cancelled", actor="test", transfer_id=tid, reason="r")
    with db.session() as s:
        events = s.scalars(select(AuditEvent).filter_by(type="transfer.cancelled")).all()
        assert [(e.transfer_id, e.detail) for e in events] == [(tid, {"reason": "r"})]


def test_reconciler_finds_stranded_steps(svc, db):
    sent = []
    send = lambda tid, state: sent.append((tid, state))  # noqa: E731
    tid = _transfer(db, state="mapping")
    with db.session() as s:
        s.get(Transfer, tid).updated_at = utcnow() - timedelta(minutes=5)
    assert reconcile_now(svc, send) == 1
    assert sent == [(tid, "mapping")]
    assert claim(svc, tid, "mapping", "w")  # now leased: the reconciler leaves it alone
    sent.clear()
    assert reconcile_now(svc, send) == 0 and sent == []


def test_a_step_held_by_a_process_that_is_gone_is_taken_back_at_once(svc, db):
    """A worker killed mid-step: on its host the reconciler sees its PID is gone and
    enqueues the step without waiting for the lease to expire; live or foreign ones wait."""
    import subprocess
    import sys

    from gateway.engine.lease import HOST, held_by_dead, new_owner

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its PID names no process
    owners = {"dead": f"{HOST}:{gone.pid}:0123456789abcdef", "alive": new_owner(),
              "elsewhere": f"{HOST}-other:{gone.pid}:0123456789abcdef"}
    _transfer(db, state="assembling")  # its authorization, for the others
    tids = {}
    with db.session() as s:
        for n, (name, owner) in enumerate(owners.items()):
            tids[name] = f"{n}" * 32
            s.add(Transfer(id=tids[name], authorization_id="a1", recipient="r", state="assembling",
                           lease_owner=owner, lease_until=utcnow() + timedelta(minutes=5)))
        s.get(Transfer, "t" * 32).state = "completed"
    assert [held_by_dead(o) for o in owners.values()] == [True, False, False]
    sent = []
    assert reconcile_now(svc, lambda tid, state: sent.append((tid, state))) == 1
    assert sent == [(tids["dead"], "assembling")]
    assert claim(svc, tids["dead"], "assembling", new_owner())
    assert not claim(svc, tids["alive"], "assembling", new_owner())


def test_state_on_disk_is_this_users_alone(tmp_path):
    """The data dir is 0700; the SQLite database (and its WAL) and every blob are 0600."""
    import stat

    from gateway import create_app
    from gateway.storage.blobstore import new_master_key

    data = tmp_path / "state"
    app = create_app({"data_dir": str(data), "blob_key": new_master_key()})
    svc = app.extensions["gateway"]
    try:
        info = svc.blobs.put_bytes(b"a record")
        mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
        assert mode(data) == 0o700
        assert mode(svc.blobs.backend.path(info.key)) == 0o600
        assert mode(svc.blobs.backend.path(info.key).parent) == 0o700
        database = data / "gateway.db"
        assert mode(database) == 0o600
        assert all(mode(p) == 0o600 for p in data.glob("gateway.db-*"))  # -wal, -shm
    finally:
        svc.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def old_db(request, tmp_path):
    """A database at revision 0001 (patient data in clear), not yet migrated further."""
    url = (f"sqlite:///{tmp_path}/old.db" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    database = Database(url, os.urandom(32))
    database.upgrade("0001")
    yield database
    database.dispose()


def test_migration_seals_rows_already_there(old_db):
    """Revision 0006 seals the patient-bearing values of existing rows; the ORM reads them
    back unchanged, the raw table holds no clear text, and items stay unique per origin."""
    import json

    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    name, origin = f"Qu{os.urandom(4).hex()}", f"scan-of-Qu{os.urandom(4).hex()}.pdf"
    claims = {"patient": {"name": {"family": name}}, "n": 1}
    now = utcnow()
    with old_db.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO authorizations (id, issuer, key_id, jws_sha256, jws, claims, consent, "
            "recipient_id, status, revoked_reason, created_at) VALUES ('a1', 'i', 'k', :sha, :jws, "
            ":claims, :consent, 'r', 'revoked', :why, :now)"),
            {"sha": "0" * 64, "jws": f"header.{name}.sig", "claims": json.dumps(claims),
             "consent": json.dumps({"resourceType": "Consent", "note": name}),
             "why": f"{name} asked", "now": now})
        conn.execute(text(
            "INSERT INTO transfers (id, authorization_id, recipient, state, reason, created_at, "
            "updated_at, attempts) VALUES ('t1', 'a1', 'r', 'failed', :why, :now, :now, 0)"),
            {"why": f"{origin} unreadable", "now": now})
        conn.execute(text(
            "INSERT INTO transfer_sources (transfer_id, name, position, state, items, bytes, error) "
            "VALUES ('t1', 's1', 0, 'failed', 1, 1, :why)"), {"why": f"{origin} refused"})
        conn.execute(text(
            "INSERT INTO items (transfer_id, source, origin, kind, media_type, size, sha256, "
            "blob_key, fetched_at, record_meta, state, error, clinical_date) VALUES ('t1', 's1', "
            ":origin, 'pdf', 'application/pdf', 1, :sha, :blob, :now, :meta, 'failed', :why, "
            "'2001-02-03')"),
            {"origin": origin, "sha": "0" * 64, "blob": "0" * 32, "now": now,
             "meta": json.dumps({"file": origin}), "why": f"{origin} bad"})

    old_db.upgrade()

    with old_db.engine.connect() as conn:
        raw = " ".join(str(v) for table in ("authorizations", "transfers", "transfer_sources", "items")
                       for row in conn.execute(text(f"SELECT * FROM {table}")) for v in row)
    assert name not in raw and origin not in raw and "2001-02-03" not in raw
    with old_db.session() as s:
        auth = s.get(Authorization, "a1")
        assert (auth.jws, auth.claims, auth.revoked_reason) == (f"header.{name}.sig", claims,
                                                                 f"{name} asked")
        assert auth.consent == {"resourceType": "Consent", "note": name}
        assert s.get(Transfer, "t1").reason == f"{origin} unreadable"
        assert s.get(Transfer, "t1").sources[0].error == f"{origin} refused"
        [item] = s.scalars(select(Item)).all()
        assert (item.origin, item.record_meta, item.error, item.clinical_date) == (
            origin, {"file": origin}, f"{origin} bad", "2001-02-03")
    row = dict(transfer_id="t1", source="s1", origin=origin, kind="pdf", media_type="application/pdf",
               size=1, sha256="0" * 64, blob_key="0" * 32, fetched_at=utcnow())
    with pytest.raises(IntegrityError):  # the migrated row's origin_key is the one the ORM makes
        with old_db.session() as s:
            s.add(Item(**row))


def test_sealed_values_cannot_be_moved_between_columns(db):
    """A sealed value copied into another column (or row of another table) fails to open."""
    from sqlalchemy import text

    from gateway.errors import ColumnCorrupted

    tid = _transfer(db)
    with db.session() as s:
        s.get(Transfer, tid).reason = "why"
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE transfer_sources SET error = (SELECT reason FROM transfers)"))
    with pytest.raises(ColumnCorrupted):
        with db.session() as s:
            s.scalars(select(TransferSource)).all()


def test_a_database_opened_with_another_key_cannot_read_sealed_columns(db):
    from gateway.errors import ColumnCorrupted

    _transfer(db)
    other = Database(db.url, os.urandom(32))
    try:
        with pytest.raises(ColumnCorrupted):
            with other.session() as s:
                s.get(Authorization, "a1").jws
    finally:
        other.dispose()
