"""The receiving side's periodic task (Celery beat): expire uploads no bundle took, and
remove blobs a killed process left half-written."""
from __future__ import annotations

from gateway.runtime.celery_app import celery
from gateway.runtime.services import services

from . import stow, uploads

ABANDONED_PART_S = 3600.0  # a blob being written is touched with every chunk it gets

# the task's name is what the broker and beat schedules carry: it stays as first published
@celery.task(name="gateway.receive_binaries.sweep", ignore_result=True)
def sweep() -> int:
    """Uploads no bundle took: documents (uploads.py) and DICOM instances (stow.py); and
    half-written blobs of a process killed while receiving or pulling."""
    svc = services()
    svc.blobs.remove_abandoned(ABANDONED_PART_S)
    return uploads.sweep_now(svc) + stow.sweep_now(svc)
