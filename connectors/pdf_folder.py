"""PDF drop folder: the PDFs for a transfer lie in a sub-folder named for it, or for its
authorization (a case's folder: its follow-ups take only what is new there).

    <path>/<transfer id>/<name>.pdf

Whoever drops files should write the folder elsewhere and rename it into place, so it
appears complete; until it appears, the pull is retried later.

A minimal, safe reader: only regular files (no links), plain names, a size cap, and
the PDF signature checked. Files are copied into the work dir, never moved: the full
fax workflow (claiming, quarantine, matching) is `connectors.fax`.

Documents from a records office go to the recipient as they are, byte for byte (no
cover page to remove, nothing to rebuild), so what the recipient's viewer will decode
is what the folder holds. Each copy is therefore checked in the fax sandbox
(`connectors.fax.sandbox.inspect`, under its memory cap) before it is yielded: a PDF
that cannot be opened safely (an image or stream too large to decode, a reference
loop, a page PDFium cannot load, nesting too deep, the parse over its memory or time
limit) becomes a `RejectedRecord` with the sandbox's reason, so it is never delivered
unless an operator skips it. Files that are merely unreadable, truncated or encrypted
go on to the mapping, which refuses them with its own message. Only PDFs are taken
(`.pdf`): TIFFs belong to the fax drop folder.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

from .base import (
    Connector,
    Progress,
    RawRecord,
    RecordQuery,
    RejectedRecord,
    SourceRejected,
    SourceUnavailable,
    hash_file,
    open_regular,
    safe_name,
)
from .fax.sandbox import FileRejected, Limits, inspect

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
# sandbox refusals left to the mapping, which words them for the operator
_MAPPING_REPORTS = frozenset({"truncated", "unreadable", "encrypted", "no-pages"})


class PdfFolderConnector(Connector):
    name = "pdf-folder"

    @property
    def root(self) -> Path:
        try:
            return Path(self.options["path"])
        except KeyError:
            raise SourceRejected(f"source {self.source}: option 'path' is not set") from None

    def check(self) -> None:
        if not self.root.is_dir():
            raise SourceUnavailable(f"source {self.source}: drop folder is missing or not a folder")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise SourceUnavailable(f"source {self.source}: drop folder is not readable")

    def fetch(self, query: RecordQuery) -> Iterator[RawRecord | RejectedRecord]:
        self.check()
        if safe_name(query.transfer_id) is None:
            raise SourceRejected("transfer id is not a plain name")
        dir_fd = None
        for name in (query.transfer_id, safe_name(query.authorization_id or "")):
            if name is None:
                continue
            try:  # the folder is opened once, never through a link; its files by this descriptor
                dir_fd = os.open(self.root / name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                break
            except FileNotFoundError:
                continue
            except OSError:
                raise SourceRejected(f"source {self.source}: the transfer's folder is a link or "
                                     "not a folder") from None
        if dir_fd is None:  # the provider has not dropped the records yet: come back later
            raise SourceUnavailable(f"source {self.source}: no folder yet for transfer "
                                    f"{query.transfer_id} or its authorization") from None
        try:
            yield from self._fetch_from(dir_fd, query)
        finally:
            os.close(dir_fd)

    def _fetch_from(self, dir_fd: int, query: RecordQuery) -> Iterator[RawRecord | RejectedRecord]:
        max_bytes = int(self.options.get("max_bytes", DEFAULT_MAX_BYTES))
        entries = sorted(os.scandir(dir_fd), key=lambda e: os.fsencode(e.name))
        progress = Progress(total=len(entries))
        self.workdir.mkdir(parents=True, exist_ok=True)
        for entry in entries:
            progress.done += 1
            origin = ascii(entry.name)[1:-1]  # printable and unambiguous, whatever the bytes
            if origin in query.already_fetched:
                continue
            target = self.workdir / f"{progress.done:06d}.pdf"
            reason = self._copy(dir_fd, entry.name, target, max_bytes)
            if reason:
                yield RejectedRecord(self.source, origin, reason)
                continue
            unsafe = self._unsafe(target, max_bytes)  # the copy: what is checked is what goes
            if unsafe:
                target.unlink()
                yield RejectedRecord(self.source, origin, unsafe)
                continue
            digest, size = hash_file(target)
            progress.bytes += size
            self.progress(progress)
            yield RawRecord(source=self.source, kind="pdf", media_type="application/pdf",
                            path=target, sha256=digest, size=size, origin=origin,
                            metadata={"mtime": int(target.stat().st_mtime)})

    def _unsafe(self, path: Path, max_bytes: int) -> str | None:
        """Why this PDF cannot be opened safely (the sandbox's reason), or None."""
        # a records office's PDF may be a whole chart: more pages than a fax
        limits = Limits(max_file_mb=max(1, -(-max_bytes // (1024 * 1024))), max_pages=10_000)
        work = self.workdir / "inspect"
        work.mkdir(exist_ok=True)
        try:
            inspect(path, work, limits)
        except FileRejected as exc:
            if exc.reason not in _MAPPING_REPORTS:
                return f"unsafe PDF ({exc.reason}): {exc.detail}"
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return None

    @staticmethod
    def _copy(dir_fd: int, name: str, target: Path, max_bytes: int) -> str | None:
        """Copy one file of the folder to `target`, or say why it is refused. The file is
        opened once (never through a link, never waiting on a FIFO) and checked and read
        from that descriptor: a swap after the check cannot bring in another file."""
        if safe_name(name) is None or name != name.strip():
            return "file name is not a plain printable name"
        src = open_regular(name, dir_fd=dir_fd)
        if src is None:
            return "not a regular file (links and folders are refused)"
        st = os.fstat(src.fileno())
        with src:
            if not name.lower().endswith(".pdf"):
                return "not a .pdf file"
            if st.st_size == 0:
                return "empty file"
            if st.st_size > max_bytes:
                return f"larger than the {max_bytes} byte limit"
            if src.read(5) != b"%PDF-":
                return "not a PDF (no %PDF- signature)"
            src.seek(0)
            with open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # the source's time goes along
        return None
