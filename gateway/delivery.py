"""Deliver a bundle to the recipient gateway and verify its signed receipt.

The bundle is streamed from the encrypted blob store (never whole in memory) with an
`Idempotency-Key`, so a delivery repeated after a crash or a lost answer is stored
once. The receipt comes back as the transaction-response Bundle's `signature`
(a compact JWS, sigFormat application/jose), signed by the recipient's key.
"""
from __future__ import annotations

import base64
import json

import requests

from .errors import DeliveryFailed, DeliveryRejected, ReceiptInvalid
from .keys import verify_jws
from .models import Transfer
from .services import Services

RECEIPT_TYP = "delivery-receipt+jwt"
MAX_RESPONSE = 16 * 1024 * 1024


class _BlobUpload:
    """A file-like body of known length for requests (sent with Content-Length)."""

    def __init__(self, reader, size: int):
        self._reader, self._size = reader, size

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        return self._reader.read(n if n and n > 0 else 1 << 20)


def _outcome_text(response: requests.Response) -> str:
    try:
        body = response.json()
        issues = body.get("issue", []) if isinstance(body, dict) else []
        text = "; ".join(i.get("diagnostics", i.get("code", "")) for i in issues)
    except ValueError:
        text = ""
    return f"HTTP {response.status_code}" + (f": {text[:300]}" if text else "")


def deliver(svc: Services, t: Transfer) -> str:
    """POST the bundle; return the receipt JWS. Raises DeliveryFailed (retry) or
    DeliveryRejected / ReceiptInvalid (terminal)."""
    peer = svc.settings.peers[t.recipient]
    headers = {"Authorization": f"Bearer {peer.bearer()}",
               "Content-Type": "application/fhir+json",
               "Accept": "application/fhir+json",
               "Idempotency-Key": t.bundle_id,
               "Content-Length": str(t.bundle_size)}
    body = _BlobUpload(svc.blobs.open(t.bundle_blob), t.bundle_size)
    try:
        response = requests.post(f"{peer.base_url}/fhir", data=body, headers=headers,
                                 timeout=(10, svc.settings.http_timeout_s), allow_redirects=False,
                                 stream=True)
        content = response.raw.read(MAX_RESPONSE + 1, decode_content=True)
    except requests.RequestException as exc:
        raise DeliveryFailed(f"recipient {t.recipient} unreachable ({type(exc).__name__})") from None
    if len(content) > MAX_RESPONSE:
        raise DeliveryFailed(f"recipient {t.recipient} answered with an oversized body")
    response._content = content
    if response.status_code in (408, 409, 425, 429) or response.status_code >= 500:
        raise DeliveryFailed(f"recipient {t.recipient}: {_outcome_text(response)}")
    if response.status_code >= 300:
        raise DeliveryRejected(f"recipient {t.recipient} refused the bundle: {_outcome_text(response)}")
    try:
        reply = json.loads(content)
        signature = reply["signature"]
        if signature.get("sigFormat") != "application/jose":
            raise KeyError("sigFormat")
        return base64.b64decode(signature["data"]).decode("ascii")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ReceiptInvalid(f"recipient {t.recipient} answered without a signed receipt") from None


def peer_jwks(svc: Services, recipient: str) -> dict:
    peer = svc.settings.peers[recipient]
    if peer.jwks_file is not None:
        return json.loads(peer.jwks_file.read_text())
    url = peer.jwks_url or f"{peer.base_url}/.well-known/jwks.json"
    try:
        response = requests.get(url, timeout=10, allow_redirects=False)
        response.raise_for_status()
        return response.json()
    except (requests.RequestException, ValueError) as exc:
        raise DeliveryFailed(f"cannot fetch the keys of recipient {recipient} "
                             f"({type(exc).__name__})") from None


def verify_receipt(svc: Services, t: Transfer) -> dict:
    """Check the receipt's signature and that it names exactly what we sent."""
    claims = verify_jws(t.receipt_jws, peer_jwks(svc, t.recipient), RECEIPT_TYP)
    peer = svc.settings.peers[t.recipient]
    problems = []
    if claims.get("iss") != peer.organization:
        problems.append("issued by another organization")
    if claims.get("bundle") != f"urn:uuid:{t.bundle_id}":
        problems.append("names another bundle")
    if claims.get("sha256") != t.bundle_sha256:
        problems.append("hash differs from the bundle sent")
    if claims.get("size") != t.bundle_size:
        problems.append("size differs from the bundle sent")
    if claims.get("status") != "accepted":
        problems.append(f"status is {claims.get('status')!r}")
    if problems:
        raise ReceiptInvalid(f"receipt from {t.recipient} does not match: {', '.join(problems)}")
    return claims
