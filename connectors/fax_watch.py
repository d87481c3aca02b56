"""Wake up when the drop folder changes: inotify where it works, a timer otherwise.

inotify (through inotify_simple, a thin ctypes wrapper) does not see changes made by
other machines on a network share, so the watcher always also wakes every
`poll_seconds`; inotify only makes local drops show up sooner. Completeness is decided
elsewhere (size and mtime stable for a while), never from events alone.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


class FolderWatcher:
    """`wait(timeout)` returns True when something changed in the folder (or may have)."""

    def __init__(self, folder: Path, use_inotify: bool = True):
        self.folder = Path(folder)
        self._inotify = None
        self.mode = "polling"
        if use_inotify:
            try:
                from inotify_simple import INotify, flags

                notify = INotify()
                notify.add_watch(self.folder, flags.CLOSE_WRITE | flags.MOVED_TO | flags.CREATE
                                 | flags.MODIFY | flags.ATTRIB)
                self._inotify = notify
                self.mode = "inotify"
            except (ImportError, OSError) as exc:
                log.info("fax drop folder: inotify unavailable (%s), polling", type(exc).__name__)

    def wait(self, timeout: float, stop: threading.Event | None = None) -> bool:
        if self._inotify is not None:
            deadline = time.monotonic() + timeout
            while True:  # in slices, so a stop request is noticed within half a second
                left = deadline - time.monotonic()
                if left <= 0 or (stop is not None and stop.is_set()):
                    return False
                if self._inotify.read(timeout=int(min(left, 0.5) * 1000) + 1, read_delay=50):
                    return True
        if stop is not None:
            stop.wait(timeout)
        else:
            threading.Event().wait(timeout)
        return False

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
