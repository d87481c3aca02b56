"""The pieces a bundle is packed from: units of entries that travel together, and the
Binary entries whose data is streamed from a record's blob when the bundle is written."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StreamedBinary:
    """A Binary entry whose data is streamed from a record blob."""
    full_url: str
    blob_key: str
    media_type: str
    size: int


@dataclass
class Unit:
    """Entries that travel together (a DocumentReference and its Binary)."""
    date: str
    full_url: str
    entries: list = field(default_factory=list)  # dicts or StreamedBinary
    data_class: str = ""
    estimate: int = 0
    inline: StreamedBinary | None = None  # a FHIR source's Binary kept aside for upload
