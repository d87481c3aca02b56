"""The interface every connector implements.

A connector talks one protocol to one outside system that holds records. It knows
nothing about bundles, signatures or the database: it yields `RawRecord`s whose
content is already on disk (streamed, never whole in memory) and reports progress
through a callback. Connectors never import `gateway` or `fhir.resources`.
"""
from __future__ import annotations

import hashlib
import os
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable, ClassVar, Iterator


class ConnectorError(Exception):
    """Root of connector errors; `transient` says whether retrying may help."""

    transient = False


class SourceUnavailable(ConnectorError):
    """The source did not answer, timed out, or asked us to come back later."""

    transient = True


class SourceRejected(ConnectorError):
    """The source refused (bad credentials, unknown patient, malformed answer)."""


class RecordRejected(ConnectorError):
    """One record is bad (hostile name, broken file); others can still be fetched."""


@dataclass(frozen=True)
class PatientIdentifier:
    system: str
    value: str


@dataclass(frozen=True)
class RecordQuery:
    """What to fetch: one patient, narrowed as far as the protocol allows."""

    authorization_id: str
    transfer_id: str
    identifiers: tuple[PatientIdentifier, ...] = ()
    family_name: str = ""
    given_names: tuple[str, ...] = ()
    birth_date: date | None = None
    date_from: date | None = None
    date_to: date | None = None
    # data classes from the authorization ("all" or notes, labs, imaging, ...)
    data_classes: frozenset[str] = frozenset({"all"})
    # records this source already produced for this transfer (by origin), so a
    # resumed pull skips them
    already_fetched: frozenset[str] = frozenset()
    # incremental pull: only what changed at the source since then (the cursor a
    # previous complete pull of the same authorization and source reported)
    since: datetime | None = None
    # finished transfers of the same authorization: what came for one of them after it
    # had finished (a late fax) comes with this one, a follow-up
    earlier_transfers: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RawRecord:
    """One record as fetched: bytes in a file on local disk plus what we know of it."""

    source: str  # configured source name
    kind: str  # record kind understood by mappings: "pdf", "fhir-json", "dicom", ...
    media_type: str
    path: Path  # a file the consumer may move or delete once it has stored it
    sha256: str
    size: int
    origin: str  # stable id of the record at the source (URL, file name, SOP UID)
    fetched_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    metadata: dict = field(default_factory=dict)  # protocol facts (no secrets)


@dataclass(frozen=True)
class RejectedRecord:
    """A record the source holds that cannot be taken (hostile name, not a file, too
    large). Yielded instead of a RawRecord so it is reported, never silently skipped."""

    source: str
    origin: str  # printable, escaped: never the raw hostile value
    reason: str


@dataclass(frozen=True)
class SkippedRecord:
    """A record the source holds that was found and deliberately not taken (a study whose
    patient demographics differ from the authorization's, instances a PACS never sent
    where an incomplete study may go): reported with its reason, never delivered. Unlike
    a RejectedRecord it does not hold the transfer up."""

    source: str
    origin: str  # printable, escaped (a study UID, a resource URL)
    reason: str  # one line, no patient data


@dataclass(frozen=True)
class Gap:
    """Something the source may hold that this pull could not ask for or get: a resource
    type with no patient search parameter ("not-searchable"), a reference the source left
    out and would not resolve ("unresolved"). Reported, so a transfer never looks
    complete when it is not."""

    source: str
    kind: str  # "not-searchable" | "unresolved"
    what: str  # "Claim", "Device/123": printable, no patient data
    reason: str


Outcome = RawRecord | RejectedRecord | SkippedRecord | Gap  # what fetch() yields


@dataclass
class Progress:
    """What a connector reports while it works."""

    done: int = 0
    total: int | None = None  # None when the source cannot tell in advance
    bytes: int = 0
    message: str = ""


ProgressCallback = Callable[[Progress], None]


class Connector(ABC):
    """One outside system. Use as a context manager: `with Conn(cfg) as c: c.fetch(q)`."""

    #: short name used in configuration (`kind = "pdf-folder"`)
    name: ClassVar[str]
    #: errors worth retrying later; everything else stops this source with its message
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (SourceUnavailable,)

    def __init__(self, source: str, options: dict, workdir: Path,
                 progress: ProgressCallback | None = None):
        self.source = source
        self.options = options
        self.workdir = Path(workdir)  # where fetched files are written
        self.progress = progress or (lambda p: None)

    @abstractmethod
    def check(self) -> None:
        """Raise a ConnectorError if the source cannot be used right now."""

    @abstractmethod
    def fetch(self, query: RecordQuery) -> Iterator[Outcome]:
        """Yield every record of the query's patient the source holds (skipping
        `query.already_fetched`), a RejectedRecord for each one it cannot take, a
        SkippedRecord for each one found and deliberately not taken, and a Gap for each
        part of the source it could not ask for or get."""

    def close(self) -> None:
        """Release connections; safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def hash_file(path: Path, chunk: int = 1 << 20) -> tuple[str, int]:
    """sha256 hex digest and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def open_regular(path, dir_fd: int | None = None):
    """A regular file opened for reading, or None: opened once, never through a link,
    never waiting on a FIFO, and checked from that descriptor, so a swap after the check
    cannot bring in another file. Read from it, not from the path again."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def safe_name(name: str, max_len: int = 200) -> str | None:
    """Return `name` if it is a plain, printable single path component, else None.

    Names from outside (drop folders, attachments) are never used as paths unchecked.
    """
    if not name or len(name) > max_len or name in (".", ".."):
        return None
    if os.sep in name or (os.altsep and os.altsep in name) or "\x00" in name:
        return None
    if not name.isprintable() or name.startswith("."):
        return None
    try:
        name.encode("utf-8")  # file names that were not UTF-8 come as lone surrogates
    except UnicodeEncodeError:
        return None
    return name
