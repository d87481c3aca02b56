"""What an auditor's page shows beside the log's entries: each check spelled out.

The same checks as the offline verifier (verify.py), applied to what the gateway holds
and shown one row per event or per checkpoint instead of one line per problem: the
event's leaf is rebuilt from its canonical bytes, its inclusion proof is checked against
the root of a checkpoint whose signature verifies; each checkpoint's signature and the
consistency proof that links it to the one before. No database here: the callers read
the entries and checkpoints (queries.transfer_chain, checkpoints.checkpoints_document)
and pass the gateway's published keys.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import checkpoints as cpmod
from . import merkle
from .canonical import CanonicalError, canonical_bytes


@dataclass(frozen=True)
class Check:
    ok: bool | None  # None: nothing to check yet (an event after the latest checkpoint)
    says: str


def checkpoint_check(cp: dict | None, keys: cpmod.PublicKeys) -> Check:
    if cp is None:
        return Check(None, "no signed checkpoint yet")
    problem = cpmod.signature_problem(cp, keys)
    if problem:
        return Check(False, f"checkpoint of size {cp.get('tree_size')}: {problem}")
    return Check(True, f"checkpoint of size {cp['tree_size']} signed by key {cp['key_id']}")


def entry_check(entry: dict, cp: dict | None, cp_ok: bool) -> Check:
    """Is this log entry (queries.entry: event, leaf_hash, inclusion_proof) in the log
    that the signed checkpoint `cp` describes?"""
    seq = entry["event"].get("seq")
    try:
        leaf = merkle.leaf_hash(canonical_bytes(entry["event"]))
    except (CanonicalError, TypeError, KeyError) as exc:
        return Check(False, f"the event cannot be read ({exc})")
    if entry.get("leaf_hash") != leaf.hex():
        return Check(False, "its content differs from the leaf hash recorded when it was logged")
    proof = entry.get("inclusion_proof")
    if proof is None:
        if cp is None or seq > cp["tree_size"]:
            return Check(None, "logged after the latest checkpoint: proven at the next one")
        return Check(False, "no inclusion proof, though the checkpoint covers it")
    if not cp_ok:
        return Check(False, "its checkpoint's signature does not verify")
    if proof.get("tree_size") != cp["tree_size"]:
        return Check(False, f"proof is for size {proof.get('tree_size')}, the checkpoint "
                            f"is {cp['tree_size']}")
    try:
        path = [bytes.fromhex(h) for h in proof["path"]]
        root = bytes.fromhex(cp["root_hash"])
    except (KeyError, ValueError, TypeError):
        return Check(False, "malformed inclusion proof")
    if merkle.verify_inclusion(leaf, seq - 1, cp["tree_size"], path, root):
        return Check(True, f"included in the signed log of size {cp['tree_size']} "
                           f"({len(path)} hashes)")
    return Check(False, f"inclusion proof does not verify against the root of size "
                        f"{cp['tree_size']}")


def chain_checks(chain: dict, keys: cpmod.PublicKeys) -> dict:
    """A transfer's chain (queries.transfer_chain) with each event's check and a verdict."""
    cp = chain.get("checkpoint")
    head = checkpoint_check(cp, keys)
    rows = [{**e, "check": entry_check(e, cp, bool(head.ok))} for e in chain["events"]]
    failed = sum(r["check"].ok is False for r in rows)
    pending = sum(r["check"].ok is None for r in rows)
    if head.ok is False or failed:
        verdict = Check(False, f"{failed} of {len(rows)} events fail their check"
                        + ("; the checkpoint's signature does not verify" if head.ok is False else ""))
    else:
        verdict = Check(True, f"all {len(rows) - pending} checkpointed events verified"
                        + (f"; {pending} logged after the latest checkpoint" if pending else ""))
    return {**chain, "checkpoint_check": head, "rows": rows, "verdict": verdict}


def history_checks(document: dict, keys: cpmod.PublicKeys) -> list[dict]:
    """Checkpoints (checkpoints.checkpoints_document) oldest first, each with its signature
    check and the check of the consistency proof from the one before it."""
    proofs = {(p.get("first"), p.get("second")): p for p in document.get("consistency_proofs", [])}
    rows, before = [], None
    for cp in document.get("checkpoints", []):
        signed = checkpoint_check(cp, keys)
        if before is None:
            linked = Check(None, "the first checkpoint on this page")
        else:
            linked = _consistency(before, cp, proofs.get((before["tree_size"], cp["tree_size"])))
        rows.append({"checkpoint": cp, "signature": signed, "consistency": linked})
        before = cp
    return rows


def _consistency(a: dict, b: dict, proof: dict | None) -> Check:
    if proof is None:
        return Check(False, f"no consistency proof from size {a['tree_size']}")
    try:
        path = [bytes.fromhex(h) for h in proof["path"]]
        ok = merkle.verify_consistency(a["tree_size"], b["tree_size"], bytes.fromhex(a["root_hash"]),
                                       bytes.fromhex(b["root_hash"]), path)
    except (KeyError, ValueError, TypeError):
        return Check(False, "malformed consistency proof")
    if ok:
        return Check(True, f"extends size {a['tree_size']} (append-only, {len(path)} hashes)")
    return Check(False, f"does not extend size {a['tree_size']}: the log was rewritten")
