"""Parse untrusted fax files in a child process with memory, CPU, time and size limits.

A PDF bomb, an absurd TIFF or a parser bug must cost one child process, never the
worker. The parent (`analyze`, `read_text`, `build`) has a child forked for each request
by its fork server (zygote.py, an interpreter with the parsers imported, no secrets),
which sets the request's rlimits before it opens the file (address space, CPU seconds,
file size, no core dumps) and writes one JSON answer to a file the parent gave it; the
parent kills the child's whole process group at the wall-clock limit. Every failure becomes a
`FileRejected` with a short reason code (for quarantine) and a one-line detail.

Inside the child, limits are checked before anything is decoded (pdfcheck.py: image
pixels and decoded bytes, inflated stream sizes, reference loops; every page must load
in PDFium, "bad-page" otherwise), because PDFium draws nothing where an allocation
fails and the bomb would pass as a blank page. The rlimits are the second line. The
child reports its peak RSS (`peak_rss_mb`); see `Limits` for the cap and the figures.

The child needs no secrets: it reports every QR text it finds; the parent verifies.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
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
    /proc VmHWM, counting what the fork server had loaded and set up, numpy included):
    94-109 MB for ordinary faxes (3-page text PDF, 300 dpi scan with OCR, 4-page G4
    TIFF), 129-146 MB for the largest images the limits let through (49 Mpx gray, 41 Mpx
    RGB), 31-45 MB for the bombs refused before decoding (1 GiB image, reference loops,
    lying JPEG header, inline image of 1.6 Gpx); measured with
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
    """Inspect a fax in the sandbox: pages, QR texts, text (layer or OCR); the review
    thumbnails are `render_previews`."""
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


def render_previews(path: Path, outdir: Path, limits: Limits = Limits()) -> int:
    """Render the review thumbnails of a fax's first pages in the sandbox (preview-<n>.png
    in `outdir`); returns how many."""
    result = _run_child({"op": "previews", "path": str(path), "out": str(outdir)}, path, limits)
    return int(result["previews"])


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

    workdir = Path(request["out"])
    answer_path, error_path = workdir / ".sandbox-answer", workdir / ".sandbox-errors"
    with open(answer_path, "w+b") as answer_file, open(error_path, "w+b") as error_file:
        conn = _ZYGOTE.ask(json.dumps(request).encode(), answer_file.fileno(), error_file.fileno())
        timed_out = threading.Event()
        pid = None

        def on_wall_clock():
            timed_out.set()
            if pid is not None:
                _kill_group(pid)
        timer = threading.Timer(limits.wall_seconds, on_wall_clock)
        timer.start()
        try:
            with conn, conn.makefile("rb") as lines:
                pid = _reported(lines.readline(), b"pid")
                returncode = _reported(lines.readline(), b"exit")
        finally:
            timer.cancel()
            if pid is not None:
                _kill_group(pid)  # what the child left running (a Tesseract)
        out = _tail(answer_file, 1 << 20)
        err = _tail(error_file, 4096)
    answer_path.unlink(missing_ok=True)
    error_path.unlink(missing_ok=True)
    answer = _answer(out, err, returncode, timed_out.is_set(), limits)
    log.info("fax sandbox %s: peak RSS %.1f MB", request["op"], answer["peak_rss_mb"])
    return answer


def _reported(line: bytes, word: bytes) -> int:
    name, _, value = line.strip().partition(b" ")
    if name != word or not value.lstrip(b"-").isdigit():
        raise OSError("the fax sandbox's fork server ended while a file was parsed")
    return int(value)


class _ForkServer:
    """This process's fork server (zygote.py): started at the first request, again if it
    ended, in a folder of its own (0700) with the parent's environment left out."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._owner = 0  # the pid that started it (a forked worker starts its own)
        self._folder = ""

    def ask(self, request: bytes, answer_fd: int, error_fd: int) -> socket.socket:
        """Send one request; the connection then reports the child's pid and exit."""
        for attempt in (1, 2):
            path = self._socket(restart=attempt == 2)
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(path)
                socket.send_fds(conn, [request], [answer_fd, error_fd])
                conn.shutdown(socket.SHUT_WR)
                return conn
            except OSError:
                conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _socket(self, restart: bool) -> str:
        with self._lock:
            alive = (self._proc is not None and self._owner == os.getpid()
                     and self._proc.poll() is None)
            if restart or not alive:
                self._start()
            return os.path.join(self._folder, "zygote")

    def _start(self) -> None:
        self.stop()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": _PACKAGE_ROOT,
               "LANG": "C.UTF-8", "OMP_THREAD_LIMIT": "1", "OPENBLAS_NUM_THREADS": "1",
               "PYTHONDONTWRITEBYTECODE": "1"}  # no thread pools: the server forks
        if "TESSDATA_PREFIX" in os.environ:
            env["TESSDATA_PREFIX"] = os.environ["TESSDATA_PREFIX"]
        self._folder = tempfile.mkdtemp(prefix="fax-sandbox-")
        path = os.path.join(self._folder, "zygote")
        with open(os.path.join(self._folder, "errors"), "w+b") as errors:
            # in this process's group: signals to it reach the server too, and its CPU
            # (its children's, reaped by it) counts as this process's
            self._proc = subprocess.Popen([sys.executable, "-m", "connectors.fax.zygote", path],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=errors, env=env, cwd=self._folder)
            self._owner = os.getpid()
            deadline = time.monotonic() + 60
            while not os.path.exists(path):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    tail = _tail(errors, 400).decode("utf-8", "replace").strip().splitlines()[-1:]
                    self.stop()
                    raise OSError(f"the fax sandbox's fork server did not start: {tail}")
                time.sleep(0.01)

    def stop(self) -> None:
        if self._proc is not None and self._owner == os.getpid():
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = ""


_ZYGOTE = _ForkServer()
atexit.register(_ZYGOTE.stop)


def start() -> None:
    """Start this process's fork server now (it imports the parsers, about a second of
    its own CPU), so the first file to parse does not wait for it; OSError if it cannot."""
    _ZYGOTE._socket(restart=False)


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


def _kill_group(pid: int) -> None:
    """Kill a child's whole process group: the child, or what it left running (a Tesseract)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def phone_like(value: str | None) -> str | None:
    """A fax number from outside, or None when it does not look like one."""
    if not value:
        return None
    value = value.strip()
    return value if _PHONE_RE.match(value) else None
