"""Page work on fax files: render, find QR codes, read text, OCR, assemble the PDF.

Runs inside the sandbox child only (see sandbox.py and child.py); every limit here is a second
line of defence behind the child's rlimits. PDFs go through pypdfium2, TIFFs through
Pillow; TIFF -> PDF is img2pdf (CCITT G3/G4 data is embedded as is, so lossless).
"""
from __future__ import annotations

import io
import mmap
import re
import resource
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

from .cover import decode_payloads, looks_like_cover_payload
from .pdfcheck import check_pdf, reference_chains
from .sandbox import FileRejected, phone_like

_MIN_TEXT = 20  # fewer non-space characters than this is "no text layer"
TESSERACT_PEAK_MB = [0.0]
_PREVIEW_SIZE = (850, 1100)  # review thumbnails fit this box (pixels)  # the largest peak RSS of a Tesseract run (RUSAGE_CHILDREN)


def analyze_file(request: dict) -> dict:
    limits = request["limits"]
    path = Path(request["path"])
    if request["type"] == "pdf":
        with _checked_pdf(path, limits) as doc:
            pages = len(doc)
            encrypted = _pdf_encrypted(doc)
            scan = _scan_indices(pages, limits)
            images = {i: _render_pdf_page(doc, i, limits) for i in scan}
            scanned = {i for i in scan if _draws_images(doc, i)}  # the others have no speckles
            layer = [_pdf_text(doc, i) for i in range(min(pages, limits["text_pages"]))]
        fax_number = None
    else:
        wanted = max(limits["scan_pages"], limits["ocr_pages"])
        last: list = [None]

        def keep(i, frame):
            last[0] = frame  # only the latest frame is held beyond the first ones
            return frame if i < wanted else None
        frames, pages, fax_number = _tiff_frames(path, limits, keep)
        frames.setdefault(pages - 1, last[0])
        encrypted, layer = False, []
        images = {i: _square(frames[i]) for i in _scan_indices(pages, limits)}
        scanned = set(images)

    codes = []
    for index, image in images.items():
        for text in decode_payloads(image, despeckle=index in scanned):
            codes.append({"page": index, "text": text[:512]})
    images = [images[i] for i in sorted(images) if i < limits["scan_pages"]]

    text, source = layer, "layer"
    if sum(len("".join(t.split())) for t in layer) < _MIN_TEXT:
        text, source = [], "none"
        if not any(looks_like_cover_payload(c["text"]) for c in codes):
            if request["type"] == "tiff":
                ocr_images = [_square(frames[i]) for i in range(min(pages, limits["ocr_pages"]))]
            else:
                ocr_images = images[:limits["ocr_pages"]]
            text, source = _ocr_pages(ocr_images, limits)

    return {"type": request["type"], "pages": pages, "codes": codes, "text": text,
            "text_source": source, "fax_number": fax_number, "encrypted": encrypted}


def read_text(request: dict) -> dict:
    """The page count and the first `text_pages` pages' text (the text layer, or OCR of
    the first `ocr_pages` where there is none): the checks of `analyze_file`, without its
    cover-code search and review previews, for callers that need the words only."""
    limits = request["limits"]
    path = Path(request["path"])
    if request["type"] == "pdf":
        with _checked_pdf(path, limits) as doc:
            pages = len(doc)
            layer = [_pdf_text(doc, i) for i in range(min(pages, limits["text_pages"]))]
            if sum(len("".join(t.split())) for t in layer) >= _MIN_TEXT:
                return {"type": "pdf", "pages": pages, "text": layer, "text_source": "layer"}
            ocr_images = [_render_pdf_page(doc, i, limits) for i in range(min(pages, limits["ocr_pages"]))]
    else:
        frames, pages, _ = _tiff_frames(path, limits, lambda i, frame: frame if i < limits["ocr_pages"] else None)
        ocr_images = [_square(frames[i]) for i in range(min(pages, limits["ocr_pages"]))]
    text, source = _ocr_pages(ocr_images, limits)
    return {"type": request["type"], "pages": pages, "text": text, "text_source": source}


def _ocr_pages(images: list, limits: dict) -> tuple[list[str], str]:
    """The pages' OCR text and its source: "ocr", "none" (nothing read) or
    "ocr-unavailable" (no tesseract here)."""
    if shutil.which("tesseract") is None:
        return [], "ocr-unavailable"
    text = [_ocr(img, limits) for img in images]
    return text, "ocr" if any(t.strip() for t in text) else "none"


def _save_preview(image, out: Path, index: int) -> None:
    """preview-<n>.png: page n as a small grayscale thumbnail for the review queue."""
    image = image.convert("L")
    image.thumbnail(_PREVIEW_SIZE)
    image.save(out / f"preview-{index + 1}.png", format="PNG")


def render_previews(request: dict) -> dict:
    """The review thumbnails of the first `preview_pages` pages (preview-<n>.png), with
    the checks of `inspect_file`: for a fax put in review (a matched fax needs none, so
    `analyze_file` makes none)."""
    limits = request["limits"]
    out = Path(request["out"])
    path = Path(request["path"])
    if request["type"] == "pdf":
        with _checked_pdf(path, limits) as doc:
            pages = len(doc)
            for i in range(min(pages, limits["preview_pages"])):
                _save_preview(_render_pdf_page(doc, i, limits, _PREVIEW_SIZE), out, i)
    else:
        def keep(i, frame):
            if i < limits["preview_pages"]:
                _save_preview(_square(frame), out, i)
        _, pages, _ = _tiff_frames(path, limits, keep)
    return {"type": request["type"], "pages": pages, "previews": min(pages, limits["preview_pages"])}


def inspect_file(request: dict) -> dict:
    """The checks of `analyze_file` without rendering, QR codes, text or OCR."""
    limits = request["limits"]
    path = Path(request["path"])
    if request["type"] == "pdf":
        with _checked_pdf(path, limits) as doc:
            count = len(doc)
    else:
        _, count, _ = _tiff_frames(path, limits, lambda i, frame: None)
    return {"type": request["type"], "pages": count}


def _scan_indices(pages: int, limits: dict) -> list[int]:
    """Pages searched for a cover code: the first ones, and the last (a cover sheet sent
    after the records, or a fax scanned in reverse order)."""
    return sorted(set(range(min(pages, limits["scan_pages"]))) | {pages - 1})


def build_file(request: dict) -> dict:
    limits = request["limits"]
    path = Path(request["path"])
    target = Path(request["out"]) / "document.pdf"
    drop = set(request["drop"])
    if request["type"] == "pdf":
        # what is delivered must open: every page, every image
        with _checked_pdf(path, limits) as doc:
            count = len(doc)
            keep = [i for i in range(count) if i not in drop]
            if not keep:
                raise FileRejected("no-pages", "nothing left once the cover sheet is removed")
            if not drop and not _pdf_encrypted(doc):
                shutil.copyfile(path, target)
            else:
                import pypdfium2 as pdfium

                new = pdfium.PdfDocument.new()
                new.import_pages(doc, keep)
                with open(target, "wb") as fh:
                    new.save(fh)
                new.close()
    else:
        import img2pdf

        blobs, count, _ = _tiff_frames(path, limits, lambda i, frame: None if i in drop else _frame_bytes(frame))
        keep = [i for i in range(count) if i not in drop]
        if not keep:
            raise FileRejected("no-pages", "nothing left once the cover sheet is removed")
        if not drop:
            data = img2pdf.convert(str(path), rotation=img2pdf.Rotation.ifvalid)
        else:
            data = img2pdf.convert([blobs[i] for i in keep],
                                   rotation=img2pdf.Rotation.ifvalid)
        target.write_bytes(data)
    return {"path": str(target), "pages": len(keep), "removed": sorted(drop)}


# ---- PDF ----------------------------------------------------------------------------


@contextmanager
def _checked_pdf(path: Path, limits: dict):
    """The PDF opened by PDFium once every check has passed (`_open_pdf`, then every page
    by `_check_pages`); closed on leaving."""
    doc = _open_pdf(path, limits)
    try:
        _check_pages(doc, limits)
        yield doc
    finally:
        doc.close()


def _open_pdf(path: Path, limits: dict):
    import pypdfium2 as pdfium

    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        # mapped, not read: the raw scans copy only what lies between streams
        if b"%%EOF" not in data[-2048:]:
            raise FileRejected("truncated", "PDF has no %%EOF marker at its end")
        depth = _max_nesting(data)
        if depth > limits["max_nesting"]:
            raise FileRejected("too-deep", f"objects nested {depth} levels deep")
        references = reference_chains(data)
    check_pdf(path, limits, references)  # images, inflated streams, loops: before PDFium decodes
    try:
        doc = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        message = str(exc).lower()
        if "password" in message:
            raise FileRejected("encrypted", "PDF needs a password") from None
        raise FileRejected("unreadable", f"PDF does not open: {str(exc)[:120]}") from None
    pages = len(doc)
    if pages == 0:
        doc.close()
        raise FileRejected("no-pages", "PDF has no pages")
    if pages > limits["max_pages"]:
        doc.close()
        raise FileRejected("too-many-pages", f"{pages} pages is over the {limits['max_pages']} limit")
    return doc


def _page(doc, index: int):
    """Page `index` loaded by PDFium, or FileRejected("bad-page") when it cannot be."""
    import pypdfium2 as pdfium

    try:
        return doc[index]
    except (pdfium.PdfiumError, IndexError, ValueError) as exc:
        raise FileRejected("bad-page", f"page {index + 1} does not load: {str(exc)[:80]}") from None


def _draws_images(doc, index: int) -> bool:
    """Whether page `index` draws a raster image (a scan), in Form XObjects too."""
    import pypdfium2 as pdfium

    page = _page(doc, index)
    try:
        return next(iter(page.get_objects(filter=[pdfium.raw.FPDF_PAGEOBJ_IMAGE], max_depth=8)),
                    None) is not None
    except pdfium.PdfiumError:
        return True  # (every page passed _check_pages): despeckled, as before
    finally:
        page.close()


def _check_pages(doc, limits: dict) -> None:
    """Every page loads in PDFium, and the images it draws inline (inside its content
    stream, where pdfcheck cannot see them) are within the per-image limit."""
    import pypdfium2 as pdfium

    for index in range(len(doc)):
        page = _page(doc, index)
        try:
            seen = 0
            for obj in page.get_objects(filter=[pdfium.raw.FPDF_PAGEOBJ_IMAGE], max_depth=8):
                seen += 1
                if seen > 10_000:
                    raise FileRejected("too-complex", f"page {index + 1} draws over 10000 images")
                width, height = obj.get_px_size()
                if width * height > limits["max_image_pixels"]:
                    raise FileRejected("image-too-large",
                                       f"page {index + 1}: image of {width} x {height} pixels "
                                       f"(limit {limits['max_image_pixels']} per image)")
        except pdfium.PdfiumError as exc:
            raise FileRejected("bad-page", f"page {index + 1}: {str(exc)[:80]}") from None
        finally:
            page.close()


_STREAM_RE = re.compile(rb"stream\r?\n.*?endstream", re.S)
_NEST_RE = re.compile(rb"<<|>>|\[|\]")


def _max_nesting(data: bytes) -> int:
    """Deepest nesting of arrays and dictionaries outside streams (a bomb's signature:
    PDFium caps its own recursion and silently drops what lies deeper)."""
    depth = deepest = 0
    for part in _STREAM_RE.split(data):
        for token in _NEST_RE.finditer(part):
            if token.group() in (b"<<", b"["):
                depth += 1
                deepest = max(deepest, depth)
            else:
                depth = max(0, depth - 1)
    return deepest


def _pdf_encrypted(doc) -> bool:
    import pypdfium2.raw as raw

    return raw.FPDF_GetSecurityHandlerRevision(doc.raw) != -1


def _render_pdf_page(doc, index: int, limits: dict, fit: tuple[int, int] | None = None):
    """Page `index` in grayscale at `render_dpi`, or just large enough to fill `fit`."""
    import pypdfium2 as pdfium

    page = _page(doc, index)
    try:
        width, height = page.get_size()
        inches = max(width, height) / 72
        if width <= 0 or height <= 0 or inches > limits["max_page_inches"]:
            raise FileRejected("absurd-size", f"page {index + 1} is {width:.0f} x {height:.0f} pt")
        scale = limits["render_dpi"] / 72
        if fit:
            scale = min(scale, fit[0] / width, fit[1] / height)
        pixels = width * height * scale * scale
        if pixels > limits["max_pixels"]:
            scale *= (limits["max_pixels"] / pixels) ** 0.5
        try:
            return page.render(scale=scale, grayscale=True).to_pil().convert("L")
        except pdfium.PdfiumError as exc:
            raise FileRejected("bad-page", f"page {index + 1} does not render: {str(exc)[:80]}") from None
    finally:
        page.close()


def _pdf_text(doc, index: int) -> str:
    import pypdfium2 as pdfium

    page = _page(doc, index)
    try:
        try:
            textpage = page.get_textpage()
        except pdfium.PdfiumError:
            raise FileRejected("bad-page", f"page {index + 1} has an unreadable text layer") from None
        try:
            return textpage.get_text_bounded()[:20000]
        finally:
            textpage.close()
    finally:
        page.close()


# ---- TIFF ---------------------------------------------------------------------------


def _tiff_frames(path: Path, limits: dict, keep):
    """Decode every frame (so a truncated file fails here) with dimension checks, one at
    a time; `keep(index, frame)` returns what to keep of each (None for nothing).
    Returns ({index: kept}, frame count, fax number from the TIFF description)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = limits["max_pixels"]
    kept = {}
    fax_number = None
    index = 0
    try:
        with Image.open(path) as img:
            description = img.tag_v2.get(270) if hasattr(img, "tag_v2") else None
            fax_number = phone_like(description if isinstance(description, str) else None)
            while True:
                width, height = img.size
                if width * height > limits["max_pixels"] or width <= 0 or height <= 0:
                    raise FileRejected("absurd-size", f"frame {index + 1} is {width} x {height} pixels")
                img.load()
                frame = img.copy()
                frame.info["dpi"] = img.info.get("dpi", (204, 196))
                value = keep(index, frame)
                if value is not None:
                    kept[index] = value
                del frame
                index += 1
                if index > limits["max_pages"]:
                    raise FileRejected("too-many-pages", f"over {limits['max_pages']} frames")
                try:
                    img.seek(index)
                except EOFError:
                    break
    except FileRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise FileRejected("absurd-size", str(exc)[:160]) from None
    except (OSError, ValueError, SyntaxError, IndexError, KeyError, TypeError) as exc:
        raise FileRejected("unreadable", f"TIFF does not decode: {str(exc)[:120]}") from None
    if index == 0:
        raise FileRejected("no-pages", "TIFF has no frames")
    return kept, index, fax_number


def _square(frame):
    """A fax frame resampled to square pixels (standard resolution is 204 x 98 dpi)."""
    from PIL import Image

    xdpi, ydpi = (float(v) for v in frame.info.get("dpi", (204, 196)))
    img = frame.convert("L")
    if xdpi > 0 and ydpi > 0 and abs(xdpi / ydpi - 1) > 0.1:
        img = img.resize((img.width, max(1, round(img.height * xdpi / ydpi))), Image.NEAREST)
    return img


def _frame_bytes(frame) -> bytes:
    """One frame as a lossless single image img2pdf accepts (G4 TIFF for 1-bit, else PNG)."""
    buf = io.BytesIO()
    dpi = tuple(float(v) for v in frame.info.get("dpi", (204, 196)))
    if frame.mode == "1":
        frame.save(buf, format="TIFF", compression="group4", dpi=dpi)
    else:
        frame.save(buf, format="PNG", dpi=dpi)
    return buf.getvalue()


# ---- OCR ----------------------------------------------------------------------------


def _ocr(image, limits: dict) -> str:
    """Tesseract (Debian's tesseract-ocr) on one page image; '' when it gives nothing in time."""
    buf = io.BytesIO()
    image.convert("L").save(buf, format="PNG", dpi=(limits["render_dpi"], limits["render_dpi"]))
    try:
        done = subprocess.run(["tesseract", "stdin", "stdout", "--psm", "3", "-l", "eng"],
                              input=buf.getvalue(), capture_output=True,
                              timeout=limits["ocr_seconds"], check=False)
    except subprocess.TimeoutExpired:
        return ""
    finally:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # kB; counts the fork's copy too
        TESSERACT_PEAK_MB[0] = max(TESSERACT_PEAK_MB[0], round(usage.ru_maxrss / 1024, 1))
    return done.stdout.decode("utf-8", "replace")[:20000]
