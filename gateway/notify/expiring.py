"""Announcing authorizations about to expire: once per authorization and channel, when
it comes within `notify.expiring_within_days` of its expiry (the outbox row is the
memory that it was announced; a channel added later is told too)."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.config import Settings
from gateway.storage.models import Authorization, Notification, utcnow

from .outbox import channels, publish

EVENT = "authorization.expiring"


def check_expiring(session: Session, settings: Settings) -> list[str]:
    """Publish `authorization.expiring` for active authorizations expiring within the
    window and not yet announced on a channel; return the event ids (in the caller's
    transaction)."""
    subscribed = channels(settings, EVENT)
    if not subscribed:
        return []
    now = utcnow()
    soon = now + timedelta(days=settings.notify.expiring_within_days)
    expiring = session.scalars(select(Authorization)
                               .where(Authorization.status == "active",
                                      Authorization.expires_at > now,
                                      Authorization.expires_at <= soon)
                               .order_by(Authorization.expires_at)).all()
    ids: list[str] = []
    for auth in expiring:
        told = set(session.scalars(select(Notification.channel)
                                   .where(Notification.event_type == EVENT,
                                          Notification.authorization_id == auth.id)))
        missing = [c for c in subscribed if c not in told]
        if missing:
            days_left = max(0, (auth.expires_at - now).days)
            ids += publish(session, EVENT, authorization_id=auth.id, state="expiring",
                           detail={"expires_at": auth.expires_at, "days_left": days_left},
                           settings=settings, only=missing)
    return ids
