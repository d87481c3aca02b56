"""Numbers from the query string and the path, checked before they reach the database."""
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
