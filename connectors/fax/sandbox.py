"""Parse untrusted fax files in a child process with memory, CPU, time and size limits.

A PDF bomb, an absurd TIFF or a parser bug must cost one child process, never the
worker. The parent (`analyze`, `read_text`, `build`) starts ``python -m connectors.fax.child``
with rlimits set before exec (address space, CPU seconds, file size, no core dumps),
sends one JSON request on stdin and reads one JSON answer from stdout, killing the
child's whole process group at the wall-clock limit. Every failure becomes a
`FileRejected` with a short reason code (for quarantine) and a one-line detail.

Inside the child, limits are checked before anything is decoded (pdfcheck.py: image
pixels and decoded bytes, inflated stream sizes, reference loops; every page must load
in PDFium, "bad-page" otherwise), because PDFium draws nothing where an allocation
fails and the bomb would pass as a blank page. The rlimits are the second line. The
child reports its peak RSS (`peak_rss_mb`); see `Limits` for the cap and the figures.

The child needs no secrets: it reports every QR text it finds; the parent verifies.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from connectors.base import RecordRejected

log = logging.getLogger(__name__)
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding connectors/
_PHONE_RE = re.compile(r"^\+?[0-9][0-9 ()./-]{2,30}$")


@dataclass(frozen=True)
class Limits:
    """Bounds for parsing one file. Defaults fit real faxes with a wide margin.

    Memory cap: each process of a parse (the child, and a Tesseract it starts) may map at
    most `memory_mb` (512 MB) of address space, plus the file's size (the child maps the
    file once to scan its raw bytes). Measured peak RSS (`Analysis.peak_rss_mb`,
    /proc VmHWM): 67-70 MB for ordinary faxes (3-page text PDF, 300 dpi scan with OCR,
    4-page G4 TIFF), 128-143 MB for the largest images the limits let through (49 Mpx
    gray, 41 Mpx RGB), 24-43 MB for the bombs refused before decoding (1 GiB image,
    reference loops, lying JPEG header, inline image of 1.6 Gpx); measured with
    ``python -m tests.fax.measure_sandbox``.
    """

    memory_mb: int = 512  # address space of each sandbox process
    cpu_seconds: int = 60
    wall_seconds: float = 120.0
    output_mb: int = 512  # largest file the child may write
    max_file_mb: int = 256  # larger drops are refused before parsing
    max_pages: int = 2000
    max_pixels: int = 60_000_000  # one page or TIFF frame (a fax page is ~4 Mpx)
    max_image_pixels: int = 50_000_000  # one image in a PDF (a 600 dpi letter scan is 34 Mpx)
    max_page_image_pixels: int = 100_000_000  # the distinct images one PDF page draws
    max_stream_mb: int = 128  # one PDF stream inflated, or one image decoded
    max_page_inches: float = 200.0
    max_nesting: int = 100  # arrays/dictionaries inside each other (PDF bombs nest thousands deep)
    scan_pages: int = 2  # first pages searched for a cover code
    text_pages: int = 3  # first pages whose text is matched
    ocr_pages: int = 2  # first pages OCR'd when there is no text layer
    render_dpi: int = 200
    preview_pages: int = 200  # first pages given a review thumbnail (bounds the render time)
    ocr_seconds: float = 60.0


class FileRejected(RecordRejected):
    """This file cannot be processed; `reason` is a short code kept with it in quarantine."""

    peak_rss_mb: float | None = None  # the sandbox child's peak memory, when it ran

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Analysis:
    """What the child found in a file."""

    type: str  # "pdf" or "tiff"
    pages: int
    codes: list[dict] = field(default_factory=list)  # {"page": i, "text": qr text}
    text: list[str] = field(default_factory=list)  # per page, first `text_pages`
    text_source: str = "none"  # "layer", "ocr" or "none"
    fax_number: str | None = None  # TIFF ImageDescription when it is a phone number
    encrypted: bool = False  # opened with an empty user password
    previews: int = 0  # preview-1.png ... preview-<previews>.png, in the output folder
    peak_rss_mb: float = 0.0  # the child's peak resident memory (with Tesseract's)


@dataclass
class Built:
    path: str  # the delivered PDF
    pages: int
    removed: list[int]
    peak_rss_mb: float = 0.0


def sniff(path: Path) -> str:
    """'pdf', 'tiff' or raise FileRejected, from the first bytes only."""
    with open(path, "rb") as fh:
        head = fh.read(1024)
    if not head:
        raise FileRejected("empty", "zero-byte file")
    if b"%PDF-" in head:
        return "pdf"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] in (b"II+\x00", b"MM\x00+"):
        raise FileRejected("unsupported", "BigTIFF is not a fax format")
    raise FileRejected("unsupported", "neither a PDF nor a TIFF")


def analyze(path: Path, outdir: Path, limits: Limits = Limits()) -> Analysis:
    """Inspect a fax in the sandbox: pages, QR texts, text (layer or OCR), preview PNG."""
    result = _run_child({"op": "analyze", "path": str(path), "out": str(outdir)}, path, limits)
    return Analysis(**result)


def read_text(path: Path, outdir: Path, limits: Limits = Limits()) -> Analysis:
    """A document's page count and first pages' text (layer or OCR) in the sandbox: the
    checks of `analyze` without the cover-code search and previews (no `codes`)."""
    result = _run_child({"op": "text", "path": str(path), "out": str(outdir)}, path, limits)
    return Analysis(**result)


@dataclass
class Inspection:
    """What the structure check found in a file that may be opened safely."""

    type: str  # "pdf" or "tiff"
    pages: int
    peak_rss_mb: float = 0.0


def inspect(path: Path, outdir: Path, limits: Limits = Limits()) -> Inspection:
    """Check a document in the sandbox without rendering it: the PDF checks before decoding
    (images, inflated streams, reference loops), every page loads, every TIFF frame
    decodes. For files delivered as they are (the PDF folder source)."""
    result = _run_child({"op": "inspect", "path": str(path), "out": str(outdir)}, path, limits)
    return Inspection(**result)


def build(path: Path, outdir: Path, drop_pages: list[int], limits: Limits = Limits()) -> Built:
    """Make the delivered PDF in the sandbox: TIFF -> PDF (img2pdf), minus `drop_pages`."""
    result = _run_child({"op": "build", "path": str(path), "out": str(outdir),
                         "drop": sorted(set(drop_pages))}, path, limits)
    return Built(**result)


def _run_child(request: dict, path: Path, limits: Limits) -> dict:
    size = os.stat(path).st_size
    if size > limits.max_file_mb * 1024 * 1024:
        raise FileRejected("too-large", f"{size} bytes is over the {limits.max_file_mb} MB limit")
    request["limits"] = asdict(limits)
    request["mapped_bytes"] = size  # the file is mapped once to scan it: room for it too
    request["type"] = sniff(path)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": _PACKAGE_ROOT,
           "LANG": "C.UTF-8", "OMP_THREAD_LIMIT": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    if "TESSDATA_PREFIX" in os.environ:
        env["TESSDATA_PREFIX"] = os.environ["TESSDATA_PREFIX"]

    workdir = Path(request["out"])
    answer_path, error_path = workdir / ".sandbox-answer", workdir / ".sandbox-errors"
    with open(answer_path, "w+b") as answer_file, open(error_path, "w+b") as error_file:
        proc = subprocess.Popen([sys.executable, "-m", "connectors.fax.child"], stdin=subprocess.PIPE,
                                stdout=answer_file, stderr=error_file, env=env, cwd=workdir,
                                start_new_session=True)
        timed_out = threading.Event()

        def on_wall_clock():
            timed_out.set()
            _kill_group(proc, reap=False)
        timer = threading.Timer(limits.wall_seconds, on_wall_clock)
        timer.start()
        try:
            try:
                proc.stdin.write(json.dumps(request).encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass  # the child died at once: its exit status says why
            proc.wait()
        finally:
            timer.cancel()
            _kill_group(proc)
        out = _tail(answer_file, 1 << 20)
        err = _tail(error_file, 4096)
    answer_path.unlink(missing_ok=True)
    error_path.unlink(missing_ok=True)
    answer = _answer(out, err, proc.returncode, timed_out.is_set(), limits)
    log.info("fax sandbox %s: peak RSS %.1f MB", request["op"], answer["peak_rss_mb"])
    return answer


def _tail(fh, limit: int) -> bytes:
    """The last `limit` bytes the child wrote to `fh` (it may have written a lot)."""
    size = os.fstat(fh.fileno()).st_size
    fh.seek(max(0, size - limit))
    return fh.read(limit)


def _answer(out: bytes, err: bytes, returncode: int, timed_out: bool, limits: Limits) -> dict:
    """The child's JSON answer, or the FileRejected its exit status means."""
    if timed_out:
        raise FileRejected("time-limit", f"parsing took over {limits.wall_seconds:g} s")
    answer = None
    for line in reversed(out.decode("utf-8", "replace").splitlines()):
        if line.startswith("{"):
            try:
                answer = json.loads(line)
            except ValueError:
                pass
            break
    if answer is None or returncode != 0:
        if returncode in (-signal.SIGXCPU, -signal.SIGKILL) and b"MemoryError" not in err:
            raise FileRejected("time-limit", f"parser used over {limits.cpu_seconds} s of CPU")
        if answer and not answer.get("ok"):
            raise _rejected(answer)
        if returncode == -signal.SIGXFSZ:
            raise FileRejected("output-limit", f"output over {limits.output_mb} MB")
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        if "MemoryError" in tail[0] or returncode in (-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS):
            raise FileRejected("memory-limit", f"parser exceeded {limits.memory_mb} MB or crashed "
                                               f"(exit {returncode})")
        raise FileRejected("parser-failed", f"exit {returncode}: {tail[0][:200]}")
    if not answer.get("ok"):
        raise _rejected(answer)
    answer.pop("ok")
    return answer


def _rejected(answer: dict) -> FileRejected:
    exc = FileRejected(answer["reason"], answer["detail"])
    exc.peak_rss_mb = answer.get("peak_rss_mb")
    return exc


def _kill_group(proc: subprocess.Popen, reap: bool = True) -> None:
    """Kill the child's whole process group: the child, or what it left running (a Tesseract)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if reap and proc.returncode is None:
        proc.wait()


def phone_like(value: str | None) -> str | None:
    """A fax number from outside, or None when it does not look like one."""
    if not value:
        return None
    value = value.strip()
    return value if _PHONE_RE.match(value) else None
