"""Sending side of the "opened" receipt: a recipient gateway signs when a person at the
center opened the records we delivered and posts it to `POST /receipts`; it is checked
against that peer's keys and kept beside the delivery receipt it names."""
from __future__ import annotations

import base64
import json

from sqlalchemy import select

from gateway import audit, notify
from gateway.errors import NotFound, ReceiptInvalid, ReceiptRefused
from gateway.runtime.services import Services
from gateway.storage.models import Transfer, TransferBundle
from gateway.trust import receipts

from .delivery import peer_jwks


def store_opened(svc: Services, opened_jws: str, actor: str) -> dict:
    """Verify an "opened" receipt from one of our recipients and keep it with the delivery."""
    try:
        payload = opened_jws.split(".")[1]
        claimed = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        issuer = claimed["iss"]
    except (IndexError, ValueError, KeyError, TypeError):
        raise ReceiptRefused("not an opened receipt (compact JWS)") from None
    names = [n for n, p in svc.settings.peers.items() if p.organization == issuer and p.kind == "gateway"]
    if not names:
        raise ReceiptRefused("opened receipt from an organization we do not deliver to")
    try:
        claims = receipts.check_opened(opened_jws, peer_jwks(svc, names[0]), issuer=issuer)
    except ReceiptInvalid as exc:  # the peer sent it: its request is at fault (422, not 502)
        raise ReceiptRefused(exc.message) from None
    bundle_id = claims["bundle"].removeprefix("urn:uuid:")
    with svc.db.session() as s:
        part = s.scalars(select(TransferBundle).filter_by(bundle_id=bundle_id)).first()
        if part is None or s.get(Transfer, part.transfer_id).recipient not in names:
            raise NotFound("no bundle of ours matches this opened receipt")
        if (part.receipt or {}).get("receipt_id") != claims["receipt_id"]:
            raise ReceiptRefused("opened receipt names another delivery receipt")
        if part.opened is None:
            part.opened, part.opened_jws = claims, opened_jws
            t = s.get(Transfer, part.transfer_id)
            audit.record(s, "transfer.receipt.opened", actor=actor, role="peer", transfer_id=t.id,
                         authorization_id=t.authorization_id, bundle_id=bundle_id,
                         opened_at=claims["openedAt"])
            notify.publish(s, "transfer.opened", transfer_id=t.id,
                           authorization_id=t.authorization_id, state="opened",
                           detail={"bundle_id": bundle_id, "opened_at": claims["openedAt"]},
                           settings=svc.settings)
        return {"transfer": part.transfer_id, "part": part.part, "opened": part.opened}
