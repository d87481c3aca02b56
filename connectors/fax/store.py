"""The fax connector's own store: every received file in exactly one state folder.

    drop folder --claim--> tmp/<id> --> claimed/<id> --> matched/<id> --fetched--> done/<id>
                                                   \\--> review/<id> --> matched/<id> | rejected/<id>
                                                    \\-> quarantine/<id>  (with reason.txt)

Each arrow is one ``rename`` of a whole folder, so a fax is always in exactly one
state, and a crash between two steps leaves a state `recover()` completes. Claiming
moves the file out of the drop folder first (``rename``, or copy + fsync + unlink when
the drop folder is another file system); `tmp/<id>/meta.json` is written before the
move, so recovery knows where an interrupted claim came from. Ids are ours
(``20261122T130000Z-3f2a...``): names from the drop folder are never used as paths.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from connectors.files import write_atomic

STATES = ("tmp", "claimed", "matched", "review", "quarantine", "rejected", "done", "work")
FAX_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{12}$")


class StoreBusy(Exception):
    """Another process holds the store's lock (one ingestor per store at a time)."""


def new_fax_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(6)


def display_name(raw: bytes) -> str:
    """A drop-folder name made printable for people (never used as a path)."""
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)[:300]


def write_json(path: Path, data: dict) -> None:
    """Replace `path` atomically (write, fsync, rename)."""
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True, default=str).encode())


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FaxStore:
    """State folders under `root`. Methods take fax ids, never outside names."""

    def __init__(self, root: Path):
        self.root = Path(root)
        for state in STATES:
            (self.root / state).mkdir(parents=True, exist_ok=True)

    def path(self, state: str, fax_id: str) -> Path:
        if state not in STATES or not FAX_ID_RE.match(fax_id or ""):
            raise ValueError(f"bad fax id {fax_id!r} or state {state!r}")
        return self.root / state / fax_id

    def ids(self, state: str) -> list[str]:
        return sorted(n for n in os.listdir(self.root / state) if FAX_ID_RE.match(n))

    def state_of(self, fax_id: str) -> str | None:
        for state in STATES:
            if state not in ("tmp", "work") and self.path(state, fax_id).is_dir():
                return state
        return None

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's ingest lock, or raise StoreBusy at once."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreBusy(f"fax store {self.root} is in use by another ingestor") from None
            yield
        finally:
            os.close(fd)

    def backlog(self, drop: Path, max_age_s: float) -> int:
        """Received files not yet analyzed: documents in the drop folder (hidden temporary
        files and sidecars aside), claims in progress and claimed faxes (waiting or being
        analyzed). Listed in the order a fax moves (drop, tmp, claimed), so a fax moving
        meanwhile is counted at least once. A file unchanged for `max_age_s` (stuck: held
        open for ever, or failing to claim) no longer counts."""
        now = time.time()
        count = 0
        dropb = os.fsencode(drop)
        for raw in os.listdir(dropb):
            if raw.startswith(b".") or raw.lower().endswith(b".json"):
                continue
            try:
                st = os.lstat(os.path.join(dropb, raw))
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode) and now - st.st_mtime < max_age_s:
                count += 1
        for state in ("tmp", "claimed"):
            for fax_id in self.ids(state):
                try:
                    if now - os.stat(self.path(state, fax_id)).st_mtime < max_age_s:
                        count += 1
                except FileNotFoundError:
                    count += 1  # moved on meanwhile: counted, the caller looks again later
        return count

    # ---- claim --------------------------------------------------------------------

    def claim(self, drop: Path, raw_name: bytes, meta: dict, sidecar: bytes | None = None) -> str:
        """Move one drop-folder file (and its sidecar) into the store; return its fax id."""
        steps = self.claim_steps(drop, raw_name, meta, sidecar)
        fax_id = next(steps)
        for _ in steps:
            pass
        return fax_id

    def claim_steps(self, drop: Path, raw_name: bytes, meta: dict,
                    sidecar: bytes | None = None) -> Iterator[str]:
        """`claim` one durable step at a time (yields the fax id after each step), so a
        test can stop between any two steps the way a crash would."""
        fax_id = new_fax_id()
        tmp = self.path("tmp", fax_id)
        tmp.mkdir()
        source = os.path.join(os.fsencode(drop), raw_name)
        st = os.lstat(source)
        meta = dict(meta, fax_id=fax_id, source_hex=raw_name.hex(), source_name=display_name(raw_name),
                    source_size=st.st_size, source_mtime_ns=st.st_mtime_ns,
                    sidecar_hex=sidecar.hex() if sidecar else None,
                    claimed_at=datetime.now(timezone.utc).isoformat())
        write_json(tmp / "meta.json", meta)
        _fsync_dir(tmp)
        yield fax_id
        yield from self._move_in_steps(source, tmp / "original", st, fax_id)
        if sidecar:
            side_source = os.path.join(os.fsencode(drop), sidecar)
            try:
                yield from self._move_in_steps(side_source, tmp / "sidecar", os.lstat(side_source), fax_id)
            except FileNotFoundError:
                pass
        self._promote(tmp)
        yield fax_id

    def _move_in(self, source: bytes, target: Path, st: os.stat_result) -> None:
        for _ in self._move_in_steps(source, target, st, ""):
            pass

    def _move_in_steps(self, source: bytes, target: Path, st: os.stat_result, fax_id: str) -> Iterator[str]:
        """rename(2) when the drop folder is on our file system; else copy to a .part
        file, fsync, rename it, then unlink the source (recover() finishes the unlink)."""
        try:
            os.rename(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            part = target.with_name(target.name + ".part")
            with open(part, "wb") as dst:
                if stat.S_ISREG(st.st_mode):
                    with os.fdopen(os.open(source, os.O_RDONLY | os.O_NOFOLLOW), "rb") as src:
                        shutil.copyfileobj(src, dst, 1 << 20)
                else:  # a link or a FIFO on another file system: keep what it was, not what it points to
                    dst.write(b"not a regular file (mode %o)\n" % st.st_mode)
                dst.flush()
                os.fsync(dst.fileno())
            yield fax_id
            os.rename(part, target)
            _fsync_dir(target.parent)
            yield fax_id
            os.unlink(source)
        _fsync_dir(target.parent)
        yield fax_id

    def _promote(self, tmp: Path) -> None:
        os.rename(tmp, self.root / "claimed" / tmp.name)
        _fsync_dir(self.root / "claimed")

    # ---- moves between states -------------------------------------------------------

    def move(self, fax_id: str, from_state: str, to_state: str) -> Path:
        target = self.path(to_state, fax_id)
        os.rename(self.path(from_state, fax_id), target)
        _fsync_dir(target.parent)
        return target

    # ---- recovery -----------------------------------------------------------------

    def recover(self, drop: Path) -> dict:
        """Finish or undo whatever a crash interrupted. Safe to run any number of times."""
        counts = {"claims_finished": 0, "claims_undone": 0, "assignments_finished": 0}
        for name in os.listdir(self.root / "work"):
            shutil.rmtree(self.root / "work" / name, ignore_errors=True)
        for fax_id in self.ids("tmp"):
            tmp = self.path("tmp", fax_id)
            try:
                meta = read_json(tmp / "meta.json")
            except (OSError, ValueError):
                meta = None
            if meta is None or not (tmp / "original").exists():
                # the drop file was never moved (or the copy was incomplete): it is still there
                shutil.rmtree(tmp)
                counts["claims_undone"] += 1
                continue
            dropb = os.fsencode(drop)
            source = os.path.join(dropb, bytes.fromhex(meta["source_hex"]))
            try:
                st = os.lstat(source)
                if st.st_size == meta["source_size"] and st.st_mtime_ns == meta["source_mtime_ns"]:
                    os.unlink(source)  # a cross-file-system copy finished; the original stayed
            except FileNotFoundError:
                pass
            for part in tmp.glob("*.part"):
                part.unlink()
            if meta.get("sidecar_hex") and not (tmp / "sidecar").exists():
                side = os.path.join(dropb, bytes.fromhex(meta["sidecar_hex"]))
                if os.path.lexists(side):
                    self._move_in(side, tmp / "sidecar", os.lstat(side))
            self._promote(tmp)
            counts["claims_finished"] += 1
        for fax_id in self.ids("review"):
            try:
                result = read_json(self.path("review", fax_id) / "result.json")
            except (OSError, ValueError):
                continue
            if result.get("decision") in ("assigned", "rejected"):
                self.move(fax_id, "review", "matched" if result["decision"] == "assigned" else "rejected")
                counts["assignments_finished"] += 1
        return counts

    def quarantine(self, fax_id: str, from_state: str, reason: str, detail: str) -> Path:
        """Put a fax aside with a reason file people can read."""
        folder = self.path(from_state, fax_id)
        (folder / "reason.txt").write_text(f"{reason}: {detail}\n", encoding="utf-8")
        write_json(folder / "result.json", {"decision": "quarantined", "reason": reason, "detail": detail,
                                            "at": datetime.now(timezone.utc).isoformat()})
        return self.move(fax_id, from_state, "quarantine")
