"""The offline verifier behind `records-gateway audit verify` (no database needed).

Inputs are files an auditor holds: exported events (NDJSON log entries, NDJSON FHIR
AuditEvents, or a FHIR Bundle of them), one or more checkpoint documents (kept from
earlier downloads as well as the current one), and the gateway's public key (PEM, JWK or
JWKS). It rebuilds every leaf from the event's canonical bytes, recomputes the tree,
and checks every checkpoint signature, every consistency and inclusion proof, and that
the checkpoints tell one append-only history (no fork, no rollback, increasing time).
Each problem found is one line; an empty list means the log verified.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import InvalidInput

from . import checkpoints as cpmod
from . import merkle
from .canonical import FORMAT_VERSION, CanonicalError, canonical_bytes
from .fhir_auditevent import LOG_ENTRY_URL, GatewayIdentity, to_fhir


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    events: int = 0
    checkpoints: int = 0
    latest_size: int = 0
    uncovered: int = 0  # events after the latest checkpoint (no signature covers them yet)

    def summary(self) -> str:
        state = "OK" if not self.problems else f"{len(self.problems)} problem(s)"
        return (f"{state}: {self.events} events, {self.checkpoints} valid checkpoints, latest "
                f"tree size {self.latest_size}, {self.uncovered} events not yet checkpointed")


@dataclass
class Entry:
    where: str  # "line 3" / "entry 3", for messages
    event: dict
    leaf_hash: str | None = None
    proof_size: int | None = None
    proof: list[str] | None = None
    altered: str | None = None  # an AuditEvent whose readable fields its event does not give


# -- loading --------------------------------------------------------------------------

def _entry_from_fhir(resource: dict, where: str) -> Entry:
    ext = next((e for e in resource.get("extension", []) if e.get("url") == LOG_ENTRY_URL), None)
    if ext is None:
        raise InvalidInput(f"{where}: AuditEvent carries no audit-log entry extension")
    parts: dict[str, list] = {}
    for sub in ext.get("extension", []):
        parts.setdefault(sub.get("url"), []).append(sub)
    try:
        event = json.loads(base64.b64decode(parts["canonical"][0]["valueBase64Binary"]))
    except (KeyError, ValueError) as exc:
        raise InvalidInput(f"{where}: unreadable canonical event ({exc})") from exc
    entry = Entry(where, {k: v for k, v in event.items() if k != "v"})
    if "leafHash" in parts:
        entry.leaf_hash = parts["leafHash"][0].get("valueString")
    if "proofTreeSize" in parts:
        entry.proof_size = int(parts["proofTreeSize"][0]["valueString"])
        entry.proof = [p["valueString"] for p in parts.get("proofPath", [])]
    entry.altered = _rebuilt_differs(resource, event, entry)
    return entry


def _rebuilt_differs(resource: dict, event: dict, entry: Entry) -> str | None:
    """Only the canonical event is hashed into the log: the readable fields of its
    AuditEvent (agents, outcome, entities) must be exactly what that event gives, or an
    export could say something else than what was logged and still verify."""
    observer = (resource.get("source") or {}).get("observer") or {}
    ident = observer.get("identifier") or {}
    me = GatewayIdentity(name=observer.get("display") or "",
                         base_url=ident.get("value") if ident.get("system") == "urn:ietf:rfc:3986" else None)
    proof = ({"tree_size": entry.proof_size, "path": entry.proof}
             if entry.proof_size is not None else None)
    try:
        rebuilt = to_fhir({**event, "leaf_hash": entry.leaf_hash}, me=me, proof=proof)
    except Exception as exc:  # noqa: BLE001 - a broken event is reported, not raised
        return f"cannot be rebuilt from its canonical event ({type(exc).__name__})"
    changed = sorted(k for k in set(rebuilt) | set(resource) if rebuilt.get(k) != resource.get(k))
    return f"fields {', '.join(changed)} differ from its canonical event" if changed else None


def _entry(obj: dict, where: str) -> Entry:
    if obj.get("resourceType") == "AuditEvent":
        return _entry_from_fhir(obj, where)
    if "event" not in obj:
        raise InvalidInput(f"{where}: neither a log entry nor a FHIR AuditEvent")
    proof = obj.get("inclusion_proof") or {}
    return Entry(where, obj["event"], obj.get("leaf_hash"),
                 proof.get("tree_size"), proof.get("path"))


def load_events(path: Path) -> list[Entry]:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("{") and "\n{" not in stripped.rstrip():
        doc = json.loads(text)
        if doc.get("resourceType") == "Bundle":
            return [_entry(e["resource"], f"entry {i + 1}")
                    for i, e in enumerate(doc.get("entry", [])) if "resource" in e]
        return [_entry(doc, "line 1")]
    if stripped.startswith("["):
        return [_entry(o, f"entry {i + 1}") for i, o in enumerate(json.loads(text))]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise InvalidInput(f"line {n}: not JSON ({exc})") from exc
            out.append(_entry(obj, f"line {n}"))
    return out


def load_checkpoints(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    """Checkpoints and consistency proofs from checkpoint documents (as downloaded), lists
    of checkpoints or single ones (a witness folder's files). Each entry's own shape is
    checked where it is used, and reported as a problem; a file that is none of these is
    InvalidInput naming it."""
    cps, proofs = [], []
    for path in paths:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInput(f"{path.name}: not a JSON checkpoint document ({exc})") from None
        if isinstance(doc, list):
            cps += doc
        elif isinstance(doc, dict) and "checkpoints" in doc:
            listed, proven = doc["checkpoints"], doc.get("consistency_proofs", [])
            if not isinstance(listed, list) or not isinstance(proven, list):
                raise InvalidInput(f"{path.name}: 'checkpoints' and 'consistency_proofs' must be lists")
            cps += listed
            proofs += proven
        elif isinstance(doc, dict):
            cps.append(doc)
        else:
            raise InvalidInput(f"{path.name}: neither a checkpoint document, a list of "
                               "checkpoints nor one checkpoint")
    return cps, proofs


# -- checking -------------------------------------------------------------------------

def _check_checkpoints(raw: list[dict], keys, problems: list[str]) -> list[dict]:
    """Signature, fork, rollback and time checks; returns the signed, distinct ones."""
    seen, good = set(), []
    for cp in raw:
        ident = json.dumps(cp, sort_keys=True)
        if ident in seen:
            continue
        seen.add(ident)
        issue = cpmod.signature_problem(cp, keys)
        if issue:
            where = (f"size {cp.get('tree_size')} at {cp.get('timestamp')}" if isinstance(cp, dict)
                     else "entry")
            problems.append(f"checkpoint {where}: {issue}")
        else:
            good.append(cp)
    by_size: dict[int, dict] = {}
    for cp in good:
        other = by_size.setdefault(cp["tree_size"], cp)
        if other is not cp and other["root_hash"] != cp["root_hash"]:
            problems.append(f"fork: two signed checkpoints for tree size {cp['tree_size']} with "
                            f"different roots ({other['root_hash'][:16]}.. and {cp['root_hash'][:16]}..)")
    by_time = sorted(good, key=lambda c: (c["timestamp_ms"], c["tree_size"]))
    for a, b in zip(by_time, by_time[1:]):
        if b["tree_size"] < a["tree_size"]:
            problems.append(f"rollback: checkpoint at {_when(b)} has tree size {b['tree_size']}, "
                            f"smaller than {a['tree_size']} signed earlier at {_when(a)}")
        if b["timestamp_ms"] == a["timestamp_ms"] and b["tree_size"] != a["tree_size"]:
            problems.append(f"checkpoints for sizes {a['tree_size']} and {b['tree_size']} share "
                            f"timestamp {_when(a)}; timestamps must strictly increase")
        if b["tree_size"] > a["tree_size"] and b["timestamp_ms"] <= a["timestamp_ms"]:
            problems.append(f"checkpoint size {b['tree_size']} is not later than size {a['tree_size']}")
    return good


def _when(cp: dict) -> str:
    """A signed checkpoint's time, from its signed milliseconds (its readable copy is not
    signed, and may be missing)."""
    return cpmod._iso(cp["timestamp_ms"])


def _proof_shape(p) -> tuple[int, int, list[bytes]] | None:
    """(first, second, path) of a consistency proof, or None when it is malformed."""
    if not isinstance(p, dict):
        return None
    first, second, path = p.get("first"), p.get("second"), p.get("path", [])
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (first, second)):
        return None
    if not isinstance(path, list) or not all(isinstance(h, str) for h in path):
        return None
    try:
        return first, second, [bytes.fromhex(h) for h in path]
    except ValueError:
        return None


def _check_consistency(good: list[dict], proofs: list[dict], problems: list[str],
                       tree: merkle.MemoryTree | None) -> None:
    roots: dict[int, set[bytes]] = {}
    for cp in good:
        roots.setdefault(cp["tree_size"], set()).add(bytes.fromhex(cp["root_hash"]))
    proven = set()
    for n, p in enumerate(proofs, 1):
        shape = _proof_shape(p)
        if shape is None:
            problems.append(f"consistency proof {n} is malformed (needs integer first and second "
                            "and a list of hex hashes as path)")
            continue
        first, second, path = shape
        if first not in roots or second not in roots:
            problems.append(f"consistency proof {first} -> {second}: no signed checkpoint for "
                            f"{first if first not in roots else second}")
            continue
        ok = all(merkle.verify_consistency(first, second, r1, r2, path)
                 for r1 in roots[first] for r2 in roots[second])
        if not ok:
            problems.append(f"consistency proof {first} -> {second} does not verify: the log of "
                            f"size {second} is not an append-only extension of size {first}")
        proven.add((first, second))
    sizes = sorted(roots)
    for a, b in zip(sizes, sizes[1:]):
        if (a, b) in proven:
            continue
        if tree is not None and b <= len(tree):
            continue  # both roots are recomputed from the events instead
        problems.append(f"no consistency proof between checkpoints of sizes {a} and {b}")


def verify_log(entries: list[Entry], raw_checkpoints: list[dict], consistency: list[dict],
               keys: cpmod.PublicKeys, *, partial: bool = False) -> Report:
    """Check exported events against signed checkpoints. `partial` is for exports that
    hold only some events (one patient, one transfer): each is then checked by its
    inclusion proof alone instead of recomputing the whole tree."""
    report = Report(events=len(entries))
    problems = report.problems
    good = _check_checkpoints(raw_checkpoints, keys, problems)
    report.checkpoints = len(good)
    report.latest_size = max((c["tree_size"] for c in good), default=0)
    roots: dict[int, set[bytes]] = {}
    for cp in good:
        roots.setdefault(cp["tree_size"], set()).add(bytes.fromhex(cp["root_hash"]))

    leaves: dict[int, bytes] = {}
    prev_seq, prev_at = 0, ""
    for e in entries:
        seq = e.event.get("seq")
        if e.altered:
            problems.append(f"seq {seq} ({e.where}): AuditEvent altered: {e.altered}")
        if e.event.get("v", FORMAT_VERSION) != FORMAT_VERSION:
            problems.append(f"{e.where}: unknown canonical format version {e.event.get('v')!r}")
            continue
        try:
            leaf = merkle.leaf_hash(canonical_bytes(e.event))
        except (CanonicalError, TypeError, KeyError) as exc:
            problems.append(f"{e.where}: event cannot be read ({exc})")
            continue
        if e.leaf_hash is not None and e.leaf_hash != leaf.hex():
            problems.append(f"seq {seq}: content does not match its recorded leaf hash "
                            f"(event altered after it was logged)")
        if seq in leaves:
            problems.append(f"seq {seq}: appears more than once")
        elif seq <= prev_seq:
            problems.append(f"seq {seq} ({e.where}): out of order after seq {prev_seq}")
        if isinstance(e.event.get("at"), str) and prev_at and e.event["at"] < prev_at and seq > prev_seq:
            problems.append(f"seq {seq}: time {e.event['at']} is earlier than the event before it")
        leaves.setdefault(seq, leaf)
        prev_seq, prev_at = max(prev_seq, seq), e.event.get("at") or prev_at
        if e.proof is not None:
            if e.proof_size not in roots:
                if partial:
                    problems.append(f"seq {seq}: inclusion proof is for tree size {e.proof_size}, "
                                    f"which no signed checkpoint covers")
            else:
                path = [bytes.fromhex(h) for h in e.proof]
                if not any(merkle.verify_inclusion(leaf, seq - 1, e.proof_size, path, r)
                           for r in roots[e.proof_size]):  # a fork is reported on its own
                    problems.append(f"seq {seq}: inclusion proof does not verify against the "
                                    f"checkpoint of size {e.proof_size}")
        elif partial:
            problems.append(f"seq {seq}: no inclusion proof in a partial export")

    tree = None
    if not partial:
        n = max(leaves, default=0)
        missing = [s for s in range(1, n + 1) if s not in leaves]
        if missing:
            problems.append(f"{len(missing)} event(s) missing from the log: seq "
                            + _ranges(missing))
        whole = missing[0] - 1 if missing else n  # the contiguous prefix can still be checked
        tree = merkle.MemoryTree([leaves[s] for s in range(1, whole + 1)])
        for size in sorted(roots):
            if size > n:
                problems.append(f"checkpoint size {size}: the log holds only {n} events "
                                f"(truncated or rolled back)")
            elif size > whole:
                problems.append(f"checkpoint size {size}: cannot be recomputed, events are missing")
            elif tree.root(size) not in roots[size]:
                problems.append(f"checkpoint size {size}: root does not match the tree recomputed "
                                f"from the events (an event was changed, removed or reordered)")
        report.uncovered = max(0, n - report.latest_size)
    _check_consistency(good, consistency, problems, tree)
    return report


def _ranges(seqs: list[int]) -> str:
    out, start = [], seqs[0]
    for a, b in zip(seqs, seqs[1:] + [None]):
        if b != a + 1:
            out.append(str(start) if start == a else f"{start}-{a}")
            start = b
    return ", ".join(out[:20]) + (" ..." if len(out) > 20 else "")


def verify_files(events: Path | str, checkpoint_files: list[Path | str] | Path | str,
                 public_key: Path | str, *, partial: bool = False) -> list[str]:
    """Verify exported files; returns one line per problem (empty: verified)."""
    return verify_files_report(events, checkpoint_files, public_key, partial=partial).problems


def verify_files_report(events, checkpoint_files, public_key, *, partial: bool = False) -> Report:
    """As verify_files, with counts for a summary line. Without `events`, only the
    checkpoints are checked (signatures, forks, rollbacks, consistency proofs)."""
    if isinstance(checkpoint_files, (str, Path)):
        checkpoint_files = [checkpoint_files]
    keys = cpmod.load_public_keys(Path(public_key))
    if events is None:
        entries, partial = [], True
    else:
        entries = load_events(Path(events))
    cps, proofs = load_checkpoints([Path(p) for p in checkpoint_files])
    return verify_log(entries, cps, proofs, keys, partial=partial)
