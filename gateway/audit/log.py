"""Appending to the audit log and reading its Merkle tree back from the database.

`record()` queues an event in the caller's session; when that transaction commits, just
before COMMIT (SQLAlchemy's before_commit), the queued events are appended:
1. `SELECT ... FROM audit_log_head FOR UPDATE` on PostgreSQL (a row lock), or an
   `UPDATE ... RETURNING` of that row on SQLite (the database write lock), takes the
   log's lock until the COMMIT, so sequence numbers are gap-free and in commit order
   under any number of writers; a failed commit gives the numbers back with everything
   else. (PostgreSQL at READ COMMITTED, its default: under REPEATABLE READ a waiting
   writer gets a serialization error and must retry its transaction.)
2. Each event gets seq = size + 1, its canonical bytes and leaf hash.
3. Perfect subtrees completed by the new leaf are inserted into audit_tree_nodes, and the
   head's frontier (hashes of the perfect subtrees along the right edge) is updated.
So an append costs two statements on PostgreSQL (lock, then one statement writing the
event, nodes and head), never a read of earlier nodes; any root or proof is O(log n)
stored hashes. The lock is the last one a transaction takes and is held only for those
statements and the COMMIT, so auditing adds no deadlock and little waiting.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone

from sqlalchemy import event, insert, select, text, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached

from gateway.errors import InvalidInput, NotFound
from gateway.storage.models import AuditEvent, AuditLogHead, AuditTreeNode, utcnow

from . import merkle
from .canonical import canonical_bytes, normalize_detail

HEAD = AuditLogHead.__table__
NODES = AuditTreeNode.__table__
EVENTS = AuditEvent.__table__
_CHUNK = 500


def _as_utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def lock_head(session: Session, grow: int) -> tuple[int, list[bytes], datetime | None]:
    """Lock the log for the rest of the caller's transaction; returns the size, frontier
    and last event time as they are now (the caller then appends `grow` events)."""
    postgres = session.get_bind(AuditLogHead).dialect.name == "postgresql"
    if postgres:  # a row lock without writing a new row version
        stmt = select(HEAD.c.size, HEAD.c.frontier, HEAD.c.last_at).where(HEAD.c.id == 1).with_for_update()
    else:  # SQLite: a write takes the database write lock (SELECT would not)
        stmt = (update(HEAD).where(HEAD.c.id == 1).values(size=HEAD.c.size + grow)
                .returning(HEAD.c.size, HEAD.c.frontier, HEAD.c.last_at))
    row = session.execute(stmt).first()
    if row is None:
        _create_head(session)
        row = session.execute(stmt).first()
    size, frontier, last_at = row
    return size - (0 if postgres else grow), [bytes.fromhex(h) for h in frontier or []], _as_utc(last_at)


def _create_head(session: Session) -> None:
    """First append ever: create the head row (two first writers race on its key)."""
    values = {"id": 1, "size": 0, "frontier": [], "last_at": None}
    if session.get_bind(AuditLogHead).dialect.name == "sqlite":  # the UPDATE already holds the write lock
        session.execute(insert(HEAD).values(**values))
        return
    try:
        with session.begin_nested():
            session.execute(insert(HEAD).values(**values))
    except IntegrityError:
        pass  # the other writer created it; our UPDATE now waits for its lock


def _push(size: int, frontier: list[bytes], leaf: bytes, nodes: list[dict]) -> None:
    """Append leaf number `size` (0-based) to the frontier, collecting completed nodes."""
    cur, level = leaf, 0
    while (size >> level) & 1:
        cur = merkle.node_hash(frontier.pop(), cur)
        level += 1
        nodes.append({"level": level, "idx": size >> level, "hash": cur.hex()})
    frontier.append(cur)


def _prepare(ev: dict) -> dict:
    """Validate one event and put it in stored form (everything but seq, at and leaf)."""
    if not ev.get("type") or not ev.get("actor"):
        raise InvalidInput("an audit event needs a type and an actor")
    return {"type": ev["type"], "actor": ev["actor"], "role": ev.get("role"),
            "outcome": ev.get("outcome") or "success", "transfer_id": ev.get("transfer_id"),
            "authorization_id": ev.get("authorization_id"), "patient_key": ev.get("patient_key"),
            "detail": normalize_detail(ev.get("detail") or {}), "at": utcnow()}


_PENDING = "gateway.audit.pending"  # session.info: [(AuditEvent, row, savepoint or None)]


def append(session: Session, type: str, *, actor: str, role: str | None = None,
           outcome: str = "success", transfer_id: str | None = None,
           authorization_id: str | None = None, patient_key: str | None = None,
           detail: dict | None = None) -> AuditEvent:
    """Queue one event in the caller's transaction; it is numbered and written when that
    transaction commits (dropped if it, or the savepoint it was recorded in, rolls back).

    The log's lock is thus taken last, just before COMMIT, and held only for the audit
    writes: it never makes a transaction wait while it still takes other locks (no
    deadlock through the log), and concurrent transactions race on their own rows as if
    nothing were audited. The returned object gets its `seq` at commit.
    """
    row = _prepare(dict(type=type, actor=actor, role=role, outcome=outcome,
                        transfer_id=transfer_id, authorization_id=authorization_id,
                        patient_key=patient_key, detail=detail))
    obj = AuditEvent(**row)
    if not session.in_transaction():
        session.begin()  # so a close() without commit ends it and drops the queue
    session.info.setdefault(_PENDING, []).append((obj, row, session.get_nested_transaction()))
    return obj


def _write_pending(session: Session) -> None:
    if _PENDING not in session.info or session.get_nested_transaction() is not None:
        return  # nothing queued, or a savepoint is being released (wait for the COMMIT)
    pending = session.info.pop(_PENDING)
    if not pending:
        return
    rows = _append_rows(session, [row for _, row, _ in pending])
    for (obj, _, _), row in zip(pending, rows):  # written; attach without a second INSERT
        obj.seq, obj.at, obj.leaf_hash = row["seq"], row["at"], row["leaf_hash"]
        make_transient_to_detached(obj)
        session.add(obj)


def _drop_rolled_back(session: Session, previous_transaction) -> None:
    pending = session.info.get(_PENDING) if session.info else None
    if not pending:
        return
    if not previous_transaction.nested:
        session.info.pop(_PENDING, None)
        return

    def inside(tx) -> bool:
        while tx is not None:
            if tx is previous_transaction:
                return True
            tx = tx.parent
        return False

    session.info[_PENDING] = [p for p in pending if not inside(p[2])]


def _forget_pending(session: Session, transaction) -> None:
    if transaction.parent is None and session.info:  # ended without committing them
        session.info.pop(_PENDING, None)


# Once for every Session: a dictionary lookup when nothing is queued.
event.listen(Session, "before_commit", _write_pending)
event.listen(Session, "after_soft_rollback", _drop_rolled_back)
event.listen(Session, "after_transaction_end", _forget_pending)


def append_many(session: Session, events: Sequence[dict]) -> list[dict]:
    """Bulk path: append several events now, under the log's lock until the caller's
    transaction ends, in order. Each is a dict of `record()`'s arguments with `detail` as
    a dict. Returns the inserted rows (no ORM objects, for a million rows)."""
    return _append_rows(session, [_prepare(ev) for ev in events]) if events else []


def _append_rows(session: Session, prepared: list[dict]) -> list[dict]:
    """Lock the log, number the prepared rows, hash them into the tree and write them."""
    size, frontier, last_at = lock_head(session, len(prepared))
    rows, nodes = [], []
    for n, row in enumerate(prepared):
        if last_at and row["at"] < last_at:
            row["at"] = last_at  # times never go backwards along seq
        last_at = row["at"]
        row["seq"] = size + n + 1
        leaf = merkle.leaf_hash(canonical_bytes(row))
        row["leaf_hash"] = leaf.hex()
        _push(size + n, frontier, leaf, nodes)
        rows.append(row)
    _write(session, rows, nodes, size + len(rows), frontier, last_at)
    return rows


# record() on PostgreSQL: event, completed nodes and head in one statement (one round trip
# while the lock is held), compiled once.
_PG_APPEND_ONE = text("""
WITH new_event AS (
  INSERT INTO audit_events (seq, at, type, actor, role, outcome, transfer_id, authorization_id,
                            patient_key, detail, leaf_hash)
  VALUES (:seq, :at, :type, :actor, :role, :outcome, :transfer_id, :authorization_id,
          :patient_key, CAST(:detail AS json), :leaf_hash)
), new_nodes AS (
  INSERT INTO audit_tree_nodes (level, idx, hash)
  SELECT * FROM unnest(CAST(:levels AS integer[]), CAST(:idxs AS bigint[]), CAST(:hashes AS varchar[]))
)
UPDATE audit_log_head SET size = :size, frontier = CAST(:frontier AS json), last_at = :last_at
WHERE id = 1
""")


def _write(session: Session, rows: list[dict], nodes: list[dict], size: int,
           frontier: list[bytes], last_at: datetime) -> None:
    """Insert the events and completed nodes and move the head."""
    head = (update(HEAD).where(HEAD.c.id == 1)
            .values(size=size, frontier=[h.hex() for h in frontier], last_at=last_at))
    if len(rows) == 1 and session.get_bind(AuditLogHead).dialect.name == "postgresql":
        row = rows[0]
        session.execute(_PG_APPEND_ONE, {
            **row, "detail": json.dumps(row["detail"]), "size": size, "last_at": last_at,
            "frontier": json.dumps([h.hex() for h in frontier]),
            "levels": [n["level"] for n in nodes], "idxs": [n["idx"] for n in nodes],
            "hashes": [n["hash"] for n in nodes]})
        return
    for i in range(0, len(rows), 5000):
        session.execute(insert(EVENTS), rows[i:i + 5000])
    for i in range(0, len(nodes), 5000):
        session.execute(insert(NODES), nodes[i:i + 5000])
    session.execute(head)


# -- reading the tree -----------------------------------------------------------------

def tree_head(session: Session) -> tuple[int, bytes]:
    """The committed size and root hash (no lock taken)."""
    row = session.execute(select(HEAD.c.size, HEAD.c.frontier).where(HEAD.c.id == 1)).first()
    if row is None or not row[0]:
        return 0, merkle.EMPTY_ROOT
    return row[0], merkle.fold_right([bytes.fromhex(h) for h in row[1]])


def tree_size(session: Session) -> int:
    return tree_head(session)[0]


class StoredTree:
    """Subtree hashes read from the database for proofs against size `size`."""

    def __init__(self, session: Session, size: int | None = None):
        self.session = session
        current = tree_size(session)
        self.size = current if size is None else size
        if not 0 <= self.size <= current:
            raise NotFound(f"the audit log has {current} entries; no tree of size {self.size}")
        self._hashes: dict[tuple[int, int], bytes] = {}

    def prefetch(self, ranges: Iterable[tuple[int, int]], strict: bool = True) -> None:
        """Load every perfect subtree the given ranges need, in a few queries. A hash
        missing from the database (a damaged or tampered store) raises NotFound."""
        want = {p for lo, hi in ranges for p in merkle.perfect_pieces(lo, hi)}
        want -= self._hashes.keys()
        leaves = sorted(i for lv, i in want if lv == 0)
        inner = sorted((lv, i) for lv, i in want if lv > 0)
        for k in range(0, len(leaves), _CHUNK):
            chunk = [i + 1 for i in leaves[k:k + _CHUNK]]
            for seq, h in self.session.execute(
                    select(EVENTS.c.seq, EVENTS.c.leaf_hash).where(EVENTS.c.seq.in_(chunk))):
                self._hashes[(0, seq - 1)] = bytes.fromhex(h)
        for k in range(0, len(inner), _CHUNK):
            chunk = inner[k:k + _CHUNK]
            for lv, i, h in self.session.execute(
                    select(NODES.c.level, NODES.c.idx, NODES.c.hash)
                    .where(tuple_(NODES.c.level, NODES.c.idx).in_(chunk))):
                self._hashes[(lv, i)] = bytes.fromhex(h)
        missing = want - self._hashes.keys()
        if missing and strict:
            raise NotFound(f"audit tree is missing {len(missing)} stored subtree hashes, "
                           f"e.g. level {min(missing)[0]} index {min(missing)[1]}")

    def subtree(self, lo: int, hi: int) -> bytes:
        self.prefetch([(lo, hi)])
        return merkle.fold_right([self._hashes[p] for p in merkle.perfect_pieces(lo, hi)])

    def root(self) -> bytes:
        return merkle.EMPTY_ROOT if self.size == 0 else self.subtree(0, self.size)

    def inclusion_proof(self, seq: int) -> list[bytes]:
        if not 1 <= seq <= self.size:
            raise NotFound(f"audit event {seq} is not in the tree of size {self.size}")
        ranges = merkle.inclusion_ranges(seq - 1, self.size)
        self.prefetch(ranges)
        return [self.subtree(lo, hi) for lo, hi in ranges]

    def consistency_proof(self, first: int) -> list[bytes]:
        if not 0 <= first <= self.size:
            raise InvalidInput(f"no consistency proof from size {first} to {self.size}")
        ranges = merkle.consistency_ranges(first, self.size)
        self.prefetch(ranges)
        return [self.subtree(lo, hi) for lo, hi in ranges]


def root_at(session: Session, size: int) -> bytes:
    return StoredTree(session, size).root()


def inclusion_proof(session: Session, seq: int, tree_size: int | None = None) -> dict:
    """Proof that event `seq` is in the tree of `tree_size` (default: the current size)."""
    tree = StoredTree(session, tree_size)
    leaf = session.execute(select(EVENTS.c.leaf_hash).where(EVENTS.c.seq == seq)).scalar()
    if leaf is None:
        raise NotFound(f"no audit event {seq}")
    return {"seq": seq, "leaf_index": seq - 1, "tree_size": tree.size, "leaf_hash": leaf,
            "path": [h.hex() for h in tree.inclusion_proof(seq)]}


def consistency_proof(session: Session, first: int, second: int | None = None) -> dict:
    """Proof that the tree of size `second` extends the tree of size `first`."""
    tree = StoredTree(session, second)
    return {"first": first, "second": tree.size,
            "path": [h.hex() for h in tree.consistency_proof(first)]}
