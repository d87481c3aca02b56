"""Wake up when the drop folder changes: inotify where it works, a timer otherwise.

inotify (through inotify_simple, a thin ctypes wrapper) does not see changes made by
other machines on a network share, so the watcher always also wakes every
`poll_seconds`; inotify only makes local drops show up sooner. Completeness is decided
elsewhere (size and mtime stable for a while), never from events alone.
"""
from __future__ import annotations

import logging
import os
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


def open_for_writing(paths: list[bytes]) -> set[bytes]:
    """Those of `paths` some local process holds open for writing (Linux /proc).

    A fax server that writes a fax page by page can pause longer than the settle time
    between pages; while it still holds the file open for writing, the file is not
    complete. Writers on other machines (network shares) are not visible here, and
    without privileges only our own user's processes are: the settle time covers those.
    """
    targets = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        targets[(st.st_dev, st.st_ino)] = path
    busy: set[bytes] = set()
    if not targets or not os.path.isdir("/proc/self/fd"):
        return busy
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            path = targets.get((st.st_dev, st.st_ino))
            if path is None or path in busy:
                continue
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    flags = next((int(line.split()[1], 8) for line in info if line.startswith("flags:")), 0)
            except (OSError, ValueError):
                flags = os.O_WRONLY  # cannot tell: assume the worst
            if flags & (os.O_WRONLY | os.O_RDWR):
                busy.add(path)
    return busy
