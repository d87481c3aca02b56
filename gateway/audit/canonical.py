"""The canonical bytes of an audit event: the exact input of its Merkle leaf hash.

Deterministic JSON: one object with the fields below, keys sorted, no insignificant
whitespace, UTF-8 (non-ASCII kept as is), no NaN or Infinity, times as
`YYYY-MM-DDTHH:MM:SS.ffffffZ` in UTC, and a format version `v`. An auditor can
rebuild these bytes from an exported event with any JSON library that sorts keys.
"""
from __future__ import annotations

import json
from datetime import date, datetime, timezone
from typing import Any

FORMAT_VERSION = 1
FIELDS = ("seq", "at", "type", "actor", "role", "outcome", "transfer_id", "authorization_id",
          "patient_key", "detail")


class CanonicalError(ValueError):
    """An event cannot be put into canonical form (a value that JSON cannot carry)."""


def format_time(value: datetime) -> str:
    """UTC, microseconds, `Z`. A naive datetime is taken as UTC (SQLite returns those)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def _default(value: Any):
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        raise CanonicalError("audit detail cannot hold raw bytes; log a hash or a size")
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    raise CanonicalError(f"audit detail value of type {type(value).__name__} is not JSON")


def dumps(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False, default=_default)
    except ValueError as exc:  # NaN / Infinity
        if isinstance(exc, CanonicalError):
            raise
        raise CanonicalError(f"audit detail is not canonical JSON: {exc}") from exc


def normalize_detail(detail: dict) -> dict:
    """The detail as it will read back from a JSON column (tuples as lists, times as text)."""
    return json.loads(dumps(detail))


def event_fields(event) -> dict:
    """The logged fields of an AuditEvent row (or a mapping with the same keys)."""
    get = event.get if isinstance(event, dict) else (lambda k: getattr(event, k))
    out = {k: get(k) for k in FIELDS}
    if isinstance(out["at"], datetime):
        out["at"] = format_time(out["at"])
    out["detail"] = out["detail"] or {}
    return out


def canonical_bytes(event) -> bytes:
    """The leaf input for an event: canonical JSON of its fields plus the format version."""
    fields = event_fields(event)
    if not isinstance(fields["seq"], int) or fields["seq"] < 1:
        raise CanonicalError(f"audit event has no valid sequence number: {fields['seq']!r}")
    return dumps({"v": FORMAT_VERSION, **fields}).encode("utf-8")
