"""The notify outbox: `publish` writes one row per subscribed channel in the caller's
transaction (never lost, never sent for a change that rolled back); an operator lists
them and replays a dead one."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway import audit
from gateway.config import Settings
from gateway.errors import Conflict, InvalidInput, NotFound
from gateway.storage.models import Case, Notification, new_id, utcnow

from .events import build_payload

STATES = ("pending", "sent", "dead")


def channels(settings: Settings, event_type: str) -> list[str]:
    """The channels subscribed to `event_type`: "webhook:<name>" for each webhook, "email"."""
    notify = settings.notify
    out = [f"webhook:{w.name}" for w in notify.webhooks if event_type in w.events]
    if notify.email is not None and event_type in notify.email.events:
        out.append("email")
    return out


def publish(session: Session, event_type: str, *, case_id: str | None = None,
            transfer_id: str | None = None, authorization_id: str | None = None,
            state: str | None = None, detail: dict | None = None,
            settings: Settings | None = None, only: list[str] | None = None) -> list[str]:
    """Queue `event_type` for every subscribed channel (or those of them in `only`) in
    the caller's transaction; return the event ids. The payload holds ids, states,
    counts and links only (events.py refuses anything else). `settings` defaults to the
    running gateway's."""
    if settings is None:
        from gateway.runtime.services import services

        settings = services().settings
    now = utcnow()
    if case_id is None and authorization_id is not None:  # the case it belongs to, if any
        case_id = session.scalars(select(Case.id).filter_by(authorization_id=authorization_id)).first()
    # checked whether or not anyone subscribes: a caller's mistake shows at once
    payload = build_payload(settings, "", event_type, now, case_id=case_id,
                            transfer_id=transfer_id, authorization_id=authorization_id,
                            state=state, detail=detail)
    ids = []
    for channel in channels(settings, event_type):
        if only is not None and channel not in only:
            continue
        event_id = new_id()  # one per channel: each receiver de-duplicates on its own
        session.add(Notification(id=event_id, channel=channel, event_type=event_type,
                                 case_id=case_id, transfer_id=transfer_id,
                                 authorization_id=authorization_id,
                                 payload=dict(payload, id=event_id), state="pending", attempts=0,
                                 next_attempt_at=now, created_at=now))
        ids.append(event_id)
    return ids


def view(n: Notification) -> dict:
    """What the API and the command line show of a notification."""
    return {"id": n.id, "channel": n.channel, "type": n.event_type, "state": n.state,
            "attempts": n.attempts, "case": n.case_id, "transfer": n.transfer_id,
            "authorization": n.authorization_id, "last_error": n.last_error,
            "created_at": n.created_at.isoformat(),
            "next_attempt_at": n.next_attempt_at.isoformat() if n.next_attempt_at else None,
            "sent_at": n.sent_at.isoformat() if n.sent_at else None}


def list_notifications(session: Session, state: str | None = None, limit: int = 100) -> list[dict]:
    """Newest first, optionally only those in `state` (pending, sent, dead)."""
    if state is not None and state not in STATES:
        raise InvalidInput(f"unknown notification state {state!r}; states: {', '.join(STATES)}")
    if not 1 <= limit <= 1000:
        raise InvalidInput("limit must be between 1 and 1000")
    query = select(Notification).order_by(Notification.created_at.desc(), Notification.id)
    if state is not None:
        query = query.where(Notification.state == state)
    return [view(n) for n in session.scalars(query.limit(limit))]


def replay(session: Session, notification_id: str, actor: str, role: str | None) -> dict:
    """Send a dead notification again, with the same event id (receivers de-duplicate on
    it) and a fresh round of attempts."""
    n = session.get(Notification, notification_id)
    if n is None:
        raise NotFound(f"no notification {notification_id}")
    if n.state != "dead":
        raise Conflict(f"only a dead notification can be replayed; {n.id} is {n.state}")
    n.state, n.attempts, n.next_attempt_at = "pending", 0, utcnow()
    audit.record(session, "notification.replay", actor=actor, role=role,
                 transfer_id=n.transfer_id, authorization_id=n.authorization_id,
                 notification=n.id, channel=n.channel, event=n.event_type)
    return view(n)
