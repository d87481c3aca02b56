"""The audit log: every event appended in the same transaction as the state it records.

Events carry ids, counts, sizes and hashes, never record contents or patient names.
"""
from __future__ import annotations

import hashlib

from sqlalchemy.orm import Session

from ..models import AuditEvent, utcnow


def patient_key(system: str, value: str) -> str:
    """A stable, non-reversible key for a patient identifier, for querying the log."""
    return hashlib.sha256(f"{system}|{value}".encode()).hexdigest()


def record(session: Session, type: str, *, actor: str, role: str | None = None,
           outcome: str = "success", transfer_id: str | None = None,
           authorization_id: str | None = None, patient_key: str | None = None,
           **detail) -> AuditEvent:
    """Append one event to the log inside the caller's transaction (no commit here)."""
    event = AuditEvent(at=utcnow(), type=type, actor=actor, role=role, outcome=outcome,
                       transfer_id=transfer_id, authorization_id=authorization_id,
                       patient_key=patient_key, detail=detail)
    session.add(event)
    return event
