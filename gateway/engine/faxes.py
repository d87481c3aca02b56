"""Faxes in the gateway: cover sheets for transfers, ingesting the drop folders, and the
review queue for faxes that matched no transfer unambiguously.

The protocol side (claiming files, sandboxed parsing, QR/text matching, the on-disk
store) is `connectors.fax`; this module feeds it the open transfers, runs its
folder watchers in the worker, and wakes a transfer's pull when its fax arrives.
"""
from __future__ import annotations

import logging
import os
import secrets
import threading
from datetime import date
from pathlib import Path

from sqlalchemy import select, update

from connectors import connector_class
from connectors.base import ConnectorError
from connectors.fax.cover import CoverSheet, render_cover_pdf, render_request_pdf
from connectors.fax.match import TransferDescriptor
from connectors.fax.store import StoreBusy
from connectors.files import write_atomic
from gateway import audit
from gateway.config import SourceConfig
from gateway.errors import Conflict, InvalidInput, NotFound
from gateway.runtime.services import Services
from gateway.storage.models import Case, Transfer, TransferSource

from . import pulls
from .sources import connector_options
from .transfers import TERMINAL

log = logging.getLogger(__name__)
_ingestors: dict[str, object] = {}  # per process: an ingestor remembers files settling


def cover_key_path(svc: Services) -> Path:
    return svc.settings.keys_dir / "fax-cover.key"


def ensure_cover_key(keys_dir: Path) -> Path:
    """Create the cover-code HMAC key (random, 0600) if missing."""
    path = keys_dir / "fax-cover.key"
    if not path.exists():
        keys_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path


def fax_sources(svc: Services) -> dict[str, SourceConfig]:
    return {n: s for n, s in svc.settings.sources.items() if s.kind == "fax-drop"}


def _source(svc: Services, name: str | None) -> tuple[str, SourceConfig]:
    sources = fax_sources(svc)
    if name is None:
        if len(sources) != 1:
            raise InvalidInput(f"name the fax source; configured: {', '.join(sorted(sources)) or 'none'}")
        name = next(iter(sources))
    if name not in sources:
        raise InvalidInput(f"{name!r} is not a configured fax-drop source")
    return name, sources[name]


def _connector(svc: Services, name: str, cfg: SourceConfig):
    return connector_class("fax-drop")(name, connector_options(svc, cfg), svc.settings.work_dir / "fax")


def request_id(transfer_id: str) -> str:
    """The short id printed on the cover sheet and quoted by the provider."""
    return "R-" + transfer_id[:10].upper()


def _descriptor(t: Transfer) -> TransferDescriptor:
    patient = t.authorization.claims["patient"]
    name = " ".join([*patient["name"].get("given", []), patient["name"]["family"]])
    return TransferDescriptor(t.id, name, date.fromisoformat(patient["birthDate"]), request_id(t.id))


def open_transfers(svc: Services, source: str) -> list[TransferDescriptor]:
    """Transfers that faxes from `source` may answer: those still running that wait for
    them, and the finished ones of cases still open (a late answer: the case's next pass
    starts a follow-up that takes it)."""
    with svc.db.session() as s:
        rows = s.scalars(select(Transfer).join(TransferSource).where(
            TransferSource.name == source, TransferSource.state != "done",
            Transfer.state.not_in(TERMINAL))).all()
        latest: dict[str, Transfer] = {}  # the newest finished one per case: its cover sheet
        for t in s.scalars(select(Transfer).join(TransferSource)
                           .join(Case, Case.authorization_id == Transfer.authorization_id)
                           .where(TransferSource.name == source, Transfer.state == "completed",
                                  Case.state == "open").order_by(Transfer.created_at)):
            latest[t.authorization_id] = t
        return [_descriptor(t) for t in [*rows, *latest.values()]]


def late_faxes(svc: Services, source: str, transfer_ids: list[str], taken: set[str]) -> int:
    """How many faxes were matched to these finished transfers and are not yet taken
    (`taken`: the origins, "fax:<id>", pulled already)."""
    if not transfer_ids:
        return 0
    found = _connector(svc, source, svc.settings.sources[source]).matched_to(transfer_ids)
    return len([f for f in found if f"fax:{f}" not in taken])



def _transfer_from(s, transfer_id: str, source: str) -> Transfer:
    """The transfer, which must pull from this fax source."""
    t = s.get(Transfer, transfer_id)
    if t is None:
        raise NotFound(f"no transfer {transfer_id}")
    if source not in {src.name for src in t.sources}:
        raise InvalidInput(f"transfer {transfer_id} does not pull from {source!r}")
    return t


def cover_sheet(svc: Services, transfer_id: str, source: str | None, actor: str,
                role: str | None = None) -> bytes:
    name, cfg = _source(svc, source)
    with svc.db.session() as s:
        t = _transfer_from(s, transfer_id, name)
        d = _descriptor(t)
        audit.record(s, "fax.cover_sheet", actor=actor, role=role, transfer_id=t.id,
                     authorization_id=t.authorization_id, source=name)
    sheet = CoverSheet(transfer_id=d.transfer_id, patient_name=d.patient_name,
                       birth_date=d.birth_date, request_id=d.request_id,
                       return_fax=str(cfg.options.get("return_fax", "")),
                       requester=svc.settings.organization)
    return render_cover_pdf(sheet, cover_key_path(svc).read_bytes().strip())


def write_request(svc: Services, session, t: Transfer, source: str, reminder: int) -> Path | None:
    """Put a records request (letter and a fresh cover sheet) for this transfer in the fax
    source's outbound folder (`options.outbox`), where the fax server sends it from.
    Written under a temporary name and renamed, so the fax server never sends half a
    file; the name carries the request id only."""
    cfg = svc.settings.sources[source]
    outbox = cfg.options.get("outbox")
    if not outbox:
        log.warning("fax source %s has no outbox: reminder %d of transfer %s not sent",
                    source, reminder, t.id)
        return None
    d = _descriptor(t)
    sheet = CoverSheet(transfer_id=d.transfer_id, patient_name=d.patient_name,
                       birth_date=d.birth_date, request_id=d.request_id,
                       return_fax=str(cfg.options.get("return_fax", "")),
                       requester=svc.settings.organization)
    pdf = render_request_pdf(sheet, cover_key_path(svc).read_bytes().strip(), reminder)
    target = write_atomic(Path(outbox) / f"request-{d.request_id}-{reminder}.pdf", pdf)
    audit.record(session, "fax.request.written", actor="worker", transfer_id=t.id,
                 authorization_id=t.authorization_id, source=source, reminder=reminder,
                 file=target.name, size=len(pdf))
    return target


def wake(svc: Services, transfer_id: str, source: str) -> None:
    """A fax from `source` for this transfer arrived: run that source's pull now rather
    than at its next retry. It sends that source's pull task directly: a `pulling` step
    sent instead is dropped when another run of that step, one that looked before this
    fax came, holds the transfer. A pull of the source running meanwhile cannot take the
    task, but it sees the cleared next_attempt_at and, finding nothing yet, tries again
    at once (pulls._failed)."""
    pulling = select(Transfer.id).where(Transfer.id == transfer_id, Transfer.state == "pulling")
    with svc.db.session() as s:
        woken = s.execute(
            update(TransferSource)
            .where(TransferSource.transfer_id == transfer_id, TransferSource.name == source,
                   TransferSource.state.not_in(pulls.FINISHED),
                   TransferSource.transfer_id.in_(pulling.scalar_subquery()))
            .values(next_attempt_at=None)
            .execution_options(synchronize_session=False)).rowcount
    if woken:
        pulls.enqueue(transfer_id, source)


def _ingestor(svc: Services, name: str, cfg: SourceConfig):
    ingestor = _ingestors.get(name)
    if ingestor is None:
        conn = _connector(svc, name, cfg)
        conn.check()
        ingestor = conn.ingestor(lambda: open_transfers(svc, name),
                                 settle_seconds=float(cfg.options.get("file_settle_seconds", 2.0)),
                                 workers=svc.settings.fax_ingest_concurrency,
                                 on_result=lambda outcome: _outcome(svc, name, outcome))
        _ingestors[name] = ingestor
    return ingestor


def _outcome(svc: Services, source: str, outcome) -> None:
    with svc.db.session() as s:
        audit.record(s, f"fax.{outcome.state}", actor="worker", transfer_id=outcome.transfer_id,
                     source=source, fax_id=outcome.fax_id, method=outcome.method,
                     reason=outcome.reason)
    waiting = {outcome.transfer_id} if outcome.state == "matched" and outcome.transfer_id else set()
    if _connector(svc, source, svc.settings.sources[source]).backlog() == 0:
        # nothing left to analyze (this file may have gone to review or the quarantine):
        # pulls that waited for the backlog to clear finish now, not at their next retry
        with svc.db.session() as s:
            waiting.update(s.scalars(select(Transfer.id).join(TransferSource).where(
                TransferSource.name == source, TransferSource.state != "done",
                Transfer.state == "pulling")))
    for transfer_id in sorted(waiting):
        wake(svc, transfer_id, source)


def ingest_now(svc: Services) -> dict[str, int]:
    """One pass over every fax drop folder now; returns counts by outcome."""
    counts: dict[str, int] = {}
    for name, cfg in fax_sources(svc).items():
        try:
            outcomes = _ingestor(svc, name, cfg).scan_once()
        except StoreBusy:
            continue  # the worker's watcher is ingesting this folder right now
        for outcome in outcomes:
            counts[outcome.state] = counts.get(outcome.state, 0) + 1
    return counts


def start_watchers(svc: Services, stop: threading.Event) -> list[threading.Thread]:
    """Watch every fax drop folder (inotify where available, else polling every
    fax_scan_interval_s) in threads of this process until `stop` is set; each analyzes
    up to fax_ingest_concurrency files at once. Run by the one worker that also runs the
    periodic reconciler (`--beat`)."""
    threads = []
    for name, cfg in fax_sources(svc).items():
        try:
            ingestor = _ingestor(svc, name, cfg)
        except ConnectorError as exc:
            log.error("fax source %s cannot be watched: %s", name, exc)
            continue
        thread = threading.Thread(target=_watch, name=f"fax-{name}", daemon=True,
                                  args=(ingestor, stop, svc.settings.fax_scan_interval_s))
        thread.start()
        threads.append(thread)
    return threads


def _watch(ingestor, stop: threading.Event, interval: float) -> None:
    ingestor.run(stop, interval)  # (the process started its sandbox: runtime/warmup.py)


# --- review queue ---------------------------------------------------------------------

def review_queue(svc: Services, source: str | None):
    name, cfg = _source(svc, source)
    return name, _connector(svc, name, cfg).review_queue()


def read_review(svc: Services, source: str | None, what: str, actor: str, role: str | None,
                fax_id: str | None = None):
    """The review queue, for a person about to read it (`what`: list, item or preview): a
    fax awaiting review is patient data, so each read is on the audit log first."""
    name, queue = review_queue(svc, source)
    with svc.db.session() as s:
        audit.record(s, "fax.review.read", actor=actor, role=role, source=name, what=what,
                     fax_id=fax_id)
    return name, queue


def assign(svc: Services, source: str | None, fax_id: str, transfer_id: str, actor: str,
           role: str | None = None) -> None:
    """A person matched the fax: attach it to an open transfer that pulls from this source."""
    from connectors.fax.review import ReviewError

    name, queue = review_queue(svc, source)
    with svc.db.session() as s:
        t = _transfer_from(s, transfer_id, name)
        if t.state in TERMINAL:
            raise Conflict(f"transfer {transfer_id} is {t.state}; a fax can join only an open transfer")
        try:
            queue.assign(fax_id, transfer_id, by=actor)
        except ReviewError as exc:
            raise Conflict(str(exc)) from None
        audit.record(s, "fax.assigned", actor=actor, role=role, transfer_id=t.id,
                     authorization_id=t.authorization_id, source=name, fax_id=fax_id)
    wake(svc, transfer_id, name)


def reject(svc: Services, source: str | None, fax_id: str, reason: str, actor: str,
           role: str | None = None) -> None:
    from connectors.fax.review import ReviewError

    if not reason:
        raise InvalidInput("a rejection needs a reason")
    name, queue = review_queue(svc, source)
    try:
        queue.reject(fax_id, reason, by=actor)
    except ReviewError as exc:
        raise Conflict(str(exc)) from None
    with svc.db.session() as s:
        audit.record(s, "fax.rejected", actor=actor, role=role, source=name, fax_id=fax_id)
