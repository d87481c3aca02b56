"""Sending due notifications: claim one, send it by its channel, record the outcome.

A notification is due while pending and its next_attempt_at has passed. Claiming pushes
next_attempt_at ahead (a conditional update only one worker wins), so two drains never
send it at once; a worker killed while sending leaves it due again after the claim, and
the receiver sees the same event id (at least once, de-duplicated by the id). Transient
failures retry with exponential backoff and jitter (never sooner than a Retry-After
asks); after `notify.retry.max_attempts`, or at once on a refusal, it is dead until an
operator replays it.
"""
from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway import audit
from gateway.config import Settings
from gateway.errors import GatewayError, NotificationFailed, NotificationRejected
from gateway.runtime.services import Services
from gateway.storage.models import Notification, utcnow

from . import smtp, webhook

log = logging.getLogger(__name__)


def send(settings: Settings, channel: str, payload: dict) -> None:
    """Send one payload by its channel ("webhook:<name>" or "email")."""
    notify = settings.notify
    timeout = notify.timeout_s
    if channel == "email":
        if notify.email is None:
            raise NotificationRejected("email is no longer configured (notify.email)")
        smtp.send(notify.email, payload, timeout)
        return
    name = channel.removeprefix("webhook:")
    hook = next((w for w in notify.webhooks if w.name == name), None)
    if hook is None or not channel.startswith("webhook:"):
        raise NotificationRejected(f"channel {channel} is no longer configured (notify.webhooks)")
    webhook.send(hook, payload, timeout)


def _claim(session: Session, n_id: str, due_at, until) -> bool:
    result = session.execute(update(Notification)
                             .where(Notification.id == n_id, Notification.state == "pending",
                                    Notification.next_attempt_at == due_at)
                             .values(next_attempt_at=until))
    session.commit()
    return result.rowcount == 1


def _record(session: Session, settings: Settings, n: Notification, error: Exception | None) -> str:
    """Store the outcome of one attempt; return the notification's new state."""
    retry = settings.notify.retry
    now = utcnow()
    n.attempts += 1
    if error is None:
        n.state, n.sent_at, n.next_attempt_at, n.last_error = "sent", now, None, None
        log.info("notification %s (%s, %s) sent", n.id, n.channel, n.event_type)
        return n.state
    n.last_error = str(error) if isinstance(error, GatewayError) else \
        f"internal error ({type(error).__name__})"
    transient = not isinstance(error, NotificationRejected)
    if transient and n.attempts < retry.max_attempts:
        asked = error.details.get("retry_after") if isinstance(error, NotificationFailed) else None
        n.next_attempt_at = now + timedelta(seconds=retry.delay(n.attempts, asked))
        log.info("notification %s (%s): attempt %d failed, retrying: %s", n.id, n.channel,
                 n.attempts, n.last_error)
        return n.state
    n.state, n.next_attempt_at = "dead", None
    log.warning("notification %s (%s) dead after %d attempt(s): %s", n.id, n.channel, n.attempts,
                n.last_error)
    audit.record(session, "notification.dead", actor="worker", outcome="failure",
                 transfer_id=n.transfer_id, authorization_id=n.authorization_id,
                 notification=n.id, channel=n.channel, event=n.event_type, attempts=n.attempts,
                 error=n.last_error)
    return n.state


def deliver_due(session: Session, svc: Services, limit: int = 100) -> dict[str, int]:
    """Send every due notification (up to `limit`), one at a time; return how many were
    sent, left pending for a retry, and dead-lettered. A channel that fails is not tried
    again in the same round (a receiver that is down, or slow to time out, holds up no
    other). Commits as it goes: the claim before sending, each outcome after."""
    settings = svc.settings
    now = utcnow()
    claim_until = now + timedelta(seconds=4 * settings.notify.timeout_s + 60)
    counts: Counter = Counter({"sent": 0, "pending": 0, "dead": 0})
    failing: set[str] = set()
    due = session.execute(select(Notification.id, Notification.next_attempt_at,
                                 Notification.channel)
                          .where(Notification.state == "pending",
                                 Notification.next_attempt_at <= now)
                          .order_by(Notification.next_attempt_at).limit(limit)).all()
    for n_id, due_at, channel in due:
        if channel in failing:
            continue  # it just failed: one attempt a round, and the others are not held up
        if not _claim(session, n_id, due_at, claim_until):
            continue  # another worker has it
        n = session.get(Notification, n_id)
        session.commit()  # no transaction stays open while the peer answers
        try:
            send(settings, n.channel, n.payload)
            error = None
        except GatewayError as exc:
            error = exc
        except Exception as exc:  # a bug or an unforeseen fault: retried, logged with its type
            log.exception("notification %s: sending raised %s", n.id, type(exc).__name__)
            error = exc
        state = _record(session, settings, n, error)
        session.commit()
        counts[state] += 1
        if error is not None and not isinstance(error, NotificationRejected):
            failing.add(channel)
    return dict(counts)
