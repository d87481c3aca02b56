"""How many pulls of an incomplete study in a row fetched nothing new, kept on disk.

A study the PACS cannot send in full would otherwise be retried for as long as the
gateway retries a source (a day and more). The count lives in a small JSON file in the
connector's workdir (one per transfer and source), so it survives worker restarts;
it is written atomically (temporary file, then rename) and a torn or unreadable file
counts as empty. An entry is dropped once its study is complete or settled, and the
file with its last entry.
"""
from __future__ import annotations

import json
from pathlib import Path

from connectors.files import write_atomic

from .uids import is_uid

FILE_NAME = "dicom-incomplete-attempts.json"


class AttemptJournal:
    def __init__(self, workdir: Path):
        self.path = Path(workdir) / FILE_NAME
        self.entries: dict[str, int] = {}
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            doc = {}
        if isinstance(doc, dict):
            self.entries = {k: v for k, v in doc.items()
                            if is_uid(k) and isinstance(v, int) and v >= 0}

    def note(self, study_uid: str, fetched_new: bool) -> int:
        """Record one pull that left `study_uid` incomplete; returns the pulls in a row
        that fetched nothing new (0 when this one fetched something)."""
        n = 0 if fetched_new else self.entries.get(study_uid, 0) + 1
        self.entries[study_uid] = n
        self._save()
        return n

    def forget(self, study_uid: str) -> None:
        if self.entries.pop(study_uid, None) is not None:
            self._save()

    def _save(self) -> None:
        if not self.entries:
            self.path.unlink(missing_ok=True)
            return
        write_atomic(self.path, json.dumps(self.entries, sort_keys=True).encode())
