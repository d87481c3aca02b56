"""JSON that keeps every number's own text, from the source to the recipient.

A FHIR decimal's text is its precision: `1.00` is not `1.0`, `0.001530` has four
significant figures, `1.5e3` is written that way on purpose. Parsed into floats (what
`json`, `orjson` and pydantic do) that text is gone. Here:

- `loads` parses JSON with every non-integer number (and `-0`) as a `Number`: a `Decimal`
  that remembers its exact text. Other integers stay `int`, of any size (their text is
  always `str(int)`: JSON has no leading zeros or `+`). Strings are kept as they are, so
  date-times keep their text too.
- `dumps` writes a `Number` back as its text, verbatim (orjson, `Fragment`), and refuses
  any other `Decimal`: a value whose text is unknown is never written as if it were
  the source's. Floats (values the gateway made itself) are written as orjson writes them.

So `dumps(loads(text))` keeps every value's text; only whitespace and the escaping of
strings can differ. The plain `json` module refuses a `Number` (TypeError) rather than
writing a float: a path that would lose the text fails loudly instead.
"""
from __future__ import annotations

import json
from decimal import Decimal

import orjson

__all__ = ["Number", "loads", "dumps", "fragment", "JSONError", "depth"]

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


def _negative_zero(text: str):
    return Number(text) if text == "-0" else int(text)


def _constant(name: str):
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_float=Number, parse_int=_negative_zero, parse_constant=_constant)


def loads(data: bytes | str):
    """Parse JSON (UTF-8 if bytes); non-integer numbers (and `-0`) become `Number`s.
    JSON nested deeper than the interpreter's stack allows is a ValueError like any
    other malformed JSON (the decoder would raise RecursionError)."""
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("JSON is nested too deeply") from None


def depth(value) -> int:
    """How deeply `value` nests (a scalar 0, `{}` or `[]` 1, ...), found without recursion:
    for refusing input deeper than the recursive validators and `dumps` can take."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if type(item) is dict else item if type(item) is list else None
        if children is None:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children if type(child) in (dict, list))
    return deepest


_I64_MIN, _U64_MAX = -(1 << 63), (1 << 64) - 1


def _wide(value):
    """`value` with integers beyond 64 bits (which orjson cannot write) as Numbers."""
    if type(value) is int and not _I64_MIN <= value <= _U64_MAX:
        return Number(str(value))
    if type(value) is dict:
        return {k: _wide(v) for k, v in value.items()}
    if type(value) is list:
        return [_wide(v) for v in value]
    return value


def fragment(value):
    """orjson's `default` hook: a Number as its text, verbatim; anything else refused."""
    if type(value) is Number:
        return orjson.Fragment(value.text)
    raise TypeError(f"{type(value).__name__} is not JSON: its text is unknown")


def dumps(value, *, sort_keys: bool = False, keep: bool = True) -> bytes:
    """Compact UTF-8 JSON; each `Number` as its own text; `sort_keys` for canonical forms;
    `keep=False` for bytes used at once and dropped (not copied to their own size)."""
    option = orjson.OPT_SORT_KEYS if sort_keys else 0
    try:
        out = orjson.dumps(value, default=fragment, option=option)
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            raise
        out = orjson.dumps(_wide(value), default=fragment, option=option)  # rare: huge integers
    # orjson's bytes keep a buffer of at least 4 KiB: a kept resource would hold it all
    return bytes(memoryview(out)) if keep and len(out) < _COMPACT_BELOW else out


_COMPACT_BELOW = 1 << 16
