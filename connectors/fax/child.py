"""The sandbox's child process (`python -m connectors.fax.child`, started by sandbox.py
under rlimits): one JSON request on stdin, one JSON answer on stdout."""
from __future__ import annotations

import json
import sys

from . import pages
from .sandbox import FileRejected


def _child_main() -> None:
    request = json.loads(sys.stdin.buffer.read())
    try:
        if request["op"] == "analyze":
            result = pages.analyze_file(request)
        else:
            result = pages.build_file(request)
        result["ok"] = True
    except FileRejected as exc:
        result = {"ok": False, "reason": exc.reason, "detail": exc.detail}
    except MemoryError:
        result = {"ok": False, "reason": "memory-limit", "detail": "parser ran out of memory"}
    except RecursionError:
        result = {"ok": False, "reason": "too-deep", "detail": "structure nested too deeply"}
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    _child_main()
