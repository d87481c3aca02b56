"""Documents too large to travel inline go first, as `Binary/{id}`, and the bundle
references them.

A record larger than `attachment_inline_max_bytes` is not base64-encoded into its
bundle (a 300 MB scan would make a 400 MB bundle the receiver must hold). Its bytes are
sent before the bundle, streamed from the encrypted blob store, as
`PUT {fhir base}/Binary/{id}`; the DocumentReference's `content.attachment.url` is then
`Binary/{id}`, with the size and an extension naming the sha256, so the signed bundle
commits to the exact bytes and the receiver can check what it holds against it.

- The id is derived from the transfer and the content's sha256: a repeat overwrites the
  same resource with the same bytes (idempotent), and an id names one content.
- A receiving gateway takes the raw bytes (Content-Type the document's) and answers with
  `ETag: "sha256-<hex>"` of what it stored, checked here. A plain FHIR server takes a
  JSON Binary whose base64 `data` is streamed (sekmet-fhir accepts nothing else).
- Progress is kept per upload (TransferUpload); an upload not yet recorded is first
  asked for with HEAD, so a delivery resumed after a crash does not send it twice.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import requests
from sqlalchemy import select

from gateway import audit
from gateway.errors import DeliveryFailed
from gateway.exchange.attachments import SHA256_EXT
from gateway.exchange.ids import etag
from gateway.runtime.services import Services
from gateway.storage.models import Transfer, TransferBundle, TransferUpload, utcnow

from .answers import answer_error
from .bodies import StreamedBody, base64_chunks
from .sockets import paced_session

MAX_ANSWER = 1 << 20


@dataclass(frozen=True)
class Upload:
    """A document's bytes to send as `Binary/{binary_id}` before its bundle."""
    binary_id: str
    blob_key: str
    media_type: str
    sha256: str
    size: int

    @property
    def ref(self) -> str:
        return f"Binary/{self.binary_id}"


def point_at(attachment: dict, up: Upload) -> None:
    """Make an attachment reference the uploaded bytes, naming their size and sha256."""
    attachment["url"] = up.ref
    attachment["size"] = up.size
    kept = [e for e in attachment.get("extension") or [] if e.get("url") != SHA256_EXT]
    attachment["extension"] = kept + [{"url": SHA256_EXT, "valueString": up.sha256}]


# --- the sending side ----------------------------------------------------------------

def plan(s, transfer_id: str, uploads: list[Upload]) -> None:
    """Record the uploads of a (re)assembled transfer; those already sent stay sent
    (same id, same bytes)."""
    rows = {r.binary_id: r for r in s.scalars(select(TransferUpload).filter_by(transfer_id=transfer_id))}
    wanted = {u.binary_id: u for u in uploads}
    for bid, row in rows.items():
        if bid not in wanted:
            s.delete(row)
    for bid, up in wanted.items():
        row = rows.get(bid)
        if row is None:
            s.add(TransferUpload(transfer_id=transfer_id, binary_id=bid, blob_key=up.blob_key,
                                 media_type=up.media_type, sha256=up.sha256, size=up.size,
                                 state="pending"))
        else:
            row.blob_key = up.blob_key


def send(svc: Services, t: Transfer, part: TransferBundle, renew: Callable[[], None]) -> int:
    """Upload every document `part` references that the recipient does not hold yet;
    return how many were sent. Raises DeliveryFailed / DeliveryRejected like delivery."""
    ids = [ref.split("/", 1)[1] for ref in sorted(part.attachments or {})]
    if not ids:
        return 0
    with svc.db.session() as s:
        rows = s.scalars(select(TransferUpload).where(
            TransferUpload.transfer_id == t.id, TransferUpload.binary_id.in_(ids),
            TransferUpload.state != "uploaded").order_by(TransferUpload.binary_id)).all()
    sent = 0
    for row in rows:
        renew()
        held = _held(svc, t, row)
        if not held:
            _put(svc, t, row, renew)
            sent += 1
        with svc.db.session() as s:
            done = s.get(TransferUpload, row.id)
            done.state, done.uploaded_at = "uploaded", utcnow()
            audit.record(s, "transfer.attachment.held" if held else "transfer.attachment.uploaded",
                         actor="worker", transfer_id=t.id, authorization_id=t.authorization_id,
                         recipient=t.recipient, binary_id=row.binary_id, sha256=row.sha256,
                         size=row.size, part=part.part)
    return sent


def reset(svc: Services, t: Transfer, part: TransferBundle) -> None:
    """The recipient refused the bundle: ask again for every upload before a retry."""
    ids = [ref.split("/", 1)[1] for ref in part.attachments or {}]
    if ids:
        with svc.db.session() as s:
            for row in s.scalars(select(TransferUpload).where(
                    TransferUpload.transfer_id == t.id, TransferUpload.binary_id.in_(ids))):
                row.state, row.uploaded_at = "pending", None


def _target(svc: Services, t: Transfer, binary: str) -> tuple[str, dict]:
    peer = svc.settings.peers[t.recipient]
    headers = {"Accept": "application/fhir+json"}
    if peer.kind == "gateway" or peer.token is not None or peer.token_file is not None:
        headers["Authorization"] = f"Bearer {peer.bearer()}"
    base = f"{peer.base_url}/fhir" if peer.kind == "gateway" else peer.base_url
    return f"{base}/Binary/{binary}", headers


def _held(svc: Services, t: Transfer, row: TransferUpload) -> bool:
    """Does the recipient already hold these bytes? A gateway's ETag names their sha256;
    on a plain FHIR server the id alone does (it is derived from the content)."""

    url, headers = _target(svc, t, row.binary_id)
    try:
        response = requests.head(url, headers=headers, timeout=(10, svc.settings.http_timeout_s),
                                 allow_redirects=False, **svc.settings.peers[t.recipient].tls())
    except requests.RequestException as exc:
        raise DeliveryFailed(f"recipient {t.recipient} unreachable ({type(exc).__name__})") from None
    if response.status_code in (404, 405, 410, 501):
        return False
    if response.status_code >= 300:
        raise answer_error(t.recipient, f"Binary/{row.binary_id}", response.status_code,
                           response.headers, b"")
    if svc.settings.peers[t.recipient].kind == "gateway":
        return response.headers.get("ETag") == etag(row.sha256)
    return True


def _put(svc: Services, t: Transfer, row: TransferUpload, renew: Callable[[], None]) -> None:
    url, headers = _target(svc, t, row.binary_id)
    chunks = svc.blobs.chunks(row.blob_key)
    if svc.settings.peers[t.recipient].kind == "gateway":
        body = StreamedBody([], chunks, [], row.size, renew)
        headers["Content-Type"] = row.media_type or "application/octet-stream"
    else:
        head = json.dumps({"resourceType": "Binary", "id": row.binary_id,
                           "contentType": row.media_type or "application/octet-stream", "data": ""})
        cut = head.rindex('""') + 1
        body = StreamedBody([head[:cut].encode()], base64_chunks(chunks), [head[cut:].encode()],
                     4 * ((row.size + 2) // 3), renew)
        headers["Content-Type"] = "application/fhir+json"
    headers["Content-Length"] = str(len(body))
    try:
        with paced_session() as session:  # the read timeout measures the recipient
            # each write waits on the recipient as long as the answer may (delivery.py)
            response = session.put(url, data=body, headers=headers, allow_redirects=False,
                                   timeout=svc.settings.http_timeout_s, stream=True,
                                   **svc.settings.peers[t.recipient].tls())
            content = response.raw.read(MAX_ANSWER, decode_content=True)
    except Exception as exc:  # requests' and urllib3's errors alike: the upload did not land
        if body.error is not None:
            raise body.error from None
        raise DeliveryFailed(f"recipient {t.recipient}: upload of Binary/{row.binary_id} broken "
                             f"({type(exc).__name__})") from None
    if response.status_code >= 300:
        raise answer_error(t.recipient, f"Binary/{row.binary_id}", response.status_code,
                           response.headers, content)
    if svc.settings.peers[t.recipient].kind == "gateway" and response.headers.get("ETag") != etag(row.sha256):
        raise DeliveryFailed(f"recipient {t.recipient} stored other bytes for Binary/{row.binary_id} "
                             "than were sent (sha256 differs); sending again")
