"""JSON that keeps every number's own text, from the source to the recipient.

A FHIR decimal's text is its precision: `1.00` is not `1.0`, `0.001530` has four
significant figures, `1.5e3` is written that way on purpose. Parsed into floats (what
`json`, `orjson` and pydantic do) that text is gone. Here:

- `loads` parses JSON with every non-integer number (and `-0`, and integers too large for
  64 bits) as a `Number`: a `Decimal` that remembers its exact text. Other integers stay
  `int` (their text is always `str(int)`: JSON has no leading zeros or `+`). Strings are
  kept as they are, so date-times keep their text too.
- `dumps` writes a `Number` back as its text, verbatim (orjson, `Fragment`), and refuses
  any other `Decimal`: a value whose text is unknown is never written as if it were
  the source's. Floats (values the gateway made itself) are written as orjson writes them.

So `dumps(loads(text))` keeps every value's text; only whitespace and the escaping of
strings can differ. The plain `json` module refuses a `Number` (TypeError) rather than
writing a float: a path that would lose the text fails loudly instead.
"""
from __future__ import annotations

import json
import re
from decimal import Decimal

import orjson

__all__ = ["Number", "loads", "dumps", "JSONError"]

JSONError = (ValueError, orjson.JSONEncodeError)


class Number(Decimal):
    """A JSON number as the source wrote it: compares and computes as a Decimal,
    is written back as `text`."""

    __slots__ = ("text",)

    def __new__(cls, text: str) -> "Number":
        self = Decimal.__new__(cls, text)
        self.text = text
        return self

    def __repr__(self) -> str:
        return f"Number({self.text!r})"

    def __reduce__(self):
        return (Number, (self.text,))


_I64_MIN, _U64_MAX = -(1 << 63), (1 << 64) - 1


def _int(text: str):
    value = int(text)
    if text == "-0" or not _I64_MIN <= value <= _U64_MAX:
        return Number(text)
    return value


def _constant(name: str):
    raise ValueError(f"{name} is not JSON")


# integers whose text `int` would not keep: `-0` as a value, or 19 digits and more (a
# cheap over-approximation: a match inside a string only costs the slower int hook)
_SPECIAL_INT_B = re.compile(rb"-0\s*[,\]}]|-0\s*$|\d{19}")
_SPECIAL_INT_S = re.compile(r"-0\s*[,\]}]|-0\s*$|\d{19}")


def loads(data: bytes | str):
    """Parse JSON; non-integer numbers (and `-0`, huge integers) become `Number`s."""
    special = (_SPECIAL_INT_B if isinstance(data, (bytes, bytearray)) else _SPECIAL_INT_S).search(data)
    return json.loads(data, parse_float=Number, parse_int=_int if special else None,
                      parse_constant=_constant)


def _default(value):
    if type(value) is Number:
        return orjson.Fragment(value.text)
    raise TypeError(f"{type(value).__name__} is not JSON: its text is unknown")


def dumps(value, *, sort_keys: bool = False) -> bytes:
    """Compact UTF-8 JSON; each `Number` as its own text; `sort_keys` for canonical forms."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
