"""Taking a Subscriptions Backport notification from a source into the trigger inbox.

Checked in this order, each refusal logged with ids only: the subscription is ours and
open (else NotFound), the channel's shared secret matches (else Unauthenticated, compared
as SHA-256 digests in constant time), the body is a notification for this subscription
and topic (else InvalidInput). Then, in one transaction, before the source gets its 2xx:
each new event becomes an `event` trigger (an event number already stored is a duplicate:
acknowledged, so the source stops retrying, and stored nothing), events the source counted
but never sent become one `gap` trigger, and handshakes and heartbeats update the row.
Nothing is fetched here: the answer must be quick.
"""
from __future__ import annotations

import hmac
import logging
import re
from dataclasses import asdict, dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from connectors.fhir.notifications import MalformedNotification, Notification, parse_notification
from gateway.errors import InvalidInput, NotFound, Unauthenticated
from gateway.runtime.services import Services
from gateway.storage.models import FhirSubscription, Trigger, utcnow

from . import unattended
from .subscriptions import secret_hash

log = logging.getLogger(__name__)

SID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MAX_NOTIFICATION_BYTES = 16 << 20  # a full-resource payload carries the resources themselves


@dataclass
class Taken:
    type: str
    stored: int = 0
    duplicates: int = 0
    gaps: int = 0


def _open_row(svc: Services, sid: str) -> FhirSubscription:
    if not SID.match(sid or ""):
        raise NotFound("no such subscription")
    with svc.db.session() as s:
        row = s.get(FhirSubscription, sid)
    if row is None or row.status == "off":
        raise NotFound("no such subscription")
    return row


def _check_secret(row: FhirSubscription, authorization: str | None) -> None:
    scheme, _, presented = (authorization or "").partition(" ")
    digest = secret_hash(presented.strip()) if scheme.lower() == "bearer" else ""
    if not hmac.compare_digest(digest.encode(), row.secret_sha256.encode()):
        raise Unauthenticated("the notification does not carry this subscription's secret "
                              "(Authorization: Bearer <secret> as given in channel.header)")


def _matches(row: FhirSubscription, note: Notification) -> None:
    if note.topic is not None and note.topic != row.topic:
        raise InvalidInput("the notification is for another topic than this subscription's")
    if note.subscription and row.remote_id and note.subscription != row.remote_id:
        raise InvalidInput("the notification names another subscription than this one")


def take(svc: Services, sid: str, authorization: str | None, body: bytes) -> dict:
    """Store what the notification says for subscription `sid`; returns counts (no content)."""
    try:
        row = _open_row(svc, sid)
        _check_secret(row, authorization)
        if len(body) > MAX_NOTIFICATION_BYTES:
            raise InvalidInput(f"a notification is at most {MAX_NOTIFICATION_BYTES} bytes")
        try:
            note = parse_notification(body)
        except MalformedNotification as exc:
            raise InvalidInput(f"not a subscription notification: {exc}") from None
        _matches(row, note)
    except (NotFound, Unauthenticated, InvalidInput) as exc:
        log.warning("subscriptions: notification refused for %s: %s (%d bytes)",
                    sid if SID.match(sid or "") else "(bad id)", type(exc).__name__, len(body))
        raise
    try:
        taken = _store(svc, sid, note)
    except IntegrityError:  # the same event delivered twice at once: the other one stored it
        taken = _store(svc, sid, note)
    log.info("subscriptions: %s %s: %d stored, %d duplicate, %d gap", sid, taken.type, taken.stored,
             taken.duplicates, taken.gaps)
    if taken.stored or taken.gaps:
        unattended.advance_soon(svc, row.owner)
    return asdict(taken)


def _store(svc: Services, sid: str, note: Notification) -> Taken:
    taken = Taken(note.type)
    now = utcnow()
    with svc.db.session() as s:
        # a write first: the row lock on PostgreSQL, the write lock on SQLite, so two
        # deliveries of one event are taken one after the other
        s.execute(update(FhirSubscription).where(FhirSubscription.id == sid)
                  .values(heartbeat_missed_at=None).execution_options(synchronize_session=False))
        row = s.get(FhirSubscription, sid)
        numbers = {e.number for e in note.events}
        held = set(s.scalars(select(Trigger.event_number).where(
            Trigger.subscription_id == sid, Trigger.event_number.in_(numbers)))) if numbers else set()
        for event in note.events:
            if event.number in held:
                taken.duplicates += 1
                continue
            held.add(event.number)
            s.add(Trigger(subscription_id=sid, owner=row.owner, event_number=event.number, kind="event",
                          focus=[event.focus] if event.focus else [], received_at=now))
            taken.stored += 1
        # events the source counted past what we have seen, not in this notification: lost
        newest = max([row.events_seen, note.events_since_start or 0, *numbers])
        missed = newest - row.events_seen - len({n for n in numbers if n > row.events_seen})
        if missed > 0:
            s.add(Trigger(subscription_id=sid, owner=row.owner, kind="gap", focus=[], received_at=now))
            taken.gaps = 1
        row.events_seen = newest
        if note.events:
            row.last_event_at = now
        else:
            row.last_heartbeat_at = now
        if note.type == "handshake" and row.status == "requested":
            row.status = "active"
        elif note.status == "error":
            row.status = "error"
        elif note.status == "active" and row.status in ("requested", "error"):
            row.status = "active"
    return taken
