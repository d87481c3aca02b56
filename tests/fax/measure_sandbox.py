"""Peak RSS of the fax sandbox's child on ordinary faxes, large images and the bombs
(not a test): python -m tests.fax.measure_sandbox  -> one JSON line, name -> MB or reason."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

from connectors.fax.sandbox import FileRejected, analyze

from . import faxgen, hostile


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="sandbox-memory-"))
    person = faxgen.people(1, seed=3)[0]
    files = {}
    pages = faxgen.render(faxgen.records_pdf(person, 4, seed=1), 204)
    files["g4-tiff-4-pages"] = faxgen.save_tiff([faxgen.faxify(p, seed=i) for i, p in enumerate(pages)],
                                                base / "a.tif")
    (base / "text.pdf").write_bytes(faxgen.records_pdf(person, 3, seed=3))
    files["text-pdf-3-pages"] = base / "text.pdf"
    scans = [faxgen.faxify(p, noise=0.002, seed=20).convert("L")
             for p in faxgen.render(faxgen.records_pdf(None, 1, seed=4), 300)]
    files["scan-300dpi-ocr"] = faxgen.scanned_pdf(scans, base / "scan.pdf", dpi=300)
    for name, side, mode in (("gray-49mpx", 7000, "L"), ("rgb-41mpx", 6400, "RGB")):
        Image.frombytes(mode, (side, side), os.urandom(side * side * len(mode))).save(
            base / f"{name}.pdf", "PDF", resolution=600)
        files[name] = base / f"{name}.pdf"
    for maker in ("image_bomb_pdf", "many_images_pdf", "lying_jpeg_pdf", "inline_image_bomb_pdf",
                  "reference_loop_pdf", "compressed_reference_loop_pdf", "form_loop_pdf", "bad_page_pdf"):
        (base / f"{maker}.pdf").write_bytes(getattr(hostile, maker)())
        files[maker] = base / f"{maker}.pdf"
    out = {}
    for name, path in files.items():
        work = base / f"out-{name}"
        work.mkdir()
        try:
            out[name] = {"peak_rss_mb": analyze(path, work).peak_rss_mb}
        except FileRejected as exc:
            out[name] = {"peak_rss_mb": exc.peak_rss_mb, "refused": exc.reason}
        print(name, out[name], file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
