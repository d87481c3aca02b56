"""DICOM UID grammar (PS3.5 9.1): checked before a UID from outside is used for anything.

A UID is at most 64 characters of digit components separated by dots, no component with a
leading zero (except "0" itself). UIDs are never used as file names or path parts: files
are named by content hash; a UID only ever appears in queries, records and metadata.
"""
from __future__ import annotations

import re

_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+\Z")


def is_uid(value: object) -> bool:
    """True if `value` is a str that is a valid DICOM UID."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID.match(value))


def clean_uid(value: object) -> str | None:
    """The UID with DICOM padding (trailing NUL/space) removed, or None if not a valid UID."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str):
        value = str(value) if value is not None else ""
    value = value.rstrip("\x00 ")
    return value if is_uid(value) else None


def describe(value: object, limit: int = 70) -> str:
    """A printable, bounded rendering of an untrusted value for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
