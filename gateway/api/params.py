"""Values from the request, checked before they reach the database: numbers fit a BIGINT,
and no text holds a NUL character (PostgreSQL stores none; the driver would fail)."""
from __future__ import annotations

from flask import request

from gateway.errors import InvalidInput

# counts, sizes and sequence numbers are stored as SQL BIGINT; a larger value fits no row
# and would fail in the database driver (an overflow, a 500) rather than here
MAX_WHOLE = 2**63 - 1


def whole_number(value: int | str, name: str) -> int:
    """`value` as a whole number from 0 to MAX_WHOLE, or InvalidInput naming `name`."""
    try:
        number = int(value)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number") from None
    if not 0 <= number <= MAX_WHOLE:
        raise InvalidInput(f"{name} must be a whole number from 0 to {MAX_WHOLE}")
    return number


def query_number(name: str, default: int | None = None) -> int | None:
    """The query parameter `name` as a whole number, or `default` when it is absent."""
    raw = request.args.get(name)
    return default if raw is None else whole_number(raw, name)


def optional_text(body: dict, name: str) -> str | None:
    """The body's field `name`: text, or None when absent."""
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"'{name}' must be text")
    return value


def refuse_nul(value, where: str) -> None:
    """InvalidInput if any text in `value` (a string, or JSON: lists, objects and their
    keys) holds a NUL character."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise InvalidInput(f"{where} holds a NUL character (U+0000), which no field takes")
        elif isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item


def url_without_nul() -> None:
    """The path and every query parameter, before anything reads them."""
    refuse_nul([request.path, *(x for pair in request.args.items(multi=True) for x in pair)],
               "the URL")
