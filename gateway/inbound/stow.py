"""Receive mode: DICOM instances from a trusted peer gateway by STOW-RS.

The body (multipart/related; type="application/dicom") is parsed as it is read: each
part streams into an encrypting blob writer (never whole in memory, no plaintext on
disk); its first 256 KB are kept to read the header at the end of the part. UIDs are
checked by the DICOM grammar (connectors/dicom/uids.py), the 128-byte preamble is zeroed
as on every path in, and each instance is recorded with its sha256 against the sending
peer and its study (a request's instances in one commit). The same instance sent again
(a resumed delivery) is taken once.
The answer is the STOW-RS response (DICOM JSON) naming each instance stored or failed.
An accepted bundle whose manifest lists an instance takes it (`bind`); instances no
bundle took within `receive_upload_ttl_s` (a sender that gave up: no Consent was ever
shown for them) are deleted by the hourly sweep of uploads (gateway/inbound/uploads.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from connectors.dicom.header import PREAMBLE, MalformedDicom, read_header_bytes
from connectors.dicom.uids import clean_uid
from gateway import audit
from gateway.errors import InvalidInput
from gateway.exchange.manifest import study_digest
from gateway.runtime.services import Services
from gateway.storage.models import ReceivedInstance

from .expiry import expire_unbound

HEAD = 256 * 1024
MAX_PART_HEADERS = 16 * 1024
# STOW-RS failure reasons (PS3.18 table 10.5.3-1 / PS3.4 C-STORE statuses)
CANNOT_UNDERSTAND, NOT_MATCHING, DUPLICATE_OTHER = 0xC000, 0xA900, 0x0111


@dataclass
class StowResult:
    stored: list[tuple[str, str]] = field(default_factory=list)  # (SOP class, SOP instance)
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # + failure reason
    studies: set[str] = field(default_factory=set)

    def status(self) -> int:
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    def response(self, retrieve_url: str) -> dict:
        def ref(klass, sop, reason=None):
            item = {"00081150": {"vr": "UI", "Value": [klass]} if klass else {"vr": "UI"},
                    "00081155": {"vr": "UI", "Value": [sop]} if sop else {"vr": "UI"}}
            if reason is not None:
                item["00081197"] = {"vr": "US", "Value": [reason]}
            return item

        out: dict = {"00081190": {"vr": "UR", "Value": [retrieve_url]}}
        if self.stored:
            out["00081199"] = {"vr": "SQ", "Value": [ref(k, s) for k, s in self.stored]}
        if self.failed:
            out["00081198"] = {"vr": "SQ", "Value": [ref(k, s, r) for k, s, r in self.failed]}
        return out


def boundary_of(content_type: str) -> bytes:
    """The boundary of a multipart/related; type="application/dicom" body, or InvalidInput."""
    kind, _, params = content_type.partition(";")
    values = {}
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        values[name.strip().lower()] = value.strip().strip('"')
    if kind.strip().lower() != "multipart/related" or \
            values.get("type", "").lower() != "application/dicom":
        raise InvalidInput('Content-Type must be multipart/related; type="application/dicom"')
    boundary = values.get("boundary", "")
    if not 1 <= len(boundary) <= 70 or not boundary.isascii():
        raise InvalidInput("multipart boundary missing or malformed")
    return boundary.encode()


def parts(stream: BinaryIO, length: int, boundary: bytes) -> Iterator["_Part"]:
    """Yield each part as a `_Part` whose `chunks()` streams its body (consume it before
    the next part). Raises InvalidInput if the body is cut short or malformed."""
    delim = b"\r\n--" + boundary
    buf = bytearray(b"\r\n")  # the first boundary may open the body
    remaining = length

    def fill() -> bool:
        nonlocal remaining
        if remaining <= 0:
            return False
        block = stream.read(min(1 << 20, remaining))
        if not block:
            raise InvalidInput("the body is shorter than its Content-Length")
        remaining -= len(block)
        buf.extend(block)
        return True

    while (i := buf.find(delim)) < 0:  # the preamble
        del buf[:max(0, len(buf) - len(delim))]
        if not fill():
            raise InvalidInput("no multipart boundary in the body")
    del buf[:i + len(delim)]
    while True:
        while (i := buf.find(b"\r\n")) < 0:
            if len(buf) > 1024 or not fill():
                raise InvalidInput("multipart body cut short after a boundary")
        if buf[:i].strip().startswith(b"--"):
            return  # the closing boundary
        del buf[:i + 2]
        while len(buf) < 2 and fill():
            pass
        if buf.startswith(b"\r\n"):
            headers = b""
        else:
            while (i := buf.find(b"\r\n\r\n")) < 0:
                if len(buf) > MAX_PART_HEADERS or not fill():
                    raise InvalidInput("multipart part headers too long or cut short")
            headers = bytes(buf[:i])
        del buf[:len(headers) + (4 if headers else 2)]

        def chunks() -> Iterator[bytes]:
            while (j := buf.find(delim)) < 0:
                keep = len(delim) - 1
                if len(buf) > keep:
                    out = bytes(buf[:len(buf) - keep])
                    del buf[:len(buf) - keep]
                    yield out
                if not fill():
                    raise InvalidInput("multipart body cut short inside a part")
            out = bytes(buf[:j])
            del buf[:j + len(delim)]
            yield out

        yield _Part(headers, chunks)


@dataclass
class _Part:
    headers: bytes
    chunks: object

    def content_type(self) -> str:
        for line in self.headers.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-type":
                return value.decode("latin-1").split(";")[0].strip().lower()
        return "application/dicom"


def receive(svc: Services, sender: str, stream: BinaryIO, length: int, content_type: str,
            study: str | None = None) -> StowResult:
    """Store every instance of a STOW-RS request; `study` when the URL names one. The
    instances are recorded together when the request has been read (one commit, before
    the answer names them stored); blobs of a request that breaks off are deleted."""
    result = StowResult()
    held: list[dict] = []  # checked and in the blob store, to be recorded
    try:
        for part in parts(stream, length, boundary_of(content_type)):
            writer = svc.blobs.writer()
            head = bytearray()
            size = 0
            try:
                for data in part.chunks():
                    if size < PREAMBLE:  # the preamble can hide another file format: zeros
                        n = min(PREAMBLE - size, len(data))
                        data = bytes(n) + data[n:]
                    if len(head) < HEAD:
                        head += data[:HEAD - len(head)]
                    writer.write(data)
                    size += len(data)
            except BaseException:
                writer.abort()
                raise
            row = _take(part.content_type(), bytes(head), writer, study, result)
            if row is not None:
                held.append(row)
    except BaseException:
        for row in held:
            svc.blobs.delete(row["blob_key"])
        raise
    _record(svc, sender, held, result)
    if not result.stored and not result.failed:
        raise InvalidInput("the request carries no DICOM instance")
    with svc.db.session() as s:
        audit.record(s, "receive.dicom.stored", actor=sender, role="peer",
                     stored=len(result.stored), failed=len(result.failed),
                     studies=len(result.studies))
    return result


def _take(content_type, head, writer, study, result: StowResult) -> dict | None:
    """The columns of a part's instance once its blob is complete, or None (the part
    refused, with its reason in `result`)."""
    if content_type != "application/dicom":
        writer.abort()
        result.failed.append(("", "", CANNOT_UNDERSTAND))
        return None
    try:
        header = read_header_bytes(head)
    except MalformedDicom:
        writer.abort()
        result.failed.append(("", "", CANNOT_UNDERSTAND))
        return None
    uids = {name: clean_uid(header.get(name)) for name in (
        "SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")}
    sop, klass = uids["SOPInstanceUID"] or "", uids["SOPClassUID"] or ""
    if None in uids.values() or (study and uids["StudyInstanceUID"] != study):
        writer.abort()
        result.failed.append((klass, sop, NOT_MATCHING))
        return None
    info = writer.close()
    return dict(study_uid=uids["StudyInstanceUID"], series_uid=uids["SeriesInstanceUID"],
                sop_instance_uid=sop, sop_class_uid=klass,
                transfer_syntax=clean_uid(header.get("TransferSyntaxUID")) or "",
                sha256=info.sha256, size=info.size, blob_key=info.key)


def _record(svc: Services, sender: str, held: list[dict], result: StowResult) -> None:
    """All in one transaction; when one is held already (a resumed delivery), each on its
    own, keeping the first copy."""
    if not held:
        return
    try:
        with svc.db.session() as s:
            s.add_all([ReceivedInstance(sender=sender, **row) for row in held])
    except IntegrityError:
        for row in held:
            _record_one(svc, sender, row, result)
        return
    except BaseException:
        for row in held:  # not recorded: no blob left behind
            svc.blobs.delete(row["blob_key"])
        raise
    for row in held:
        result.stored.append((row["sop_class_uid"], row["sop_instance_uid"]))
        result.studies.add(row["study_uid"])


def _record_one(svc: Services, sender: str, row: dict, result: StowResult) -> None:
    klass, sop = row["sop_class_uid"], row["sop_instance_uid"]
    try:
        with svc.db.session() as s:
            s.add(ReceivedInstance(sender=sender, **row))
    except BaseException as exc:
        svc.blobs.delete(row["blob_key"])  # not recorded: no blob left behind
        if not isinstance(exc, IntegrityError):
            raise
        with svc.db.session() as s:
            held = s.scalars(select(ReceivedInstance.sha256).filter_by(
                sender=sender, sop_instance_uid=sop)).first()
        if held != row["sha256"]:
            result.failed.append((klass, sop, DUPLICATE_OTHER))
            return
    result.stored.append((klass, sop))
    result.studies.add(row["study_uid"])


def held(svc: Services, sender: str, listed: dict[str, dict[str, str]]) -> dict[str, dict]:
    """For each study a manifest lists (study -> {SOP UID: sha256}), how many of those
    instances we hold from `sender` with that sha256, and the study digest of them."""
    out = {}
    with svc.db.session() as s:
        for study, sops in listed.items():
            rows = s.execute(select(ReceivedInstance.sop_instance_uid, ReceivedInstance.sha256)
                             .filter_by(sender=sender, study_uid=study)).all()
            match = [sha for sop, sha in rows if sops.get(sop) == sha]
            out[study] = {"instances": len(match), "sha256": study_digest(match)}
    return out


def received_counts(svc: Services, sender: str, studies: list[str]) -> dict[str, int]:
    """Instances held per study from `sender` (for the inbox)."""
    with svc.db.session() as s:
        return {uid: len(s.scalars(select(ReceivedInstance.id).filter_by(
            sender=sender, study_uid=uid)).all()) for uid in studies}


def taken(svc: Services, sender: str, study: str, sop: str | None = None) -> list[ReceivedInstance]:
    """Instances of a study held from `sender` that an accepted bundle took (the inbox
    serves these), in series and instance order of arrival."""
    query = select(ReceivedInstance).where(ReceivedInstance.sender == sender,
                                           ReceivedInstance.study_uid == study,
                                           ReceivedInstance.bundle_id.is_not(None))
    if sop is not None:
        query = query.where(ReceivedInstance.sop_instance_uid == sop)
    with svc.db.session() as s:
        return s.scalars(query.order_by(ReceivedInstance.series_uid, ReceivedInstance.id)).all()


def bind(s, sender: str, listed: dict[str, dict[str, str]], bundle_row_id: str) -> None:
    """Inside the acceptance transaction: the instances the bundle lists (same sha256)
    that no earlier bundle took are this bundle's now."""
    for study, sops in listed.items():
        for row in s.scalars(select(ReceivedInstance).filter_by(
                sender=sender, study_uid=study, bundle_id=None).with_for_update()):
            if sops.get(row.sop_instance_uid) == row.sha256:
                row.bundle_id = bundle_row_id


def sweep_now(svc: Services) -> int:
    """Delete instances no accepted bundle took, older than `receive_upload_ttl_s`."""
    def record_expiry(s, rows):
        for sender in sorted({r.sender for r in rows}):
            mine = [r for r in rows if r.sender == sender]
            audit.record(s, "receive.dicom.expired", actor="system", sender=sender,
                         instances=len(mine), studies=len({r.study_uid for r in mine}))
    return expire_unbound(svc, ReceivedInstance, record_expiry)
