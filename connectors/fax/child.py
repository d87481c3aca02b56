"""What the sandbox's child process does (a process forked for one request by zygote.py):
one JSON request, one JSON answer on stdout. It puts itself under the request's rlimits
before it opens the file (not the parent, in a `preexec_fn`: that is unsafe in a worker
that runs threads)."""
from __future__ import annotations

import json
import sys

from . import pages
from .sandbox import FileRejected


def _own_peak_mb() -> float:
    """This process's peak resident memory since it started (VmHWM; not ru_maxrss, which
    counts the parent's pages the fork copied)."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def _limit(limits: dict, mapped_bytes: int) -> None:
    import resource

    mem = limits["memory_mb"] * 1024 * 1024 + mapped_bytes
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    cpu = limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    out = limits["output_mb"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (out, out))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def answer(request: dict) -> None:
    """Put this process under the request's rlimits, do the request, write the answer."""
    _limit(request["limits"], int(request.get("mapped_bytes", 0)))
    try:
        if request["op"] == "analyze":
            result = pages.analyze_file(request)
        elif request["op"] == "text":
            result = pages.read_text(request)
        elif request["op"] == "inspect":
            result = pages.inspect_file(request)
        elif request["op"] == "previews":
            result = pages.render_previews(request)
        else:
            result = pages.build_file(request)
        result["ok"] = True
    except FileRejected as exc:
        result = {"ok": False, "reason": exc.reason, "detail": exc.detail}
    except MemoryError:
        result = {"ok": False, "reason": "memory-limit", "detail": "parser ran out of memory"}
    except RecursionError:
        result = {"ok": False, "reason": "too-deep", "detail": "structure nested too deeply"}
    result["peak_rss_mb"] = max(_own_peak_mb(), pages.TESSERACT_PEAK_MB[0])
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
