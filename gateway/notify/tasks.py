"""Celery tasks of the notify room, run by the beat schedule (runtime/celery_app.py)."""
from __future__ import annotations

from gateway.runtime.celery_app import celery
from gateway.runtime.services import services

from .delivery import deliver_due
from .expiring import check_expiring


@celery.task(name="gateway.notify.deliver", ignore_result=True)
def deliver() -> dict:
    """Send the notifications that are due."""
    svc = services()
    with svc.db.session() as s:
        return deliver_due(s, svc)


@celery.task(name="gateway.notify.expiring", ignore_result=True)
def expiring() -> int:
    """Announce authorizations about to expire (each once per channel)."""
    svc = services()
    with svc.db.session() as s:
        return len(check_expiring(s, svc.settings))
