"""Fuzz the checks an incoming PDF or TIFF goes through before anything renders it: the
sandbox child's `connectors/fax/pages.inspect_file` (type sniffing, the PDF structure
checks of `pdfcheck.py` through qpdf, then PDFium; every TIFF frame through Pillow), run
here in-process, without the child's rlimits, so a fault shows as the exception it is.

Expected: FileRejected (the child's answer for a refused file), and MemoryError or
RecursionError (which the child also turns into a refusal; the run caps its address
space like the child does, so a memory bomb is a MemoryError here too). Anything else is a finding.
A crash in native code (PDFium, qpdf, libtiff) kills this process; under the sandbox it
is a refused file, so it is reported to the library rather than fixed here.

Longer run by hand (from the repository root):

    python tests/security/fuzz/pdf_tiff.py --seeds /tmp/fuzz-pdf
    python tests/security/fuzz/pdf_tiff.py /tmp/fuzz-pdf -max_total_time=600 -timeout=5 \
        -rss_limit_mb=2048 -artifact_prefix=/tmp/fuzz-pdf-
"""
from __future__ import annotations

import common  # noqa: F401  (puts the repository on sys.path)

import atheris

with atheris.instrument_imports(include=["connectors.fax"]):
    from connectors.fax import pages
    from connectors.fax.sandbox import FileRejected, Limits, sniff

import io
import resource
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

_work = Path(tempfile.mkdtemp(prefix="fuzz-pdf-"))
_path = _work / "input"
# small bounds keep each run short; the checks are the same
_LIMITS = asdict(Limits(max_pages=20, max_pixels=4_000_000, max_image_pixels=4_000_000,
                        max_page_image_pixels=8_000_000, max_stream_mb=8))


def test_one_input(data: bytes) -> None:
    _path.write_bytes(data)
    try:
        kind = sniff(_path)
        pages.inspect_file({"path": str(_path), "out": str(_work), "limits": _LIMITS, "type": kind})
    except (FileRejected, MemoryError, RecursionError):
        pass


def seeds():
    from PIL import Image
    from reportlab.lib.pagesizes import letter
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=letter)
    c.drawString(72, 720, "Synthetic fax page 1")
    c.showPage()
    c.drawString(72, 720, "Synthetic fax page 2")
    c.showPage()
    c.save()
    yield buf.getvalue()
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=letter, pageCompression=1)
    c.drawInlineImage(Image.new("L", (32, 32), 200), 72, 600, 64, 64)
    c.showPage()
    c.save()
    yield buf.getvalue()
    for mode, compression in (("1", "group4"), ("1", "group3"), ("L", "packbits")):
        frames = [Image.new(mode, (64, 48), 1 if mode == "1" else 128) for _ in range(2)]
        out = io.BytesIO()
        frames[0].save(out, format="TIFF", compression=compression, save_all=True,
                       append_images=frames[1:], dpi=(204, 196))
        yield out.getvalue()
    # past findings: a page tree qpdf cannot flatten (QpdfRuntimeError), a filter name
    # that is not UTF-8 (UnicodeDecodeError)
    yield (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
           b"2 0 obj\n<< /Type /Pages /Kids [3 0 R R] >>\nendobj\n"
           b"3 0 obj\n<< /Type /Page /MediaBox [0 0 612 792] >>\nendobj\n%%EOF\n")
    yield (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
           b"2 0 obj\n<< /Type /Pages /Count 1 /Kids [3 0 R] >>\nendobj\n"
           b"3 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>\nendobj\n"
           b"4 0 obj\n<< /Length 3 /Filter /Fl#bcate >>\nstream\nq Q\nendstream\nendobj\n"
           b"trailer\n<< /Root 1 0 R >>\n%%EOF\n")


if __name__ == "__main__":
    if "--seeds" not in sys.argv:
        # the sandbox child's address-space cap (doubled for libFuzzer's own needs): an
        # input that would allocate past it is a MemoryError, as in the child, not an OOM
        cap = 2 * Limits().memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    common.main(test_one_input, seeds)
