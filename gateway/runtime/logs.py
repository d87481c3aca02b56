"""Logging for every process: plain text or one JSON object a line (`log_format`), each
line carrying the transfer and case it is about when one is known.

The ids come from context variables that `log_context` sets around a transfer step or a
case pass (engine/), so a message need not repeat them and a log shipper can index them.
Lines hold what the messages hold: ids, counts, sizes and hashes, never records.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Iterator

CONTEXT_FIELDS = ("transfer_id", "case_id")
CHATTY_LIBRARIES = ("alembic",)
_context: dict[str, ContextVar[str | None]] = {
    name: ContextVar(name, default=None) for name in CONTEXT_FIELDS}


@contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Tag every line logged inside the block (in this thread or task) with these ids."""
    tokens = [(_context[name], _context[name].set(value)) for name, value in ids.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextIds(logging.Filter):
    """Puts the current transfer and case ids on each record (None when unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _context.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, and the
    transfer and case ids when known; an exception as its formatted text."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, timezone.utc)
                .isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """The plain format, with the ids appended when known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = " ".join(f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS
                       if getattr(record, name, None) is not None)
        return f"{text} [{ids}]" if ids else text


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send every logger's lines to stderr in `fmt` ("text" or "json") at `level`;
    called again (once settings are loaded) it replaces the handler it made. Where the
    root logger has handlers of someone else's (a test harness, an embedding program), it
    leaves logging to them, as `logging.basicConfig` does."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_gateway", False)]
    if len(ours) != len(root.handlers):
        return
    for handler in ours:
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler._gateway = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextIds())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # the migrations' step-by-step lines at every command's start are the library's
    # chatter: shown when DEBUG is asked for, otherwise its warnings only
    quiet = logging.WARNING if root.level > logging.DEBUG else logging.NOTSET
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(quiet)
    logging.captureWarnings(True)  # library warnings become lines of the same format
