"""The receiving side's periodic task (Celery beat): expire uploads no bundle took."""
from __future__ import annotations

from gateway.runtime.celery_app import celery
from gateway.runtime.services import services

from . import stow, uploads


# the task's name is what the broker and beat schedules carry: it stays as first published
@celery.task(name="gateway.receive_binaries.sweep", ignore_result=True)
def sweep() -> int:
    """Uploads no bundle took: documents (uploads.py) and DICOM instances (stow.py)."""
    svc = services()
    return uploads.sweep_now(svc) + stow.sweep_now(svc)
