"""Forwarding instances to the recipient: C-STORE, or STOW-RS where the recipient offers it.

Each instance's outcome is reported as it happens (`on_result(sop_uid, ok, detail)`), so
the gateway can record per-instance success durably and a resumed delivery sends only
what is missing (pass the delivered SOP Instance UIDs as `already_sent`).

C-STORE streams each file from disk as it is (`STORE_SEND_CHUNKED_DATASET`): no pixel
data is decoded or held in memory, and the recipient gets the source's bytes in the
source's transfer syntax. An instance whose syntax the recipient refuses is reported as
such (no transcoding). STOW-RS sends the files' bytes as they are (multipart/related,
streamed from disk), batched by size so a request holds at most `batch_bytes` (or one
instance larger than that). Not dicomweb-client's `store_instances`: it takes decoded
pydicom datasets and writes them again, whole in memory, so the recipient's sha256 would
not be the source's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import requests
from pynetdicom import _config
from pynetdicom.presentation import build_context
from pynetdicom.status import code_to_category

from .net import FastAE, check_version
from .uids import is_uid

LOGGER = logging.getLogger(__name__)

# Send C-STORE data sets straight from their files (never decoded into memory).
_config.STORE_SEND_CHUNKED_DATASET = True

MAX_CONTEXTS = 128


@dataclass(frozen=True)
class Outgoing:
    """One instance to forward: its identity and a plaintext Part 10 file."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: Path


@dataclass
class ForwardReport:
    sent: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # SOP UID -> reason (permanent)
    pending: list[str] = field(default_factory=list)  # not attempted/finished: retry later
    skipped: int = 0  # already sent in an earlier run

    @property
    def complete(self) -> bool:
        return not self.failed and not self.pending


ResultCallback = Callable[[str, bool, str], None]


def _noop(sop: str, ok: bool, detail: str) -> None:
    pass


def _nothing() -> None:
    pass


def forward_c_store(items: Iterable[Outgoing], host: str, port: int, ae_title: str,
                    calling_aet: str, *, already_sent: frozenset[str] = frozenset(),
                    on_result: ResultCallback = _noop, dimse_timeout: float = 300,
                    acse_timeout: float = 30) -> ForwardReport:
    """C-STORE every item not in `already_sent` to the recipient's SCP."""
    check_version()
    report = ForwardReport()
    todo = []
    for item in items:
        if item.sop_instance_uid in already_sent:
            report.skipped += 1
        elif not (is_uid(item.sop_instance_uid) and is_uid(item.sop_class_uid)
                  and is_uid(item.transfer_syntax)):
            report.failed[item.sop_instance_uid] = "invalid UID"
            on_result(item.sop_instance_uid, False, "invalid UID")
        else:
            todo.append(item)
    # one association per group of up to 128 (SOP class, transfer syntax) contexts
    groups: list[list[Outgoing]] = []
    keys: list[set] = []
    for item in todo:
        key = (item.sop_class_uid, item.transfer_syntax)
        for g, k in zip(groups, keys):
            if key in k or len(k) < MAX_CONTEXTS:
                g.append(item)
                k.add(key)
                break
        else:
            groups.append([item])
            keys.append({key})
    for group, group_keys in zip(groups, keys):
        _store_group(group, group_keys, host, port, ae_title, calling_aet, report,
                     on_result, dimse_timeout, acse_timeout)
    return report


def _store_group(group, group_keys, host, port, ae_title, calling_aet, report, on_result,
                 dimse_timeout, acse_timeout) -> None:
    ae = FastAE(ae_title=calling_aet)
    ae.acse_timeout = acse_timeout
    ae.dimse_timeout = dimse_timeout
    ae.network_timeout = None
    contexts = [build_context(klass, [ts]) for klass, ts in sorted(group_keys)]
    try:
        assoc = ae.associate(host, port, contexts=contexts, ae_title=ae_title)
    except OSError as exc:
        assoc = None
        LOGGER.warning("cannot reach recipient %s: %s", ae_title, exc)
    if assoc is None or not assoc.is_established:
        report.pending += [i.sop_instance_uid for i in group]
        return
    accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in assoc.accepted_contexts}
    try:
        for n, item in enumerate(group):
            sop = item.sop_instance_uid
            if (item.sop_class_uid, item.transfer_syntax) not in accepted:
                reason = (f"recipient does not accept SOP class {item.sop_class_uid} "
                          f"in transfer syntax {item.transfer_syntax}")
                report.failed[sop] = reason
                on_result(sop, False, reason)
                continue
            if not assoc.is_established:
                report.pending += [i.sop_instance_uid for i in group[n:]]
                return
            try:
                status = assoc.send_c_store(item.path)
            except (ValueError, OSError) as exc:
                report.failed[sop] = f"cannot send: {type(exc).__name__}: {exc}"
                on_result(sop, False, report.failed[sop])
                continue
            code = getattr(status, "Status", None) if status else None
            if code is None:
                report.pending += [i.sop_instance_uid for i in group[n:]]
                return  # aborted or timed out: the rest waits for a retry
            category = code_to_category(code)
            if category in ("Success", "Warning"):
                report.sent.append(sop)
                on_result(sop, True, f"0x{code:04X}")
            elif 0xA700 <= code <= 0xA7FF:  # out of resources: try again later
                report.pending.append(sop)
            else:
                report.failed[sop] = f"recipient refused it: status 0x{code:04X}"
                on_result(sop, False, report.failed[sop])
    finally:
        if assoc.is_established:
            assoc.release()


def forward_stow_rs(items: Iterable[Outgoing], url: str, *,
                    already_sent: frozenset[str] = frozenset(),
                    on_result: ResultCallback = _noop, session: requests.Session | None = None,
                    headers: dict | None = None, batch_bytes: int = 32 << 20,
                    timeout: float = 300, tls: dict | None = None,
                    on_answer: Callable[[], None] = _nothing,
                    on_sending: Callable[[], None] = _nothing) -> ForwardReport:
    """STOW-RS every item not in `already_sent` to the DICOMweb base `url`. `tls`: the
    `verify` and `cert` of each request (given per request: requests lets
    REQUESTS_CA_BUNDLE in the environment override a session's `verify`). `on_answer()`
    follows the `on_result` calls of each request, before the next request is sent: the
    caller may record a request's outcomes together there. `on_sending()` is called as
    each block of a request's body goes out (a slow recipient may take minutes over one
    request: the caller keeps its claim on the work meanwhile)."""
    session = session or requests.Session()
    tls = tls or {}
    report = ForwardReport()
    batch: list[Outgoing] = []
    size = 0
    for item in items:
        if item.sop_instance_uid in already_sent:
            report.skipped += 1
            continue
        item_size = item.path.stat().st_size
        if batch and size + item_size > batch_bytes:
            _stow_batch(session, url, headers or {}, timeout, batch, report, on_result, tls,
                        on_sending)
            on_answer()
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        _stow_batch(session, url, headers or {}, timeout, batch, report, on_result, tls,
                    on_sending)
        on_answer()
    return report


class _Multipart:
    """A multipart/related body of Part 10 files, read from disk as it is sent: the
    recipient gets the files' exact bytes (nothing decoded or re-encoded), and memory
    holds one block. Has a length, so requests sends Content-Length."""

    def __init__(self, paths: list[Path], boundary: str, on_block: Callable[[], None] = _nothing):
        self._on_block = on_block
        self._parts = [(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), p)
                       for p in paths]
        self._tail = f"\r\n--{boundary}--\r\n".encode()
        self._size = sum(len(h) + p.stat().st_size for h, p in self._parts) \
            + 2 * (len(paths) - 1) + len(self._tail)
        self._gen = self._blocks()
        self._buf = b""

    def __len__(self) -> int:
        return self._size

    def _blocks(self):
        for n, (head, path) in enumerate(self._parts):
            yield (b"\r\n" if n else b"") + head
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    yield block
        yield self._tail

    def read(self, n: int = -1) -> bytes:
        n = n if n and n > 0 else 1 << 20
        while len(self._buf) < n:
            block = next(self._gen, None)
            if block is None:
                break
            self._buf += block
        out, self._buf = self._buf[:n], self._buf[n:]
        self._on_block()
        return out


def _causes(exc: BaseException) -> str:
    """The exception's types down its chain (`ConnectionError < ProtocolError <
    TimeoutError`): what went wrong, without messages that may carry addresses."""
    names, seen = [], set()
    while exc is not None and id(exc) not in seen and len(names) < 6:
        seen.add(id(exc))
        names.append(type(exc).__name__)
        exc = exc.__cause__ or exc.__context__ or (exc.args[1] if len(exc.args) > 1
                                                   and isinstance(exc.args[1], BaseException) else None)
    return " < ".join(names)


def _stow_batch(session, url: str, headers: dict, timeout: float, batch: list[Outgoing],
                report: ForwardReport, on_result: ResultCallback, tls: dict,
                on_sending: Callable[[], None] = _nothing) -> None:
    import uuid

    uids = [i.sop_instance_uid for i in batch]
    boundary = uuid.uuid4().hex
    try:
        body = _Multipart([i.path for i in batch], boundary, on_sending)
    except OSError as exc:
        for uid in uids:
            report.failed[uid] = f"unreadable file: {type(exc).__name__}"
            on_result(uid, False, report.failed[uid])
        return
    head = {**headers, "Accept": "application/dicom+json",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Content-Length": str(len(body))}
    try:
        response = session.post(f"{url.rstrip('/')}/studies", data=body, headers=head,
                                timeout=(10, timeout), allow_redirects=False, **tls)
    except requests.RequestException as exc:
        LOGGER.warning("STOW-RS request failed: %s", _causes(exc))
        report.pending += uids
        return
    status = response.status_code
    answer = _parse_answer(response.content) if status in (200, 202, 409) else None
    if answer is None:
        if status in (408, 429) or status >= 500 or status in (200, 202, 409):
            report.pending += uids  # unconfirmed either way: send again later
        else:
            for uid in uids:
                report.failed[uid] = f"recipient refused the request: HTTP {status}"
                on_result(uid, False, report.failed[uid])
        return
    stored = set()
    failed = {}
    for ref in getattr(answer, "ReferencedSOPSequence", None) or []:
        if "ReferencedSOPInstanceUID" in ref:
            stored.add(str(ref.ReferencedSOPInstanceUID))
    for ref in getattr(answer, "FailedSOPSequence", None) or []:
        if "ReferencedSOPInstanceUID" in ref:
            reason = ref.get("FailureReason", 0)
            failed[str(ref.ReferencedSOPInstanceUID)] = f"failure reason 0x{int(reason):04X}"
    for uid in uids:
        if uid in stored:
            report.sent.append(uid)
            on_result(uid, True, "stored")
        elif uid in failed:
            report.failed[uid] = f"recipient refused it: {failed[uid]}"
            on_result(uid, False, report.failed[uid])
        else:
            report.pending.append(uid)  # not confirmed either way: send again later


def _parse_answer(body: bytes):
    try:
        import json

        from pydicom import Dataset

        return Dataset.from_json(json.loads(body))
    except Exception:
        return None


def outgoing_from_file(path: Path) -> Outgoing:
    """Describe a Part 10 file for forwarding (reads its header only)."""
    from .header import read_header

    h = read_header(path)
    if not is_uid(h.get("SOPInstanceUID")):
        raise ValueError("file has no valid SOP Instance UID")
    return Outgoing(h["SOPInstanceUID"], h.get("SOPClassUID", ""),
                    h.get("TransferSyntaxUID", ""), Path(path))
