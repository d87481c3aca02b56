"""The audit log: every event appended in the same transaction as the state it records.

Events carry ids, counts, sizes and hashes, never record contents or patient names.
The log is a Merkle tree in the shape of Certificate Transparency (RFC 9162): see
log.py (appends, stored subtree hashes, proofs), checkpoints.py (signed tree heads),
verify.py (the offline verifier), fhir_auditevent.py and export.py (auditor formats).
May import: storage and `gateway.errors` only; every room that changes state records here.
"""
from __future__ import annotations

import hashlib
import hmac

from sqlalchemy.orm import Session

from gateway.storage.models import AuditEvent

from . import log


def patient_key(system: str, value: str, secret: bytes) -> str:
    """A stable key for a patient identifier, for querying the log without naming the
    patient: an HMAC with the deployment's secret (kept outside the database), so an
    MRN cannot be found again by hashing every candidate."""
    return hmac.new(secret, f"{system}|{value}".encode(), hashlib.sha256).hexdigest()


def record(session: Session, type: str, *, actor: str, role: str | None = None,
           outcome: str = "success", transfer_id: str | None = None,
           authorization_id: str | None = None, patient_key: str | None = None,
           **detail) -> AuditEvent:
    """Append one event to the log inside the caller's transaction (no commit here).

    Assigns the next gap-free sequence number and stores the event's Merkle leaf hash and
    the subtree hashes it completes. Holds the log's lock until the caller's transaction
    ends, so record as late in the transaction as practical.
    """
    return log.append(session, type, actor=actor, role=role, outcome=outcome,
                      transfer_id=transfer_id, authorization_id=authorization_id,
                      patient_key=patient_key, detail=detail)
