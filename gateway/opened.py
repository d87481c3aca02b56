"""The "opened" receipt: when a person at the center opens received records, the
receiving gateway signs who opened what and when, and posts it back to the sender
(`POST {sender}/receipts`). Opening twice keeps the first receipt; a sender that
could not be reached is told on the next open (the inbox shows `senderNotified`)."""
from __future__ import annotations

import logging

import requests
from sqlalchemy import select

from . import audit, receipts
from .models import ReceivedBundle, TransferBundle, Transfer, utcnow
from .errors import NotFound, ReceiptInvalid
from .services import Services

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
                                 allow_redirects=False)
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


def store_opened(svc: Services, opened_jws: str, actor: str) -> dict:
    """Sender side: verify an "opened" receipt from one of our recipients and keep it."""
    import base64
    import json

    try:
        payload = opened_jws.split(".")[1]
        claimed = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        issuer = claimed["iss"]
    except (IndexError, ValueError, KeyError, TypeError):
        raise ReceiptInvalid("not an opened receipt (compact JWS)") from None
    from .delivery import peer_jwks

    names = [n for n, p in svc.settings.peers.items() if p.organization == issuer and p.kind == "gateway"]
    if not names:
        raise ReceiptInvalid("opened receipt from an organization we do not deliver to")
    claims = receipts.check_opened(opened_jws, peer_jwks(svc, names[0]), issuer=issuer)
    bundle_id = claims["bundle"].removeprefix("urn:uuid:")
    with svc.db.session() as s:
        part = s.scalars(select(TransferBundle).filter_by(bundle_id=bundle_id)).first()
        if part is None or s.get(Transfer, part.transfer_id).recipient not in names:
            raise NotFound("no bundle of ours matches this opened receipt")
        if (part.receipt or {}).get("receipt_id") != claims["receipt_id"]:
            raise ReceiptInvalid("opened receipt names another delivery receipt")
        if part.opened is None:
            part.opened, part.opened_jws = claims, opened_jws
            t = s.get(Transfer, part.transfer_id)
            audit.record(s, "transfer.receipt.opened", actor=actor, role="peer", transfer_id=t.id,
                         authorization_id=t.authorization_id, bundle_id=bundle_id,
                         opened_at=claims["openedAt"])
        return {"transfer": part.transfer_id, "part": part.part, "opened": part.opened}
