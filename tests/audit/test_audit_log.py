"""Appends, stored tree, proofs, checkpoints and queries on SQLite and PostgreSQL."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway import audit
from gateway.audit import checkpoints, log, merkle, queries
from gateway.audit.canonical import CanonicalError, canonical_bytes, event_fields
from gateway.errors import InvalidInput
from gateway.storage.models import AuditEvent


def all_events(engine) -> list[AuditEvent]:
    with Session(engine) as s:
        return list(s.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars())


def recomputed_tree(engine) -> merkle.MemoryTree:
    events = all_events(engine)
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "sequence has gaps"
    leaves = [merkle.leaf_hash(canonical_bytes(event_fields(e))) for e in events]
    assert [h.hex() for h in leaves] == [e.leaf_hash for e in events]
    return merkle.MemoryTree(leaves)


def test_appends_are_gap_free_and_the_stored_tree_matches(engine):
    with Session(engine) as s:
        for i in range(37):
            audit.record(s, "pull.finished", actor="worker", transfer_id=f"t{i % 4}",
                         patient_key="ab" * 32, items=i, sha256="cd" * 32, when=datetime(2026, 1, 2))
            if i % 10 == 9:
                audit.record(s, "doomed", actor="worker")
                s.rollback()  # a rolled back transaction gives its numbers back
            else:
                s.commit()
    tree = recomputed_tree(engine)
    assert len(tree) == 34  # 37 appended, 3 rolled back
    with Session(engine) as s:
        assert log.tree_head(s) == (34, tree.root())
        for size in range(0, 35):
            assert log.root_at(s, size) == tree.root(size)
        for seq in (1, 2, 17, 32, 33):
            p = log.inclusion_proof(s, seq, 33)
            assert p["path"] == [h.hex() for h in tree.inclusion_proof(seq - 1, 33)]
            assert merkle.verify_inclusion(bytes.fromhex(p["leaf_hash"]), seq - 1, 33,
                                           [bytes.fromhex(h) for h in p["path"]], tree.root(33))
        for first in (1, 5, 16, 32, 33):
            c = log.consistency_proof(s, first, 34)
            assert merkle.verify_consistency(first, 34, tree.root(first), tree.root(),
                                             [bytes.fromhex(h) for h in c["path"]])
        ev = s.get(AuditEvent, 5)
        assert ev.detail["when"] == "2026-01-02T00:00:00.000000Z"


def test_bad_detail_is_refused_before_a_number_is_taken(engine):
    with Session(engine) as s:
        with pytest.raises(CanonicalError):
            audit.record(s, "x", actor="a", blob=b"raw bytes")
        with pytest.raises(CanonicalError):
            audit.record(s, "x", actor="a", ratio=float("nan"))
        with pytest.raises(InvalidInput):
            audit.record(s, "", actor="a")
        audit.record(s, "ok", actor="a")
        s.commit()
    assert [e.seq for e in all_events(engine)] == [1]


def test_concurrent_writers_get_ordered_gap_free_numbers(engine):
    """Four threads, each appending in its own transactions with work between the append
    and the commit: numbers stay gap-free, times ordered, and the tree consistent."""
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(25):
                with Session(engine) as s:
                    audit.record(s, "api.read", actor=f"writer-{w}", role="auditor", n=i)
                    s.execute(select(AuditEvent.seq).limit(1)).all()  # other work in the txn
                    s.commit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    events = all_events(engine)
    assert len(events) == 100
    tree = recomputed_tree(engine)
    times = [e.at.replace(tzinfo=None) for e in events]
    assert times == sorted(times)
    for w in range(4):
        assert [e.detail["n"] for e in events if e.actor == f"writer-{w}"] == list(range(25))
    with Session(engine) as s:
        assert log.tree_head(s) == (100, tree.root())


def test_append_many_now_and_record_at_commit(engine):
    with Session(engine) as s:
        a = audit.record(s, "a", actor="x")
        rows = log.append_many(s, [{"type": "b", "actor": "y", "detail": {"i": i}} for i in range(300)])
        c = audit.record(s, "c", actor="x")
        assert a.seq is None  # numbered at commit
        s.commit()
        assert (a.seq, c.seq) == (301, 302)
        assert s.get(AuditEvent, 301) is a
    assert [r["seq"] for r in rows] == list(range(1, 301))
    tree = recomputed_tree(engine)
    with Session(engine) as s:
        assert log.tree_head(s) == (302, tree.root())


def test_savepoints_rollbacks_and_closed_sessions_drop_their_events(engine):
    with Session(engine) as s:
        audit.record(s, "kept.outer", actor="x")
        with s.begin_nested():
            audit.record(s, "kept.released", actor="x")
        nested = s.begin_nested()
        audit.record(s, "dropped.savepoint", actor="x")
        with s.begin_nested():
            audit.record(s, "dropped.inner", actor="x")
        nested.rollback()
        audit.record(s, "kept.after", actor="x")
        s.commit()
        audit.record(s, "dropped.rollback", actor="x")
        s.rollback()
        audit.record(s, "dropped.closed", actor="x")
        s.close()
        audit.record(s, "kept.reused", actor="x")  # a closed session can be used again
        s.commit()
    assert [e.type for e in all_events(engine)] == ["kept.outer", "kept.released", "kept.after",
                                                    "kept.reused"]
    recomputed_tree(engine)


@pytest.mark.postgres
def test_an_open_audited_transaction_blocks_no_one(pg_engine):
    """The log's lock is taken at commit: while one audited transaction is open (its event
    recorded, its rows written), another records, writes and commits without waiting."""
    from sqlalchemy import text

    with Session(pg_engine) as slow, Session(pg_engine) as fast:
        audit.record(slow, "slow", actor="a")
        slow.execute(text("SELECT 1"))
        slow.flush()
        fast.execute(text("SET lock_timeout = '3s'"))
        audit.record(fast, "fast", actor="b")
        fast.commit()  # would time out if `slow` held the log's lock
        slow.commit()
    assert [(e.seq, e.type) for e in all_events(pg_engine)] == [(1, "fast"), (2, "slow")]
    recomputed_tree(pg_engine)


def test_checkpoints_are_signed_unique_per_size_and_strictly_later(engine, log_key, tmp_path):
    with Session(engine) as s:
        with pytest.raises(InvalidInput):
            checkpoints.create_checkpoint(s, log_key, origin="gw/audit")
        for i in range(5):
            audit.record(s, "e", actor="a", i=i)
        s.commit()
        past = datetime.now(timezone.utc) - timedelta(days=1)
        first = checkpoints.create_checkpoint(s, log_key, origin="gw/audit")
        s.commit()
        assert checkpoints.create_checkpoint(s, log_key, origin="gw/audit") == first  # no growth
        audit.record(s, "e", actor="a")
        s.commit()
        second = checkpoints.create_checkpoint(s, log_key, origin="gw/audit", now=past)  # clock back
        s.commit()
        assert second["timestamp_ms"] > first["timestamp_ms"]
        assert (first["tree_size"], second["tree_size"]) == (5, 6)
        assert second["root_hash"] == log.tree_head(s)[1].hex()
        assert checkpoints.latest_checkpoint(s) == second
        assert checkpoints.checkpoint_at(s, 5) == first
        doc = checkpoints.checkpoints_document(s)
        assert [c["tree_size"] for c in doc["checkpoints"]] == [5, 6]
        assert doc["consistency_proofs"][0]["first"] == 5
    pem = log_key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    jwks = {"keys": [checkpoints.public_jwk(Ed25519PrivateKey.generate().public_key(), "old"),
                     checkpoints.public_jwk(log_key.public_key(), first["key_id"])]}
    for source in (pem, jwks):
        keys = checkpoints.load_public_keys(source)
        assert checkpoints.signature_problem(first, keys) is None
        assert "does not verify" in checkpoints.signature_problem({**first, "tree_size": 4}, keys)
    other = checkpoints.load_public_keys({"keys": [jwks["keys"][0]]})
    assert "unknown key" in checkpoints.signature_problem(first, other)


def test_queries_and_transfer_chain(engine, log_key):
    with Session(engine) as s:
        audit.record(s, "authorization.verified", actor="api-token:intake", role="operator",
                     authorization_id="auth-1", patient_key="p1" * 32)
        audit.record(s, "authorization.verified", actor="api-token:intake", role="operator",
                     authorization_id="auth-2", patient_key="p2" * 32)
        for step in ("pull.started", "pull.finished", "bundle.assembled", "delivery.succeeded",
                     "receipt.verified"):
            audit.record(s, step, actor="worker", transfer_id="t1", authorization_id="auth-1",
                         patient_key="p1" * 32, recipient="soc")
            audit.record(s, step, actor="worker", transfer_id="t2", authorization_id="auth-2",
                         patient_key="p2" * 32)
        s.commit()
        checkpoints.create_checkpoint(s, log_key, origin="gw/audit")
        audit.record(s, "api.read", actor="auditor-1", role="auditor", transfer_id="t1")
        s.commit()

        assert len(queries.find_events(s, patient_key="p1" * 32)) == 6
        assert [e.seq for e in queries.find_events(s, transfer_id="t1")] == [3, 5, 7, 9, 11, 13]
        assert len(queries.find_events(s, authorization_id="auth-2")) == 6
        assert [e.seq for e in queries.find_events(s, actor="auditor-1")] == [13]
        assert len(queries.find_events(s, type_prefix="pull.")) == 4
        first_at = s.get(AuditEvent, 1).at
        assert queries.find_events(s, until=first_at) == []
        assert len(queries.find_events(s, since=first_at, limit=3)) == 3
        assert len(list(queries.iter_events(s, batch=4))) == 13

        chain = queries.transfer_chain(s, "t1")
        assert [e["event"]["seq"] for e in chain["events"]] == [1, 3, 5, 7, 9, 11, 13]
        assert [e["event"]["type"] for e in chain["events"]][:2] == ["authorization.verified", "pull.started"]
        size, root = chain["checkpoint"]["tree_size"], bytes.fromhex(chain["checkpoint"]["root_hash"])
        assert size == 12
        for e in chain["events"]:
            if e["event"]["seq"] > size:
                assert "inclusion_proof" not in e  # after the latest checkpoint
                continue
            leaf = merkle.leaf_hash(canonical_bytes(e["event"]))
            assert merkle.verify_inclusion(leaf, e["event"]["seq"] - 1, size,
                                           [bytes.fromhex(h) for h in e["inclusion_proof"]["path"]], root)
