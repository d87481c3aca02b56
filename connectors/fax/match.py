"""Decide which open transfer a received fax belongs to, or send it to review.

Evidence, strongest first: a verified cover-sheet code, a sidecar metadata file written
by the fax server, the text of the first pages (PDF text layer or Tesseract OCR). Only
an unambiguous match is automatic; anything else comes back as ``method="review"``
with the reasons and the candidate transfers, never as a guess. Reasons name transfer
ids and what was found, never patient names or dates.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date
from typing import Iterable, Sequence

from .cover import COVER_TITLE, CoverCode


@dataclass(frozen=True)
class TransferDescriptor:
    """An open transfer waiting for faxes, as the gateway describes it."""

    transfer_id: str
    patient_name: str  # "Given Family" (any order; every name token must appear)
    birth_date: date | None
    request_id: str
    return_fax: str = ""


@dataclass(frozen=True)
class Evidence:
    """What one received fax offers for matching."""

    codes: tuple[CoverCode, ...] = ()  # with their page index in `code_pages`
    code_pages: tuple[int, ...] = ()
    sidecar: dict | None = None
    text: tuple[str, ...] = ()  # per page, from the first pages
    text_source: str = "none"  # "layer", "ocr", "none", "ocr-unavailable"


@dataclass(frozen=True)
class MatchResult:
    transfer_id: str | None
    method: str  # "qr", "sidecar", "text" or "review"
    reasons: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()  # transfer ids worth showing a reviewer
    cover_pages: tuple[int, ...] = ()  # pages (0-based) to remove from the document

    @property
    def automatic(self) -> bool:
        return self.method != "review"


@dataclass
class _Hits:
    descriptor: TransferDescriptor
    request_id: bool = False
    name: bool = False
    birth_date: bool = False
    notes: list[str] = field(default_factory=list)


def match_fax(evidence: Evidence, transfers: Sequence[TransferDescriptor]) -> MatchResult:
    """Match one fax against the open transfers (see the module docstring for the rules)."""
    open_ids = {t.transfer_id: t for t in transfers}
    reasons: list[str] = []

    invalid = [c for c in evidence.codes if not c.valid]
    valid_pages: dict[str, list[int]] = {}
    for code, page in zip(evidence.codes, evidence.code_pages):
        if code.valid:
            valid_pages.setdefault(code.transfer_id, []).append(page)
    if invalid:
        reasons.append(f"{len(invalid)} cover code(s) failed the HMAC check (forged or altered)")
        return _review(reasons, list(valid_pages) + [c.transfer_id for c in invalid if c.transfer_id in open_ids])
    if len(valid_pages) > 1:
        return _review([f"cover sheets of {len(valid_pages)} different transfers"], list(valid_pages))
    if len(valid_pages) == 1:
        (transfer_id, pages), = valid_pages.items()
        if transfer_id not in open_ids:
            return _review([f"valid cover sheet for transfer {transfer_id}, which is not open"], [])
        extra = _cover_pages_by_text(evidence.text, open_ids[transfer_id])
        return MatchResult(transfer_id, "qr", ("verified cover code",), (transfer_id,),
                           tuple(sorted(set(pages) | set(extra))))

    if evidence.sidecar:
        result = _match_sidecar(evidence.sidecar, open_ids)
        if result.automatic:
            extra = _cover_pages_by_text(evidence.text, open_ids[result.transfer_id])
            return MatchResult(result.transfer_id, "sidecar", result.reasons, result.candidates,
                               tuple(extra))
        reasons.extend(result.reasons)

    if not any(t.strip() for t in evidence.text):
        reasons.append({"ocr-unavailable": "no text layer and OCR is not installed",
                        "ocr": "OCR found no text"}.get(evidence.text_source, "no readable text"))
        return _review(reasons, [])
    result = _match_text(evidence.text, transfers)
    if result.automatic:
        extra = _cover_pages_by_text(evidence.text, open_ids[result.transfer_id])
        return MatchResult(result.transfer_id, "text",
                           tuple(r for r in result.reasons) + (f"text from {evidence.text_source}",),
                           result.candidates, tuple(extra))
    return _review(reasons + list(result.reasons), list(result.candidates))


def _review(reasons: Iterable[str], candidates: Iterable[str]) -> MatchResult:
    return MatchResult(None, "review", tuple(reasons), tuple(dict.fromkeys(candidates)))


def _match_sidecar(sidecar: dict, open_ids: dict[str, TransferDescriptor]) -> MatchResult:
    found: dict[str, str] = {}
    reasons = []
    transfer_id = str(sidecar.get("transfer_id") or "").strip()
    if transfer_id:
        if transfer_id in open_ids:
            found[transfer_id] = "sidecar names the transfer"
        else:
            reasons.append("sidecar names a transfer that is not open")
    request_id = str(sidecar.get("request_id") or "").strip()
    if request_id:
        hits = [t for t in open_ids.values() if _norm_id(t.request_id) == _norm_id(request_id)]
        for t in hits:
            found.setdefault(t.transfer_id, "sidecar request id")
        if not hits:
            reasons.append("sidecar request id matches no open transfer")
    name, birth = sidecar.get("patient_name"), _parse_date(str(sidecar.get("birth_date") or ""))
    if name and birth:
        tokens = set(_norm_text(str(name)).split())
        for t in open_ids.values():
            if t.birth_date == birth and _name_tokens(t.patient_name) <= tokens:
                found.setdefault(t.transfer_id, "sidecar patient name and birth date")
    if len(found) == 1:
        (tid, why), = found.items()
        return MatchResult(tid, "sidecar", (why,), (tid,))
    if len(found) > 1:
        reasons.append(f"sidecar fits {len(found)} open transfers")
    return _review(reasons, found)


def _match_text(pages: Sequence[str], transfers: Sequence[TransferDescriptor]) -> MatchResult:
    text = "\n".join(pages)
    norm = _norm_text(text)
    tokens = set(norm.split())
    dates = _dates_in(text)
    hits = []
    for t in transfers:
        h = _Hits(t)
        h.request_id = bool(t.request_id) and _has_request_id(text, t.request_id)
        name_tokens = _name_tokens(t.patient_name)
        h.name = bool(name_tokens) and name_tokens <= tokens
        h.birth_date = t.birth_date is not None and t.birth_date in dates
        if h.request_id or h.name or h.birth_date:
            hits.append(h)

    def who(h: _Hits) -> str:
        parts = [p for p, ok in (("request id", h.request_id), ("name", h.name),
                                 ("birth date", h.birth_date)) if ok]
        return f"transfer {h.descriptor.transfer_id}: {' + '.join(parts)} found"

    tier1 = [h for h in hits if h.request_id and (h.name or h.birth_date)]
    tier2 = [h for h in hits if h.name and h.birth_date]
    candidates = [h.descriptor.transfer_id for h in sorted(
        hits, key=lambda h: -(h.request_id * 2 + h.name + h.birth_date))]
    if len(tier1) == 1:
        chosen = tier1[0]
        same = _patient_key(chosen.descriptor)
        others = [h for h in tier2 if h is not chosen and _patient_key(h.descriptor) != same]
        if others:
            return _review([who(chosen)] + [f"also names the patient of transfer {h.descriptor.transfer_id}"
                                            for h in others], candidates)
        return MatchResult(chosen.descriptor.transfer_id, "text", (who(chosen),), (chosen.descriptor.transfer_id,))
    if len(tier1) > 1:
        return _review([f"request ids of {len(tier1)} open transfers found"] + [who(h) for h in tier1], candidates)
    if len(tier2) == 1:
        return MatchResult(tier2[0].descriptor.transfer_id, "text", (who(tier2[0]),),
                           (tier2[0].descriptor.transfer_id,))
    if len(tier2) > 1:
        return _review([f"{len(tier2)} open transfers share the name and birth date found"], candidates)
    if hits:
        return _review(["no open transfer matched on two facts"] + [who(h) for h in hits[:5]], candidates)
    return _review(["no open transfer's request id, name or birth date found"], [])


def _cover_pages_by_text(pages: Sequence[str], transfer: TransferDescriptor) -> list[int]:
    """Pages that are our cover sheet for this transfer by their printed text."""
    title = _norm_text(COVER_TITLE)
    return [i for i, page in enumerate(pages)
            if title in _norm_text(page) and transfer.request_id and _has_request_id(page, transfer.request_id)]


def _patient_key(t: TransferDescriptor) -> tuple:
    return (frozenset(_name_tokens(t.patient_name)), t.birth_date)


def _norm_text(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text).split())


def _name_tokens(name: str) -> set[str]:
    return {t for t in _norm_text(name).split() if len(t) > 1}


def _norm_id(value: str) -> str:
    return re.sub(r"[^0-9A-Z]", "", value.upper())


def _has_request_id(text: str, request_id: str) -> bool:
    chars = _norm_id(request_id)
    if len(chars) < 4:
        return False
    pattern = r"[\s._-]?".join(re.escape(c) for c in chars)
    return re.search(rf"(?<![0-9A-Z]){pattern}(?![0-9A-Z])", text.upper()) is not None


_MONTHS = {m: i + 1 for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])}


def _safe_date(y: int, m: int, d: int) -> date | None:
    try:
        return date(y, m, d) if 1850 <= y <= 2200 else None
    except ValueError:
        return None


def _dates_in(text: str) -> set[date]:
    """Dates written in common forms (both readings of an ambiguous dd/mm or mm/dd)."""
    found: set[date] = set()
    for y, m, d in re.findall(r"(?<!\d)(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?!\d)", text):
        found.add(_safe_date(int(y), int(m), int(d)))
    for a, b, y in re.findall(r"(?<!\d)(\d{1,2})\s?[-/.]\s?(\d{1,2})\s?[-/.]\s?(\d{4})(?!\d)", text):
        found.add(_safe_date(int(y), int(a), int(b)))
        found.add(_safe_date(int(y), int(b), int(a)))
    low = text.casefold()
    for mon, d, y in re.findall(r"\b([a-z]{3})[a-z]*\.?\s+(\d{1,2}),?\s+(\d{4})\b", low):
        if mon in _MONTHS:
            found.add(_safe_date(int(y), _MONTHS[mon], int(d)))
    for d, mon, y in re.findall(r"\b(\d{1,2})\.?\s+([a-z]{3})[a-z]*\.?,?\s+(\d{4})\b", low):
        if mon in _MONTHS:
            found.add(_safe_date(int(y), _MONTHS[mon], int(d)))
    found.discard(None)
    return found


def _parse_date(value: str) -> date | None:
    dates = _dates_in(value)
    return next(iter(dates)) if len(dates) == 1 else None
