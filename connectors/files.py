"""Files written whole or not at all.

Whatever another process reads from a folder (a fax server sending from an outbox, a
witness collecting checkpoints, the next worker reading a state file) must never see
half a file. The bytes go to a hidden temporary name in the same folder, are synced,
then renamed over the target in one step. The temporary name is unique and opened
with O_EXCL | O_NOFOLLOW, so two writers never share one and a planted link is never
followed. Used by the connectors and by the gateway alike (connectors import nothing
of the gateway, so it lives here).
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> Path:
    """Replace `path` with `data` atomically; make its folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path
