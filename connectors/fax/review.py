"""The review queue: faxes no rule could match automatically wait here for a person.

File-backed on the fax store (review/<id>/), so the API and the CLI can share it
without the database: `list`, `get`, `preview` (PNG of one page), `document`,
`assign` (to a transfer: the fax moves to matched/ and the next fetch of that transfer
yields it) and `reject` (moves to rejected/, kept, never delivered). The caller checks
that the transfer it assigns to is open and that the person may do it; this module
checks ids and keeps who decided and why.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from connectors.base import ConnectorError

from .cover import TRANSFER_ID_RE
from .store import FAX_ID_RE, FaxStore, read_json, write_json


class ReviewError(ConnectorError):
    """A review action cannot be done (unknown fax, already decided, bad transfer id)."""


class PageNotFound(ReviewError):
    """The fax has no preview of the asked page (not a number, or out of its range)."""


@dataclass(frozen=True)
class ReviewItem:
    """One fax awaiting review. No patient data: reasons name transfer ids only."""

    fax_id: str
    received_at: str
    pages: int
    reasons: tuple[str, ...]
    candidates: tuple[str, ...]
    fax_number: str | None
    size: int
    sha256: str
    original_media_type: str


@dataclass(frozen=True)
class QuarantineItem:
    fax_id: str
    reason: str
    detail: str
    source_name: str  # printable form of the drop-folder name


class ReviewQueue:
    def __init__(self, store: FaxStore):
        self.store = store

    def _folder(self, fax_id: str) -> Path:
        if not FAX_ID_RE.match(fax_id or ""):
            raise ReviewError(f"bad fax id {fax_id!r}")
        folder = self.store.path("review", fax_id)
        if not folder.is_dir():
            state = self.store.state_of(fax_id)
            raise ReviewError(f"fax {fax_id} is not awaiting review" + (f" (it is {state})" if state else " (unknown id)"))
        return folder

    def list(self) -> list[ReviewItem]:
        items = []
        for fax_id in self.store.ids("review"):
            try:
                items.append(self.get(fax_id))
            except (ReviewError, OSError, ValueError, KeyError):
                continue
        return sorted(items, key=lambda i: (i.received_at, i.fax_id))

    def get(self, fax_id: str) -> ReviewItem:
        result = read_json(self._folder(fax_id) / "result.json")
        return ReviewItem(fax_id, result["received_at"], result["pages"], tuple(result["reasons"]),
                          tuple(result["candidates"]), result.get("fax_number"), result["size"],
                          result["sha256"], result["original_media_type"])

    def previews(self, fax_id: str) -> int:
        """How many pages have a preview: the first ones as received, cover sheet included."""
        folder = self._folder(fax_id)
        count = 0
        while _page_file(folder, count + 1).exists():
            count += 1
        return count

    def preview(self, fax_id: str, page: int | str = 1) -> Path:
        """PNG of page `page` (1-based, as received, cover sheet included)."""
        count = self.previews(fax_id)
        text = str(page)
        number = int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else 0
        if not 1 <= number <= count:
            raise PageNotFound(f"fax {fax_id} has no preview of page {str(page)[:12]!r}: "
                               f"pages 1 to {count} have one")
        return _page_file(self._folder(fax_id), number)

    def document(self, fax_id: str) -> Path:
        return self._folder(fax_id) / "document.pdf"

    def assign(self, fax_id: str, transfer_id: str, by: str = "") -> None:
        """Attach the fax to `transfer_id`; the next fetch for that transfer yields it."""
        if not TRANSFER_ID_RE.match(transfer_id or ""):
            raise ReviewError(f"bad transfer id {transfer_id!r}")
        self._decide(fax_id, "assigned", {"transfer_id": transfer_id, "match": "review"}, by, "")
        self.store.move(fax_id, "review", "matched")

    def reject(self, fax_id: str, reason: str, by: str = "") -> None:
        """Set the fax aside for good (kept in rejected/, never delivered)."""
        self._decide(fax_id, "rejected", {}, by, reason)
        self.store.move(fax_id, "review", "rejected")

    def _decide(self, fax_id: str, decision: str, changes: dict, by: str, reason: str) -> None:
        folder = self._folder(fax_id)
        result = read_json(folder / "result.json")
        if result.get("decision") != "pending":
            raise ReviewError(f"fax {fax_id} was already {result.get('decision')}")
        result.update(changes)
        result.update(decision=decision, decided_by=by[:200], decided_reason=reason[:500],
                      decided_at=datetime.now(timezone.utc).isoformat())
        write_json(folder / "result.json", result)

    def quarantined(self) -> list[QuarantineItem]:
        """Files set aside as hostile or broken, with their reasons, for operators."""
        items = []
        for fax_id in self.store.ids("quarantine"):
            folder = self.store.path("quarantine", fax_id)
            try:
                result = read_json(folder / "result.json")
                meta = read_json(folder / "meta.json")
            except (OSError, ValueError):
                continue
            items.append(QuarantineItem(fax_id, result.get("reason", ""), result.get("detail", ""),
                                        meta.get("source_name", "")))
        return items


def _page_file(folder: Path, number: int) -> Path:
    path = folder / f"preview-{number}.png"
    if number == 1 and not path.exists() and (folder / "preview.png").exists():
        return folder / "preview.png"  # a fax put in review when only page 1 had a preview
    return path
