"""The "opened" receipt: when a person at the center opens received records, the
receiving gateway signs who opened what and when, and posts it back to the sender
(`POST {sender}/receipts`, kept there by gateway/outbound/opened.py). Opening twice keeps the first receipt; a sender that
could not be reached is told on the next open (the inbox shows `senderNotified`)."""
from __future__ import annotations

import logging

import requests

from gateway import audit
from gateway.runtime.services import Services
from gateway.storage.models import ReceivedBundle, utcnow
from gateway.trust import receipts

log = logging.getLogger(__name__)


def mark_opened(svc: Services, received_id: str, actor: str) -> ReceivedBundle:
    with svc.db.session() as s:
        row = s.get(ReceivedBundle, received_id)
        if row.opened_at is None:
            row.opened_at, row.opened_by = utcnow(), actor
            row.opened_receipt_jws = svc.keys.sign({
                "iss": svc.settings.organization, "receipt_id": row.id,
                "bundle": row.bundle_identifier, "sha256": row.sha256,
                "openedBy": actor, "openedAt": row.opened_at.isoformat(),
                "recipient": row.recipient_org, "sender": row.sender_org}, receipts.OPENED_TYP)
            audit.record(s, "receive.bundle.opened", actor=actor, role="recipient",
                         bundle=row.bundle_identifier, received_id=row.id)
    if row.opened_notified_at is None:
        _notify(svc, row)
    return row


def _notify(svc: Services, row: ReceivedBundle) -> None:
    sender = svc.settings.senders.get(row.sender)
    token = sender.bearer() if sender else None
    if sender is None or not sender.base_url or not token:
        return
    try:
        response = requests.post(f"{sender.base_url}/receipts", json={"jws": row.opened_receipt_jws},
                                 headers={"Authorization": f"Bearer {token}"}, timeout=10,
                                 allow_redirects=False, **sender.tls())
    except requests.RequestException as exc:
        log.warning("opened receipt %s not delivered to %s (%s)", row.id, row.sender,
                    type(exc).__name__)
        return
    if response.status_code != 200:
        log.warning("opened receipt %s refused by %s (HTTP %s)", row.id, row.sender,
                    response.status_code)
        return
    with svc.db.session() as s:
        stored = s.get(ReceivedBundle, row.id)
        stored.opened_notified_at = row.opened_notified_at = utcnow()
        audit.record(s, "receive.opened.notified", actor="system", bundle=row.bundle_identifier,
                     received_id=row.id, sender=row.sender)
