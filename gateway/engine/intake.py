"""The intake folder: signed authorizations an e-signature service drops are imported.

Each file directly in `intake_dir` is read once (never through a link, never a FIFO),
imported like an authorization posted to the API (verified, stored, its case opened),
then moved to `done/`. One that is refused goes to `rejected/` with `NAME.reason`
beside it: the error's message, never the content. The service should write under a
name starting with a dot and rename when done; names starting with a dot, and files
changed within the last `SETTLE_S` seconds, are left for the next pass. A file larger
than an authorization can be is refused without being read.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from connectors.base import open_regular, safe_name
from gateway.errors import GatewayError
from gateway.runtime.services import Services
from gateway.trust.authorizations import MAX_JWS_BYTES

from . import operations

log = logging.getLogger(__name__)

SETTLE_S = 1.0


def scan_once(svc: Services) -> dict[str, int]:
    """One pass over the intake folder; counts by outcome (imported, rejected)."""
    folder = svc.settings.intake_dir
    counts = {"imported": 0, "rejected": 0}
    if folder is None or not folder.is_dir():
        return counts
    for sub in ("done", "rejected"):
        (folder / sub).mkdir(mode=0o700, exist_ok=True)
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.is_dir(follow_symlinks=False):
            continue
        name = safe_name(entry.name)
        try:
            if time.time() - entry.stat(follow_symlinks=False).st_mtime < SETTLE_S:
                continue  # perhaps still being written
        except FileNotFoundError:
            continue
        if name is None:
            _set_aside(folder, entry.name, "rejected", "the file name is not a plain printable name")
            counts["rejected"] += 1
            continue
        problem, jws = _read(folder / name)
        if problem is None:
            try:
                row = operations.import_authorization(svc, jws, actor="intake", role="operator")
            except GatewayError as exc:
                problem = str(exc)
            else:
                _set_aside(folder, name, "done")
                counts["imported"] += 1
                log.info("intake: authorization %s imported from the intake folder", row.id)
                continue
        _set_aside(folder, name, "rejected", problem)
        counts["rejected"] += 1
        log.warning("intake: a file was refused (see rejected/%s.reason)", _printable(name))
    return counts


def _read(path: Path) -> tuple[str | None, str]:
    handle = open_regular(path)
    if handle is None:
        return "not a regular file (links, folders and pipes are refused)", ""
    with handle:
        data = handle.read(MAX_JWS_BYTES + 1)
    if len(data) > MAX_JWS_BYTES:
        return f"larger than an authorization can be ({MAX_JWS_BYTES} bytes)", ""
    try:
        return None, data.decode("ascii").strip()
    except UnicodeDecodeError:
        return "not a compact JWS (ASCII)", ""


def _set_aside(folder: Path, name: str, where: str, reason: str | None = None) -> None:
    """Move the file (the link itself, if it is one) out of the way, keeping a reason."""
    target = folder / where / _unique(folder / where, _printable(name))
    os.replace(folder / name, target)
    if reason is not None:
        target.with_name(target.name + ".reason").write_text(reason[:2000] + "\n")


def _unique(folder: Path, name: str) -> str:
    candidate, n = name, 1
    while (folder / candidate).exists() or (folder / f"{candidate}.reason").exists():
        n += 1
        candidate = f"{name}.{n}"
    return candidate


def _printable(name: str) -> str:
    return ascii(name)[1:-1].replace("/", "_")[:200] or "unnamed"
