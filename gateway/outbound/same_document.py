"""Recognise one document that reached a transfer twice in different bytes: a report
from the hospital's FHIR API and the fax copy of it, a letter in the drop folder and
its scan. Equal bytes are caught by their sha256 (gateway/outbound/bundles.py); this module
catches copies whose bytes differ.

Each document (PDF or TIFF) gets a fingerprint of its first pages' text: the text
layer, or OCR where there is none, read in the fax sandbox (connectors/fax/sandbox.py:
the bytes are untrusted). The fingerprint holds no text a person could read back:
- `pages`: the page count;
- `digits`: sha256 of every digit of those pages in order (values, dates, identifiers);
- `sketch`: a bottom-k sketch of the character 5-grams of the letters and digits.

Two documents are the same only when the page counts and digits are equal and the
sketches estimate a Jaccard similarity of at least SIMILAR. Merging two different
reports loses one of them; missing a copy only sends it twice. So the test is strict:
two reports from one template that differ in one value stay two documents, and a copy
OCR misread in a single digit is sent twice.
"""
from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path

from connectors.base import RecordRejected
from connectors.fax.sandbox import Limits, read_text

PAGES = 2  # first pages compared
GRAM = 5
SKETCH = 128  # smallest 5-gram hashes kept
SIMILAR = 0.85
MIN_CHARS = 60  # less text than this says too little to call two documents one
MEDIA_TYPES = frozenset({"application/pdf", "image/tiff"})
_NOT_ALNUM = re.compile(r"[\W_]+")


def from_text(pages: list[str], page_count: int) -> dict | None:
    """The fingerprint of a document's first pages' text, or None if there is too little."""
    text = _NOT_ALNUM.sub("", " ".join(pages[:PAGES]).lower())
    if len(text) < MIN_CHARS:
        return None
    grams = {int.from_bytes(hashlib.blake2b(text[i:i + GRAM].encode(), digest_size=8).digest(), "big")
             for i in range(len(text) - GRAM + 1)}
    digits = "".join(ch for ch in text if ch.isdigit())
    return {"pages": page_count, "digits": hashlib.sha256(digits.encode()).hexdigest(),
            "sketch": sorted(grams)[:SKETCH]}


def fingerprint(path: Path, media_type: str) -> dict | None:
    """Read a document's text in the sandbox and fingerprint it; None when the file is
    not a document we can read (it is then compared by its bytes only)."""
    if media_type.split(";")[0].strip().lower() not in MEDIA_TYPES:
        return None
    with tempfile.TemporaryDirectory(prefix="same-document-") as out:
        try:
            found = read_text(path, Path(out), Limits(text_pages=PAGES, ocr_pages=PAGES))
        except RecordRejected:  # FileRejected: unreadable here; bytes still compared
            return None
    return from_text(found.text, found.pages)


def similarity(a: dict, b: dict) -> float:
    """Estimated Jaccard similarity of two sketches (bottom-k estimator)."""
    sa, sb = set(a["sketch"]), set(b["sketch"])
    union = sorted(sa | sb)[:SKETCH]
    if not union:
        return 0.0
    return sum(1 for h in union if h in sa and h in sb) / len(union)


def same(a: dict | None, b: dict | None) -> bool:
    if not a or not b:
        return False
    return (a["pages"] == b["pages"] and a["digits"] == b["digits"]
            and similarity(a, b) >= SIMILAR)


def duplicates(candidates: list[tuple[object, dict | None]]) -> dict[object, object]:
    """Given (key, fingerprint) in order of preference, map each copy's key to the key of
    the first document it is a copy of."""
    kept: list[tuple[object, dict]] = []
    copies: dict[object, object] = {}
    for key, fp in candidates:
        if not fp:
            continue
        original = next((k for k, other in kept if same(fp, other)), None)
        if original is None:
            kept.append((key, fp))
        else:
            copies[key] = original
    return copies
