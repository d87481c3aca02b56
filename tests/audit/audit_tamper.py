"""Tamper cases for the audit log, shared by tests/audit and bench/audit_log.py.

Each case builds a real log in a fresh database (SQLite file or PostgreSQL), lets the
auditor keep the checkpoint documents as they are published, then plays a dishonest
operator who has the database (and, except in one case, the signing key) and changes
history. The auditor exports from the gateway and runs the offline verifier with the
checkpoints it kept; every case must produce problems.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from gateway import audit
from gateway.audit import checkpoints, export, log, merkle, verify
from gateway.audit.canonical import canonical_bytes, event_fields
from gateway.storage.models import (AuditCheckpoint, AuditEvent, AuditLogHead, AuditTreeNode,
                                    Base)

ORIGIN = "gateway.test/audit"
EVENTS = 200
CHECKPOINT_EVERY = 50


def build_log(engine: Engine, key: Ed25519PrivateKey, kept: list[dict], *, start: int = 0,
              count: int = EVENTS, tag: str = "honest") -> None:
    """Append `count` events one transaction each, publishing a checkpoint every 50; the
    auditor keeps every published checkpoint document in `kept`."""
    with Session(engine) as s:
        for i in range(start, start + count):
            kind = ("authorization.verified", "pull.finished", "bundle.assembled",
                    "delivery.succeeded", "receipt.verified")[i % 5]
            audit.record(s, kind, actor="worker", transfer_id=f"t{i // 5}",
                         authorization_id=f"auth-{i // 25}", patient_key=f"{i % 7:064x}",
                         recipient="second-opinion.example", items=i, tag=tag)
            s.commit()
            if (i + 1) % CHECKPOINT_EVERY == 0 or i == start + count - 1:
                checkpoints.create_checkpoint(s, key, origin=ORIGIN)
                s.commit()
                kept.append(checkpoints.checkpoints_document(s))


def rebuild_tree(session: Session) -> None:
    """What a careful forger does after rewriting events: recompute every leaf, node and
    the head so the database is self-consistent again."""
    session.execute(delete(AuditTreeNode))
    frontier: list[bytes] = []
    nodes: list[dict] = []
    events = list(session.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars())
    for n, ev in enumerate(events):
        leaf = merkle.leaf_hash(canonical_bytes(event_fields(ev)))
        ev.leaf_hash = leaf.hex()
        log._push(n, frontier, leaf, nodes)
    session.flush()
    if nodes:
        session.execute(log.insert(AuditTreeNode.__table__), nodes)
    session.execute(update(AuditLogHead).where(AuditLogHead.id == 1)
                    .values(size=len(events), frontier=[h.hex() for h in frontier]))


def _truncate(session: Session, size: int) -> None:
    session.execute(delete(AuditEvent).where(AuditEvent.seq > size))
    session.execute(delete(AuditCheckpoint).where(AuditCheckpoint.tree_size > size))
    rebuild_tree(session)


def _resign_all(session: Session, key: Ed25519PrivateKey) -> None:
    """Replace every stored checkpoint by one signed over the rewritten tree."""
    sizes = [c.tree_size for c in session.execute(select(AuditCheckpoint)).scalars()]
    last_ms = max(c.timestamp_ms for c in session.execute(select(AuditCheckpoint)).scalars())
    session.execute(delete(AuditCheckpoint))
    for n, size in enumerate(sorted(sizes)):
        cp = checkpoints.sign(key, origin=ORIGIN, tree_size=size, root_hash=log.root_at(session, size),
                              timestamp_ms=last_ms + 1000 + n)
        session.add(AuditCheckpoint(tree_size=size, root_hash=cp["root_hash"],
                                    timestamp_ms=cp["timestamp_ms"], origin=ORIGIN,
                                    key_id=cp["key_id"], signature=cp["signature"]))


def flip_byte(s: Session, key, engine) -> None:
    ev = s.get(AuditEvent, 77)
    ev.actor = ev.actor[:-1] + chr(ord(ev.actor[-1]) ^ 1)


def delete_one(s: Session, key, engine) -> None:
    s.execute(delete(AuditEvent).where(AuditEvent.seq == 120))


def reorder_two(s: Session, key, engine) -> None:
    s.execute(update(AuditEvent).where(AuditEvent.seq == 30).values(seq=-30))
    s.execute(update(AuditEvent).where(AuditEvent.seq == 31).values(seq=30))
    s.execute(update(AuditEvent).where(AuditEvent.seq == -30).values(seq=31))


def truncate_regrow(s: Session, key, engine) -> None:
    _truncate(s, 120)
    s.commit()
    build_log(engine, key, [], start=120, count=100, tag="regrown")  # size 220 > 200


def fork(s: Session, key, engine) -> None:
    ev = s.get(AuditEvent, 10)
    ev.detail = {**ev.detail, "recipient": "elsewhere.example"}
    s.flush()
    rebuild_tree(s)
    _resign_all(s, key)


def roll_back(s: Session, key, engine) -> None:
    _truncate(s, 150)  # restore an old backup...
    s.commit()
    build_log(engine, key, [], start=150, count=20, tag="after-restore")  # ...and carry on


def forge_signature(s: Session, key, engine) -> None:
    ev = s.get(AuditEvent, 60)
    ev.outcome = "failure"
    s.flush()
    rebuild_tree(s)
    other = Ed25519PrivateKey.generate()  # the forger does not have the gateway's key
    for cp in s.execute(select(AuditCheckpoint)).scalars():
        forged = checkpoints.sign(other, origin=ORIGIN, tree_size=cp.tree_size,
                                  root_hash=log.root_at(s, cp.tree_size), timestamp_ms=cp.timestamp_ms,
                                  key_id=cp.key_id)
        cp.root_hash, cp.signature = forged["root_hash"], forged["signature"]


CASES: dict[str, Callable] = {
    "flip_byte": flip_byte, "delete_one": delete_one, "reorder_two": reorder_two,
    "truncate_regrow": truncate_regrow, "fork": fork, "roll_back": roll_back,
    "forge_signature": forge_signature,
}
# what the verifier must say for each case (any one of the phrases)
EXPECTED = {
    "flip_byte": ("does not match its recorded leaf hash", "root does not match"),
    "delete_one": ("missing from the log",),
    "reorder_two": ("does not match its recorded leaf hash",),
    "truncate_regrow": ("root does not match", "not an append-only extension"),
    "fork": ("fork:",),
    "roll_back": ("rollback:",),
    "forge_signature": ("signature does not verify",),
}


def detected(name: str, problems: list[str]) -> bool:
    """Did the verifier report case `name` for what it is?"""
    return any(phrase in p for p in problems for phrase in EXPECTED[name])


# the auditor of forge_signature holds only what the gateway serves now
USES_KEPT = {name: name != "forge_signature" for name in CASES}


def run_case(name: str | None, engine: Engine, key: Ed25519PrivateKey, workdir: Path) -> list[str]:
    """Build a log, apply tamper case `name` (None: leave it honest), export, verify."""
    Base.metadata.create_all(engine)
    kept: list[dict] = []
    build_log(engine, key, kept)
    if name is not None:
        with Session(engine) as s:
            CASES[name](s, key, engine)
            s.commit()
    workdir.mkdir(parents=True, exist_ok=True)
    tag = name or "clean"
    events = workdir / f"{tag}-events.ndjson"
    current = workdir / f"{tag}-checkpoints.json"
    with Session(engine) as s, events.open("w") as out:
        export.write_ndjson(s, out, fhir=tag in ("fork", "clean"))
        current.write_text(json.dumps(checkpoints.checkpoints_document(s)))
    files = [current]
    if name is None or USES_KEPT[name]:
        for n, doc in enumerate(kept):
            path = workdir / f"{tag}-kept-{n}.json"
            path.write_text(json.dumps(doc))
            files.append(path)
    pub = workdir / "log-key.pem"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return verify.verify_files(events, files, pub)
