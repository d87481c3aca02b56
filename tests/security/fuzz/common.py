"""What every fuzz harness here shares: the repository on sys.path, seed writing, and
the run under atheris (libFuzzer). A harness calls `main(test_one_input, seeds)`:

    python tests/security/fuzz/NAME.py --seeds DIR          # write its seed corpus
    python tests/security/fuzz/NAME.py DIR -runs=N -max_total_time=S -timeout=5

An input may only end in one of the error types the harness names (the gateway's
refusals); any other exception escapes to libFuzzer, which reports it as a crash and
writes the input to a `crash-*` file (`-artifact_prefix=` chooses where).
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(test_one_input: Callable[[bytes], None], seeds: Callable[[], Iterable[bytes]]) -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        folder = Path(sys.argv[2])
        folder.mkdir(parents=True, exist_ok=True)
        for seed in seeds():
            (folder / hashlib.sha256(seed).hexdigest()[:16]).write_bytes(seed)
        return
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
