"""A FHIR source's Binary too large to go inline becomes an upload wherever an
attachment references it (see gateway/outbound/attachments.py)."""
from __future__ import annotations

from gateway.exchange.attachments import referenced

from .attachments import Upload, point_at


def point_units_at_uploads(units: dict, relocated: dict[str, Upload], uploads: dict[str, Upload]) -> None:
    """Point attachments at the uploads that replace a FHIR source's Binaries (by their
    fullUrl in `relocated`); a Binary nothing references goes inline after all, since
    no attachment would name its upload (then it leaves `uploads`)."""
    used = set()
    for unit in units.values() if relocated else ():  # (none relocated: nothing to walk for)
        for entry in unit.entries:
            if isinstance(entry, dict):
                for att in list(referenced(entry["resource"], relocated)):
                    used.add(att["url"])
                    point_at(att, relocated[att["url"]])
    for full_url, up in relocated.items():
        if full_url not in used:
            unit = units[full_url]
            unit.entries.append(unit.inline)
            unit.estimate = 4 * (up.size // 3 + 1) + 512
            uploads.pop(up.ref, None)
