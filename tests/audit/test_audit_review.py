"""The checks the auditors' pages show (gateway/audit/review.py): each event's inclusion
proof against a signed checkpoint, each checkpoint's signature and its consistency with
the one before; and that each one fails when what it checks was altered."""
from __future__ import annotations

import copy

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.orm import Session

from gateway import audit
from gateway.audit import checkpoints, queries, review


def _log(engine, log_key) -> tuple[dict, dict]:
    """A transfer's chain with a checkpoint over part of it, and the checkpoint history."""
    with Session(engine) as s:
        audit.record(s, "authorization.verified", actor="intake", authorization_id="auth-1")
        for step in ("transfer.created", "transfer.pull.finished", "transfer.completed"):
            audit.record(s, step, actor="worker", transfer_id="t1", authorization_id="auth-1")
            audit.record(s, "other", actor="worker", transfer_id="t2")
        s.commit()
        checkpoints.create_checkpoint(s, log_key, origin="gw/audit")
        audit.record(s, "other", actor="worker", transfer_id="t2")
        s.commit()
        checkpoints.create_checkpoint(s, log_key, origin="gw/audit")
        audit.record(s, "api.read", actor="auditor", transfer_id="t1")  # after both
        s.commit()
        return queries.transfer_chain(s, "t1"), checkpoints.checkpoints_document(s)


def _keys(log_key):
    return checkpoints.load_public_keys({"keys": [checkpoints.public_jwk(log_key.public_key())]})


def test_a_chain_verifies_and_the_latest_event_waits_for_the_next_checkpoint(engine, log_key):
    chain, _ = _log(engine, log_key)
    checked = review.chain_checks(chain, _keys(log_key))
    assert checked["checkpoint_check"].ok is True
    assert [r["check"].ok for r in checked["rows"]] == [True, True, True, True, None]
    assert checked["rows"][0]["check"].says == "included in the signed log of size 8 (3 hashes)"
    assert checked["verdict"] == review.Check(
        True, "all 4 checkpointed events verified; 1 logged after the latest checkpoint")


def test_an_altered_event_a_bad_proof_or_a_forged_checkpoint_fails(engine, log_key):
    chain, _ = _log(engine, log_key)
    keys = _keys(log_key)
    altered = copy.deepcopy(chain)
    altered["events"][1]["event"]["actor"] = "someone-else"
    rows = review.chain_checks(altered, keys)["rows"]
    assert rows[1]["check"] == review.Check(
        False, "its content differs from the leaf hash recorded when it was logged")
    assert [r["check"].ok for r in rows].count(False) == 1

    moved = copy.deepcopy(chain)  # a proof of another leaf
    moved["events"][2]["inclusion_proof"] = moved["events"][3]["inclusion_proof"]
    check = review.chain_checks(moved, keys)["rows"][2]["check"]
    assert check.ok is False and check.says.startswith("inclusion proof does not verify")

    forged = copy.deepcopy(chain)
    forged["checkpoint"]["root_hash"] = "00" * 32
    result = review.chain_checks(forged, keys)
    assert result["checkpoint_check"].ok is False
    assert result["verdict"].ok is False and "signature does not verify" in result["verdict"].says

    stranger = checkpoints.load_public_keys(
        {"keys": [checkpoints.public_jwk(Ed25519PrivateKey.generate().public_key())]})
    assert review.chain_checks(chain, stranger)["verdict"].ok is False


def test_checkpoint_history_checks_each_signature_and_link(engine, log_key):
    _, doc = _log(engine, log_key)
    keys = _keys(log_key)
    rows = review.history_checks(doc, keys)
    assert [r["checkpoint"]["tree_size"] for r in rows] == [7, 8]
    assert [r["signature"].ok for r in rows] == [True, True]
    assert [r["consistency"].ok for r in rows] == [None, True]
    assert rows[1]["consistency"].says == "extends size 7 (append-only, 4 hashes)"

    rewritten = copy.deepcopy(doc)  # a signed head over another history: the proof fails
    rewritten["consistency_proofs"][0]["path"][0] = "11" * 32
    assert review.history_checks(rewritten, keys)[1]["consistency"].ok is False
    missing = {**doc, "consistency_proofs": []}
    assert review.history_checks(missing, keys)[1]["consistency"] == review.Check(
        False, "no consistency proof from size 7")
