"""Uploads no bundle took expire: a sender that gave up leaves no bytes behind.

Documents (uploads.py) and DICOM instances (stow.py) arrive before the bundle that
references them; those no accepted bundle took within `receive_upload_ttl_s` are
deleted, rows and blobs, by the hourly task in tasks.py. No Consent was ever shown
for them.
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from gateway.runtime.services import Services
from gateway.storage.models import utcnow


def expire_unbound(svc: Services, model, record_expiry) -> int:
    """Delete rows of `model` (an upload: sender, blob_key, bundle_id, received_at) no
    accepted bundle took, older than `receive_upload_ttl_s` (a sender that gave up):
    their bytes and rows; `record_expiry(session, rows)` audits them. Returns how many."""
    cutoff = utcnow() - timedelta(seconds=svc.settings.receive_upload_ttl_s)
    with svc.db.session() as s:
        stale = s.scalars(select(model).where(model.bundle_id.is_(None), model.received_at < cutoff)
                          .with_for_update()).all()
        for row in stale:
            s.delete(row)
        if stale:
            record_expiry(s, stale)
        keys = [row.blob_key for row in stale]
    for key in keys:  # after the commit: a row never names a deleted blob
        svc.blobs.delete(key)
    return len(keys)
