"""Fax/PDF drop folder: take each received fax, match it to its transfer, lose none.

Two halves, sharing one `FaxStore` (see store.py for the on-disk states):

* `FaxIngestor` watches the drop folder, claims each file once it is complete (size
  and mtime unchanged for `settle_seconds` and no local process holding it open for
  writing; names starting with "." are taken for temporary files and left alone), parses it in the sandbox, matches it
  (cover code, sidecar, text; see match.py) and files it under matched/, review/ or
  quarantine/. The gateway runs it in a long-lived process (`run`) or a periodic task
  (`scan_once`), passing a callable that lists the open transfers.
* `FaxDropConnector.fetch(query)` yields the matched faxes of one transfer as
  `RawRecord(kind="fax", media_type="application/pdf")`; a fax whose origin the
  gateway reports in `query.already_fetched` moves to done/.

`RawRecord.metadata` of a fax::

    transfer_id   the transfer it belongs to
    match         "qr" | "sidecar" | "text" | "review" (assigned by a person)
    fax_id        our id of the fax (also in origin, "fax:<fax_id>")
    pages         page count of the delivered PDF (cover sheet pages removed)
    cover_pages_removed  0-based pages of the received file that were removed
    fax_number    sending fax number when known (sidecar, TIFF description), else None
    received_at   ISO 8601 UTC (the drop file's modification time)
    original_media_type, original_sha256, original_size   the file as received

Sidecar: a JSON object next to the fax, named ``<name>.json`` or ``<stem>.json``, with
any of transfer_id, request_id, patient_name, birth_date, fax_number (or from,
caller_id, remote_id); it is claimed together with its fax.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from connectors.base import (
    Connector,
    ConnectorError,
    Progress,
    RawRecord,
    RecordQuery,
    SourceUnavailable,
    hash_file,
    open_regular,
    safe_name,
)

from .cover import check_key, parse_cover_payload
from .match import Evidence, MatchResult, TransferDescriptor, match_fax
from .sandbox import FileRejected, Limits, analyze, build, phone_like, render_previews
from .store import FAX_ID_RE, FaxStore, StoreBusy, read_json, write_json
from .watch import FolderWatcher, open_for_writing

log = logging.getLogger(__name__)

DOCUMENT_SUFFIXES = (".pdf", ".tif", ".tiff")
SIDECAR_MAX = 64 * 1024
_SIDECAR_FIELDS = {"transfer_id": "transfer_id", "request_id": "request_id", "patient_name": "patient_name",
                   "birth_date": "birth_date", "fax_number": "fax_number", "from": "fax_number",
                   "caller_id": "fax_number", "remote_id": "fax_number"}


@dataclass(frozen=True)
class Outcome:
    """What happened to one fax in a pass (ids and codes only, no patient data)."""

    fax_id: str
    state: str  # "matched", "review", "quarantine" or "claimed" (retry later)
    transfer_id: str | None = None
    method: str | None = None
    reason: str | None = None


def hostile_reason(raw: bytes) -> str | None:
    """Why a drop-folder name is refused, or None when it is a plain name."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "name is not valid UTF-8"
    if ".." in name:
        return "name contains '..'"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "name contains control characters (newline, tab, ...)"
    if safe_name(name) is None:
        return "name is not a plain file name"
    return None


def read_sidecar(path: Path) -> dict:
    """Known fields of a sidecar JSON file, validated; {} when it is unusable."""
    fh = open_regular(path)  # a link or a FIFO named like a sidecar is no sidecar
    if fh is None:
        return {}
    try:
        with fh:
            data = json.loads(fh.read(SIDECAR_MAX + 1)[:SIDECAR_MAX])
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    out = {}
    for key, field in _SIDECAR_FIELDS.items():
        value = data.get(key)
        if isinstance(value, (str, int)) and field not in out and 0 < len(str(value)) <= 200:
            out[field] = str(value).strip()
    if "fax_number" in out and not phone_like(out["fax_number"]):
        del out["fax_number"]
    return out


class FaxIngestor:
    """Claims, parses, matches and files every fax dropped into `drop`."""

    def __init__(self, drop: Path, store: FaxStore, cover_key: bytes,
                 open_transfers: Callable[[], Sequence[TransferDescriptor]],
                 limits: Limits = Limits(), settle_seconds: float = 2.0,
                 empty_settle_seconds: float = 30.0, on_result: Callable[[Outcome], None] | None = None,
                 workers: int | None = None, orphan_sidecar_seconds: float = 3600.0):
        check_key(cover_key)  # a wrong key must fail at start, not quarantine every fax
        self.drop = Path(drop)
        self.store = store
        self.cover_key = cover_key
        self.open_transfers = open_transfers
        self.limits = limits
        self.settle_seconds = settle_seconds
        self.empty_settle_seconds = empty_settle_seconds
        self.on_result = on_result or (lambda outcome: None)
        self.orphan_sidecar_seconds = orphan_sidecar_seconds  # a sidecar alone this long is set aside
        # faxes analyzed at once, each in its own sandbox process (default: one per CPU)
        self.workers = max(1, workers if workers is not None else os.cpu_count() or 1)
        self._seen: dict[bytes, tuple[int, int, float]] = {}

    # ---- one pass -----------------------------------------------------------------

    def scan_once(self) -> list[Outcome]:
        """Recover, claim every complete file, process every claimed fax. Returns outcomes.

        Up to `workers` faxes are processed at once, in threads that each wait on the
        fax's own sandbox process; `on_result` is called from those threads. While some
        are processing, the drop folder is looked at again, so a fax that settles
        meanwhile starts as soon as a worker is free rather than at the next pass. Raises
        StoreBusy when another ingestor (thread or process) holds the store.
        """
        outcomes: list[Outcome] = []
        with self.store.locked():  # held for the whole pass: one ingestor per store
            self.store.recover(self.drop)
            submitted: set[str] = set()
            pending: set[Future] = set()
            with ThreadPoolExecutor(max(1, self.workers), thread_name_prefix="fax") as pool:
                while True:
                    self._claim_complete()
                    fresh = [f for f in self.store.ids("claimed") if f not in submitted]
                    if fresh:
                        # listed for each batch, outside the per-fax error handling: if the
                        # gateway cannot list its transfers (database down), the faxes stay
                        # claimed for the next pass (those already running go on)
                        try:
                            transfers = list(self.open_transfers())
                        except Exception:
                            if not pending:
                                raise
                            log.warning("fax ingest: transfer list unavailable, faxes left claimed")
                            fresh = []
                        submitted.update(fresh)
                        pending.update(pool.submit(self._one, fax_id, transfers) for fax_id in fresh)
                    if not pending:
                        return outcomes
                    # wake when a fax is done (a worker is free) or a settling file may be complete
                    done, pending = wait(pending, timeout=max(0.05, self.settle_seconds) if self._seen else None,
                                         return_when=FIRST_COMPLETED)
                    outcomes.extend(f.result() for f in done)

    def _one(self, fax_id: str, transfers: Sequence[TransferDescriptor]) -> Outcome:
        outcome = self._process(fax_id, transfers)
        self.on_result(outcome)
        return outcome

    def _claim_complete(self) -> None:
        for raw, sidecar, facts in self._complete_files():
            try:
                self.store.claim(self.drop, raw, facts, sidecar)
            except FileNotFoundError:
                continue  # taken away meanwhile
            except OSError as exc:  # this file only; recover() undoes the half claim
                log.warning("fax drop: cannot claim a file: %s", type(exc).__name__)

    def run(self, stop: threading.Event, poll_seconds: float = 10.0, use_inotify: bool = True) -> None:
        """Process faxes until `stop` is set; survives errors of single files and busy stores."""
        watcher = FolderWatcher(self.drop, use_inotify=use_inotify)
        log.info("fax ingest watching (%s)", watcher.mode)
        try:
            while not stop.is_set():
                try:
                    self.scan_once()
                except StoreBusy:
                    pass
                except Exception as exc:  # e.g. the transfer list is unavailable: retry next pass
                    log.warning("fax ingest pass failed: %s", type(exc).__name__)
                wait = min(poll_seconds, self.settle_seconds) if self._seen else poll_seconds
                if stop.is_set():
                    break
                watcher.wait(max(0.05, wait), stop)
        finally:
            watcher.close()

    # ---- completeness -----------------------------------------------------------------

    def _complete_files(self) -> list[tuple[bytes, bytes | None, dict]]:
        """Drop-folder entries unchanged for long enough: (name, sidecar name, claim facts)."""
        now = time.monotonic()
        names = os.listdir(os.fsencode(self.drop))
        present = set(names)
        sidecars = {n for n in names if n.lower().endswith(b".json")}
        owned = {side for n in names if n not in sidecars for side in [self._sidecar_for(n, sidecars)] if side}
        ready: list[tuple[bytes, bytes | None, dict]] = []
        for raw in names:
            if raw.startswith(b".") and b".." not in raw:
                continue  # hidden: a fax server's temporary file, renamed when complete
            hostile = hostile_reason(raw)
            orphan = raw in sidecars and hostile is None
            if raw in owned and hostile is None:
                continue  # taken with its document
            try:
                st = os.lstat(os.path.join(os.fsencode(self.drop), raw))
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            key = (st.st_size, st.st_mtime_ns)
            seen = self._seen.get(raw)
            if seen is None or seen[:2] != key:
                self._seen[raw] = (*key, now)
                continue
            if orphan:
                needed = self.orphan_sidecar_seconds
            elif not stat.S_ISREG(st.st_mode):
                needed = 0
            else:
                needed = self.empty_settle_seconds if st.st_size == 0 else self.settle_seconds
            if now - seen[2] < needed:
                continue
            del self._seen[raw]
            facts = {"hostile": hostile, "orphan_sidecar": orphan}
            ready.append((raw, None if orphan else self._sidecar_for(raw, sidecars), facts))
        for raw in list(self._seen):
            if raw not in present:
                del self._seen[raw]
        if ready:
            dropb = os.fsencode(self.drop)
            busy = open_for_writing([os.path.join(dropb, raw) for raw, _, _ in ready])
            if busy:  # stable, but a local process still writes it: look again later
                ready = [r for r in ready if os.path.join(dropb, r[0]) not in busy]
        return ready

    @staticmethod
    def _sidecar_for(raw: bytes, sidecars: set[bytes]) -> bytes | None:
        stem, dot, _ = raw.rpartition(b".")
        for candidate in (raw + b".json", (stem if dot else raw) + b".json"):
            if candidate in sidecars and candidate != raw:
                return candidate
        return None

    # ---- processing ---------------------------------------------------------------------

    def _process(self, fax_id: str, transfers: Sequence[TransferDescriptor]) -> Outcome:
        folder = self.store.path("claimed", fax_id)
        work = self.store.path("work", fax_id)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            meta = read_json(folder / "meta.json")
            if meta.get("hostile"):
                raise FileRejected("hostile-name", meta["hostile"])
            if meta.get("orphan_sidecar"):
                raise FileRejected("orphan-sidecar", "sidecar file whose fax never arrived")
            st = os.lstat(folder / "original")
            if not stat.S_ISREG(st.st_mode):
                raise FileRejected("not-a-file", "not a regular file (link, FIFO or device)")
            outcome = self._match_and_build(fax_id, folder, work, meta, transfers)
        except FileRejected as exc:
            self.store.quarantine(fax_id, "claimed", exc.reason, exc.detail)
            log.info("fax %s quarantined: %s", fax_id, exc.reason)
            outcome = Outcome(fax_id, "quarantine", reason=exc.reason)
        except OSError as exc:
            log.warning("fax %s left claimed for a retry: %s", fax_id, type(exc).__name__)
            outcome = Outcome(fax_id, "claimed", reason=type(exc).__name__)
        except Exception as exc:  # a bug must not stop the other faxes
            log.error("fax %s: unexpected %s, quarantined", fax_id, type(exc).__name__)  # no message: it may quote content
            self.store.quarantine(fax_id, "claimed", "internal-error", type(exc).__name__)
            outcome = Outcome(fax_id, "quarantine", reason="internal-error")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return outcome

    def _match_and_build(self, fax_id: str, folder: Path, work: Path, meta: dict,
                         transfers: Sequence[TransferDescriptor]) -> Outcome:
        original = folder / "original"
        analysis = analyze(original, work, self.limits)
        codes, pages = [], []
        for found in analysis.codes:
            code = parse_cover_payload(found["text"], self.cover_key)
            if code is not None:
                codes.append(code)
                pages.append(found["page"])
        sidecar = read_sidecar(folder / "sidecar") if (folder / "sidecar").exists() else {}
        evidence = Evidence(tuple(codes), tuple(pages), sidecar or None, tuple(analysis.text),
                            analysis.text_source)
        result = match_fax(evidence, transfers)
        drop_pages = list(result.cover_pages)
        reasons = list(result.reasons)
        if len(drop_pages) >= analysis.pages:
            drop_pages = []
            result = MatchResult(None, "review", tuple(reasons) + ("the fax holds only the cover sheet",),
                                 result.candidates or ((result.transfer_id,) if result.transfer_id else ()))
        built = build(original, work, drop_pages, self.limits)
        previews = 0 if result.automatic else render_previews(original, work, self.limits)  # for review
        doc_sha, doc_size = hash_file(Path(built.path))
        orig_sha, orig_size = hash_file(original)
        received = datetime.fromtimestamp(meta["source_mtime_ns"] / 1e9, timezone.utc)
        for name in ["document.pdf"] + [f"preview-{n}.png" for n in range(1, previews + 1)]:
            if (work / name).exists():
                os.replace(work / name, folder / name)
        state = "matched" if result.automatic else "review"
        write_json(folder / "result.json", {
            "decision": "matched" if result.automatic else "pending",
            "transfer_id": result.transfer_id, "match": result.method, "reasons": list(result.reasons),
            "candidates": list(result.candidates), "cover_pages_removed": drop_pages,
            "pages": built.pages, "received_pages": analysis.pages, "sha256": doc_sha, "size": doc_size,
            "original_sha256": orig_sha, "original_size": orig_size,
            "original_media_type": "application/pdf" if analysis.type == "pdf" else "image/tiff",
            "fax_number": sidecar.get("fax_number") or analysis.fax_number,
            "received_at": received.isoformat(), "text_source": analysis.text_source,
        })
        self.store.move(fax_id, "claimed", state)
        log.info("fax %s -> %s (%s, %d pages, sha256 %s)", fax_id, state, result.method, built.pages, doc_sha[:12])
        return Outcome(fax_id, state, result.transfer_id, result.method)


class FaxDropConnector(Connector):
    """Yields the matched faxes of a transfer. Options: drop (folder), store (folder),
    cover_key_file (HMAC key for cover codes; needed only to ingest)."""

    name = "fax-drop"
    transient_errors = (SourceUnavailable,)

    def __init__(self, source, options, workdir, progress=None):
        super().__init__(source, options, workdir, progress)
        try:
            self.drop = Path(options["drop"])
            self.store_root = Path(options["store"])
        except KeyError as exc:
            raise ConnectorError(f"fax-drop source {source!r}: option {exc.args[0]!r} is required") from None
        self._store: FaxStore | None = None

    @property
    def store(self) -> FaxStore:
        if self._store is None:
            self._store = FaxStore(self.store_root)
        return self._store

    def check(self) -> None:
        for label, folder in (("drop", self.drop), ("store", self.store_root)):
            if not folder.is_dir():
                raise SourceUnavailable(f"fax-drop {label} folder {folder} does not exist")
            if not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
                raise SourceUnavailable(f"fax-drop {label} folder {folder} is not readable and writable")
        self.store  # creates the state folders

    def cover_key(self) -> bytes:
        path = self.options.get("cover_key_file")
        if not path:
            raise ConnectorError(f"fax-drop source {self.source!r}: option 'cover_key_file' is required to ingest")
        return Path(path).read_bytes().strip()

    def ingestor(self, open_transfers: Callable[[], Sequence[TransferDescriptor]], **kwargs) -> FaxIngestor:
        return FaxIngestor(self.drop, self.store, self.cover_key(), open_transfers, **kwargs)

    def review_queue(self):
        from .review import ReviewQueue

        return ReviewQueue(self.store)

    def acknowledge(self, origins: Iterable[str]) -> int:
        """Mark faxes as stored by the gateway (matched/ -> done/); returns how many moved.
        `fetch` does the same for the origins in `query.already_fetched`."""
        moved = 0
        for origin in origins:
            fax_id = origin.removeprefix("fax:")
            if FAX_ID_RE.match(fax_id) and self.store.path("matched", fax_id).is_dir():
                self.store.move(fax_id, "matched", "done")
                moved += 1
        return moved

    def matched_to(self, transfer_ids: Iterable[str]) -> list[str]:
        """Faxes matched to one of these transfers and not yet taken by a pull."""
        wanted, found = set(transfer_ids), []
        for fax_id in self.store.ids("matched"):
            try:
                result = read_json(self.store.path("matched", fax_id) / "result.json")
            except (OSError, ValueError):
                continue
            if result.get("transfer_id") in wanted:
                found.append(fax_id)
        return found

    def backlog(self) -> int:
        """Received files not yet analyzed (see FaxStore.backlog): while there are any, a
        pull waits for them, for at most `backlog_wait_seconds` after a file's last change."""
        return self.store.backlog(self.drop, float(self.options.get("backlog_wait_seconds", 600)))

    def fetch(self, query: RecordQuery) -> Iterator[RawRecord]:
        """Yield the transfer's matched faxes. Faxes come when the provider sends them:
        until one has come, until none has come for `settle_seconds` (option, default
        600: a provider may send the records in several faxes), and while files in the
        drop folder still wait to be analyzed (any of them may be this transfer's; for at
        most `backlog_wait_seconds`, option, default 600, after a file's last change), this
        ends with SourceUnavailable after yielding what there is, so the pull is tried
        again later and one transfer carries every fax that was already in the folder."""
        settle = float(self.options.get("settle_seconds", 600))
        # counted before the matched faxes are listed: the store's states are listed in
        # the order a fax moves through them, so one moving meanwhile is seen at least once
        backlog = self.backlog()
        had_any = any(o.startswith("fax:") for o in query.already_fetched)
        newest = None
        for record in self._fetch_matched(query):
            had_any = True
            received = datetime.fromisoformat(record.metadata["received_at"])
            newest = received if newest is None or received > newest else newest
            yield record
        if not had_any:
            raise SourceUnavailable(f"fax-drop {self.source!r}: no fax has arrived yet for this transfer")
        if backlog:
            raise SourceUnavailable(f"fax-drop {self.source!r}: waiting for {backlog} received "
                                    "file(s) to be analyzed")
        if newest is not None and (datetime.now(timezone.utc) - newest).total_seconds() < settle:
            raise SourceUnavailable(f"fax-drop {self.source!r}: waiting {settle:.0f} s after the last "
                                    "fax for further pages")

    def _fetch_matched(self, query: RecordQuery) -> Iterator[RawRecord]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        done = 0
        for fax_id in self.store.ids("matched"):
            folder = self.store.path("matched", fax_id)
            try:
                result = read_json(folder / "result.json")
            except (OSError, ValueError):
                continue
            if result.get("transfer_id") not in {query.transfer_id, *query.earlier_transfers}:
                continue
            origin = f"fax:{fax_id}"
            if origin in query.already_fetched:
                self.store.move(fax_id, "matched", "done")
                continue
            target = self.workdir / f"{fax_id}.pdf"
            if target.exists():
                target.unlink()
            try:
                try:
                    os.link(folder / "document.pdf", target)
                except OSError:
                    shutil.copyfile(folder / "document.pdf", target)
            except OSError as exc:
                raise ConnectorError(f"fax {fax_id}: stored document unreadable ({type(exc).__name__})") from None
            sha, size = hash_file(target)
            if sha != result["sha256"]:
                raise ConnectorError(f"fax {fax_id}: stored document does not match its sha256")
            done += 1
            self.progress(Progress(done=done, bytes=size, message=f"fax {fax_id}"))
            yield RawRecord(
                source=self.source, kind="fax", media_type="application/pdf", path=target,
                sha256=sha, size=size, origin=origin,
                metadata={"transfer_id": result["transfer_id"], "match": result["match"], "fax_id": fax_id,
                          "pages": result["pages"], "cover_pages_removed": result["cover_pages_removed"],
                          "fax_number": result.get("fax_number"), "received_at": result["received_at"],
                          "original_media_type": result["original_media_type"],
                          "original_sha256": result["original_sha256"], "original_size": result["original_size"]})
