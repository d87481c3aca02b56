"""Deliver a transfer's bundles to the recipient and check what it answers.

Each bundle is streamed from the encrypted blob store (never whole in memory) with its
`Idempotency-Key` (the bundle id) and its detached signature, so a delivery repeated
after a crash or a lost answer is stored once. A peer gateway answers with a signed
receipt in the transaction-response's `signature`; a plain FHIR server (peer kind
"fhir") answers with a transaction-response only, recorded as an unsigned
acknowledgment (its entries are PUT with stable ids, so a repeat overwrites).
Documents too large to go inline are uploaded before their bundle (attachments.py).
A transient answer (408/409/425/429, 5xx) is retried, never sooner than its
`Retry-After` asks (transfers.py schedules the next attempt).
"""
from __future__ import annotations

import base64
import hashlib
import json

import requests

from gateway.errors import DeliveryFailed, DeliveryRejected, GatewayError, ReceiptInvalid
from gateway.runtime.services import Services
from gateway.storage.models import Transfer, TransferBundle
from gateway.trust import receipts
from gateway.trust.keys import verify_jws

from . import attachments, imaging
from .answers import TRANSIENT, answer_error, outcome_text
from .bodies import StreamedBody
from .sockets import paced_session

RECEIPT_TYP = receipts.RECEIPT_TYP
MAX_RESPONSE = 16 * 1024 * 1024


def deliver(svc: Services, t: Transfer, part: TransferBundle) -> str:
    """POST one bundle; return what the recipient answered (a receipt JWS, or the
    plain transaction-response JSON). Raises DeliveryFailed (retried) or
    DeliveryRejected / ReceiptInvalid (terminal)."""
    peer = svc.settings.peers[t.recipient]
    headers = {"Content-Type": "application/fhir+json",
               "Accept": "application/fhir+json",
               "Idempotency-Key": part.bundle_id,
               receipts.SIGNATURE_HEADER: part.signature,
               "Content-Length": str(part.size)}
    if peer.kind == "gateway" or peer.token is not None or peer.token_file is not None:
        headers["Authorization"] = f"Bearer {peer.bearer()}"  # a plain FHIR server may be open
    url = f"{peer.base_url}/fhir" if peer.kind == "gateway" else peer.base_url
    body = StreamedBody([], svc.blobs.chunks(part.blob_key), [], part.size, lambda: None)
    try:
        with paced_session() as session:  # the read timeout measures the recipient
            # each write waits on the recipient as long as the answer may (the connect
            # timeout applies to writes): a busy recipient is not cut off at 10 s
            response = session.post(url, data=body, headers=headers,
                                    timeout=svc.settings.http_timeout_s,
                                    allow_redirects=False, stream=True, **peer.tls())
            content = response.raw.read(MAX_RESPONSE + 1, decode_content=True)
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) != len(content) \
                and len(content) <= MAX_RESPONSE:
            raise DeliveryFailed(f"recipient {t.recipient}: answer cut short "
                                 f"({len(content)} of {declared} bytes)")
    except requests.RequestException as exc:
        raise DeliveryFailed(f"recipient {t.recipient} unreachable ({type(exc).__name__})") from None
    except Exception as exc:  # urllib3 protocol errors surface as their own types
        if isinstance(exc, DeliveryFailed):
            raise
        raise DeliveryFailed(f"recipient {t.recipient}: connection broken ({type(exc).__name__})") from None
    if len(content) > MAX_RESPONSE:
        raise DeliveryFailed(f"recipient {t.recipient} answered with an oversized body")
    status = response.status_code
    if status in TRANSIENT or status >= 500:
        raise answer_error(t.recipient, f"bundle {part.part}/{part.parts}", status,
                           response.headers, content)
    if status >= 300:
        attachments.reset(svc, t, part)  # a retry then asks the recipient for each upload again
        proof = _rejection(svc, t, part, response.headers.get("X-Delivery-Receipt"))
        raise DeliveryRejected(f"recipient {t.recipient} refused bundle {part.part}/{part.parts}"
                               f"{proof}: {outcome_text(status, content)}")
    try:
        reply = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        raise DeliveryFailed(f"recipient {t.recipient} answered with a body that is not JSON "
                             "(cut short?)") from None
    if peer.kind == "fhir":
        return content.decode()
    try:
        signature = reply["signature"]
        if signature.get("sigFormat") != "application/jose":
            raise KeyError("sigFormat")
        return base64.b64decode(signature["data"]).decode("ascii")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ReceiptInvalid(f"recipient {t.recipient} answered without a signed receipt") from None


def _rejection(svc: Services, t: Transfer, part: TransferBundle, token: str | None) -> str:
    """Check a signed rejection receipt; say in the error whether it verified."""
    if not token or svc.settings.peers[t.recipient].kind != "gateway":
        return ""
    try:
        claims = verify_jws(token, peer_jwks(svc, t.recipient), RECEIPT_TYP)
    except GatewayError:
        return " (its rejection receipt does not verify)"
    if claims.get("status") != "rejected" or claims.get("idempotencyKey") != part.bundle_id:
        return " (its rejection receipt names another delivery)"
    return " (signed rejection receipt verified)"


def peer_jwks(svc: Services, recipient: str) -> dict:
    peer = svc.settings.peers[recipient]
    return receipts.fetch_jwks(peer.jwks_file, peer.jwks_url or f"{peer.base_url}/.well-known/jwks.json",
                               f"recipient {recipient}", tls=peer.tls())


def check_answer(svc: Services, t: Transfer, part: TransferBundle) -> dict:
    """The verified receipt claims, or the acknowledgment summary of a plain FHIR server."""
    peer = svc.settings.peers[t.recipient]
    if peer.kind == "fhir":
        return acknowledgment(peer.organization, t, part)
    claims = receipts.check_receipt(
        part.answer, peer_jwks(svc, t.recipient), issuer=peer.organization,
        sender=svc.settings.organization, bundle=f"urn:uuid:{part.bundle_id}", sha256=part.sha256,
        size=part.size, entry_hashes=part.entry_hashes, who=t.recipient,
        attachments=part.attachments or {})
    if part.part == 1 and peer.dicom is None:
        # the peer took the instances itself (STOW-RS); the part with the manifest has its
        # count of what it holds of each study
        check_instances(claims, imaging.expected_studies(svc, t.id), t.recipient)
    return claims


def check_instances(claims: dict, expected: dict[str, dict], who: str) -> None:
    """The receipt must say the receiver holds every instance we forwarded, by count and
    by the digest of their sha256s; a shortfall is not a delivery."""
    counts, digests = claims.get("dicomInstances") or {}, claims.get("dicomSha256") or {}
    problems = []
    for study, want in sorted(expected.items()):
        got = counts.get(study, 0) if isinstance(counts, dict) else 0
        if got != want["instances"]:
            problems.append(f"study {study}: holds {got} of {want['instances']} instances")
        elif not isinstance(digests, dict) or digests.get(study) != want["sha256"]:
            problems.append(f"study {study}: instance hashes differ")
    if problems:
        raise ReceiptInvalid(f"receipt from {who} does not match the DICOM instances sent: "
                             + "; ".join(problems[:5]))


def acknowledgment(organization: str, t: Transfer, part: TransferBundle) -> dict:
    """A plain FHIR server's transaction-response, checked entry by entry; unsigned."""
    try:
        reply = json.loads(part.answer)
        entries = reply["entry"]
        statuses = [e["response"]["status"] for e in entries]
        locations = [e["response"].get("location") for e in entries]
    except (ValueError, KeyError, TypeError):
        raise ReceiptInvalid(f"recipient {t.recipient} answered without a transaction-response") from None
    if reply.get("resourceType") != "Bundle" or reply.get("type") != "transaction-response":
        raise ReceiptInvalid(f"recipient {t.recipient} answered without a transaction-response")
    if len(entries) != part.entries:
        raise ReceiptInvalid(f"recipient {t.recipient} answered for {len(entries)} entries, "
                             f"{part.entries} were sent")
    bad = [s for s in statuses if not str(s).startswith("2")]
    if bad:
        raise ReceiptInvalid(f"recipient {t.recipient} did not store {len(bad)} entries")
    return {"kind": "unsigned-acknowledgment", "signed": False, "status": "accepted",
            "iss": organization, "bundle": f"urn:uuid:{part.bundle_id}", "sha256": part.sha256,
            "size": part.size, "entries": len(entries), "attachments": part.attachments or {},
            "locations": [loc for loc in locations if isinstance(loc, str)][:1000],
            "responseSha256": hashlib.sha256(part.answer.encode()).hexdigest()}

