"""Split a FHIR Bundle JSON file into its entries without parsing the whole file.

A `$everything` page can be tens of megabytes. Parsing it whole costs about four times
its size in Python objects; this scanner reads the file in blocks, finds the top-level
`entry` array with a small tokenizer (strings, brackets, braces: everything else is
skipped by the regex engine) and hands out each entry's raw bytes, so memory stays at
one block plus one entry. What is left (`resourceType`, `type`, `total`, `link`, ...)
is parsed at the end as the bundle's skeleton.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import orjson

# a whole string (escapes included), one bracket or brace, or a lone quote: a string
# that continues past the end of the buffer
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]|"')
_WS = re.compile(rb"[ \t\r\n]*")


def _balanced(depth: int) -> re.Pattern:
    """An object with balanced braces up to `depth` levels, strings not considered.

    A fast guess at where an entry ends (the regex engine runs it in C); the guess is
    then confirmed by parsing the slice, and a wrong guess (a brace inside a string,
    deeper nesting) falls back to the exact tokenizer.
    """
    pattern = rb"\{[^{}]*\}"
    for _ in range(depth):
        pattern = rb"\{[^{}]*(?:" + pattern + rb"[^{}]*)*\}"
    return re.compile(pattern)


_ENTRY_GUESS = _balanced(16)


def _entry_at(buf: bytes, start: int) -> tuple[bytes, dict] | None:
    """(raw bytes, parsed object) of the entry at `start` if a guess at its end parses,
    else None (the tokenizer finds the end). The slice from an entry's `{` parses as an
    object only if it ends where the entry ends, so a wrong guess is never taken. First
    guess: where the next entry begins as this one does (`,{"fullUrl":`, compact JSON; a
    quote inside a string is escaped, so that is never inside a value); then
    `_ENTRY_GUESS`."""
    colon = buf.find(b'":', start, start + 64)
    if colon > 0:
        end = buf.find(b"," + buf[start:colon + 2], colon)
        if end > 0:
            raw = buf[start:end].rstrip()
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                obj = None
            if type(obj) is dict:
                return raw, obj
    guess = _ENTRY_GUESS.match(buf, start)
    if guess is not None:
        raw = buf[start:guess.end()]
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if type(obj) is dict:
            return raw, obj
    return None


class BundleFormatError(ValueError):
    """The file is not a JSON object, or ends in the middle (a truncated page)."""


class BundleReader:
    """`for raw in reader.entries(): ...`, then `reader.skeleton` (the bundle minus entries)."""

    def __init__(self, path: Path | str, block: int = 1 << 20):
        self.path = Path(path)
        self.block = block
        self.skeleton: dict | None = None
        self.size = 0

    def entries(self) -> Iterator[tuple[bytes, dict]]:
        """Yield (raw bytes, parsed object) for each entry, in order."""
        parts: list[bytes] = []
        buf = b""
        pos = 0  # next byte to tokenize
        skel_from = 0  # first byte not yet copied into the skeleton (outside the entry array)
        depth = 0
        in_entries = False
        entry_start = -1
        entry_key = False  # the last depth-1 key was "entry"
        closed = False
        eof = False
        with open(self.path, "rb") as fh:
            while True:
                m = _TOKEN.search(buf, pos) if not closed else None
                need_more = m is None or m.group() == b'"'
                if not need_more:
                    tok = m.group()
                    c = tok[0]
                    if c == 0x22:  # a string: at depth 1 it may be a key
                        if depth == 1:
                            after = _WS.match(buf, m.end()).end()
                            if after == len(buf) and not eof:
                                need_more = True
                            else:
                                is_key = after < len(buf) and buf[after] == 0x3A
                                entry_key = is_key and tok == b'"entry"'
                        if not need_more:
                            pos = m.end()
                    elif c in (0x7B, 0x5B):  # { [
                        if depth == 0 and c != 0x7B:
                            raise BundleFormatError("not a JSON object")
                        if depth == 1 and entry_key and c == 0x5B:
                            parts.append(buf[skel_from:m.end()])
                            in_entries = True
                        elif in_entries and depth == 2 and c == 0x7B:
                            found = _entry_at(buf, m.start())
                            if found is not None:
                                yield found
                                pos = m.start() + len(found[0])
                                continue
                            entry_start = m.start()
                        entry_key = False
                        depth += 1
                        pos = m.end()
                    else:  # } ]
                        depth -= 1
                        pos = m.end()
                        if in_entries and depth == 2 and c == 0x7D:
                            raw = buf[entry_start:pos]
                            try:
                                obj = orjson.loads(raw)
                            except orjson.JSONDecodeError as exc:
                                raise BundleFormatError(f"malformed entry: {exc}") from None
                            if not isinstance(obj, dict):
                                raise BundleFormatError("an entry is not a JSON object")
                            yield raw, obj
                            entry_start = -1
                        elif in_entries and depth == 1:
                            in_entries = False
                            skel_from = m.start()
                        elif depth == 0:
                            parts.append(buf[skel_from:pos])
                            skel_from = pos
                            closed = True
                        elif depth < 0:
                            raise BundleFormatError("unbalanced JSON")
                if not need_more:
                    continue
                if closed:
                    break
                if eof:
                    raise BundleFormatError("the bundle ends in the middle (truncated)")
                # keep what is still needed: the open entry, or the skeleton bytes
                if in_entries:
                    keep = entry_start if entry_start >= 0 else pos
                else:
                    parts.append(buf[skel_from:pos])
                    skel_from = pos
                    keep = pos
                block = fh.read(max(self.block, len(buf) - keep))
                self.size += len(block)
                eof = not block
                buf = buf[keep:] + block
                pos -= keep
                skel_from -= keep
                if entry_start >= 0:
                    entry_start -= keep
            tail = buf[pos:]
            while not tail.strip():
                tail = fh.read(self.block)
                if not tail:
                    break
            if tail.strip():
                raise BundleFormatError("trailing data after the bundle")
        try:
            self.skeleton = orjson.loads(b"".join(parts))
        except orjson.JSONDecodeError as exc:
            raise BundleFormatError(f"malformed bundle: {exc}") from None


def next_link(skeleton: dict) -> str | None:
    for link in skeleton.get("link") or ():
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None
