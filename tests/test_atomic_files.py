"""connectors.files.write_atomic: a reader sees the old file or the new one, never a part."""
from __future__ import annotations

import os
import threading

import pytest

from connectors.files import write_atomic


def test_replaces_whole_with_the_mode_asked_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "out" / "request-1.pdf"
    assert write_atomic(target, b"first") == target
    write_atomic(target, b"second version")
    assert target.read_bytes() == b"second version"
    assert os.stat(target).st_mode & 0o777 == 0o600
    public = write_atomic(tmp_path / "checkpoint.json", b"{}", mode=0o644)
    assert os.stat(public).st_mode & 0o777 == 0o644 & ~_umask()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoint.json", "out", "request-1.pdf"]


def test_concurrent_writers_each_leave_a_whole_file(tmp_path):
    target = tmp_path / "state.json"
    bodies = [bytes([65 + n]) * 200_000 for n in range(8)]
    seen: list[bytes] = []
    done = threading.Event()

    def read():
        while not done.is_set():
            if target.exists():
                seen.append(target.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write_atomic, args=(target, b)) for b in bodies]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    done.set()
    reader.join()
    assert target.read_bytes() in bodies
    assert seen and all(s in bodies for s in seen)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_write_leaves_the_old_file_and_no_part(tmp_path, monkeypatch):
    target = tmp_path / "keys.json"
    write_atomic(target, b"old")

    def full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]


def test_a_planted_link_at_the_target_is_replaced_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_bytes(b"untouched")
    (tmp_path / "box").mkdir()
    target = tmp_path / "box" / "request.pdf"
    target.symlink_to(elsewhere)
    write_atomic(target, b"letter")
    assert elsewhere.read_bytes() == b"untouched"
    assert not target.is_symlink() and target.read_bytes() == b"letter"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
