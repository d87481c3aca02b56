"""The gateway's side of the audit log: signing checkpoints with our key, periodically.

The log itself (tree, proofs, exports, verifier) is `gateway.audit`; this module ties it
to our keys, settings and Celery.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from connectors.files import write_atomic
from gateway.audit import checkpoints
from gateway.audit.fhir_auditevent import GatewayIdentity
from gateway.errors import InvalidInput
from gateway.runtime.celery_app import celery
from gateway.runtime.services import Services, services

log = logging.getLogger(__name__)


def identity(svc: Services) -> GatewayIdentity:
    return GatewayIdentity(name=svc.settings.organization, base_url=svc.settings.base_url)


def checkpoint_now(svc: Services, actor: str = "system") -> dict | None:
    """Sign a checkpoint of the log as it stands (None if the log is empty); a new one is
    also handed to the witness folder when one is configured."""
    key = svc.keys.current("checkpoint")
    with svc.db.session() as s:
        before = checkpoints.latest_checkpoint(s)
        try:
            cp = checkpoints.create_checkpoint(s, key.private_key, origin=svc.settings.base_url,
                                               key_id=key.kid)
        except InvalidInput:
            return None
    if before is None or before["tree_size"] != cp["tree_size"]:
        log.info("audit checkpoint at tree size %d", cp["tree_size"])
        if svc.settings.audit_witness_dir is not None:
            witness(svc.settings.audit_witness_dir, cp)
    return cp


def witness(folder: Path, cp: dict) -> Path:
    """Write a checkpoint to the witness folder, whole or not at all (one file a size)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"checkpoint-{cp['tree_size']:012d}.json"
    return write_atomic(path, json.dumps(cp, sort_keys=True).encode(), mode=0o644)  # public


@celery.task(name="gateway.auditing.checkpoint", ignore_result=True)
def checkpoint() -> None:
    checkpoint_now(services())


def is_patient_key(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def patient_key_from(svc: Services, value: str) -> str:
    """A patient filter as given by an auditor: a 64-hex patient key or `system|value`
    (the identifier itself, keyed here with the deployment's secret)."""
    if is_patient_key(value):
        return value
    system, sep, ident = value.partition("|")
    if not sep or not system or not ident:
        raise InvalidInput("patient must be a patient key (64 hex) or 'system|value'")
    return svc.patient_key(system, ident)
