"""Hostile and broken files are refused with a reason, inside limits, without harm."""
from __future__ import annotations

import shutil
import zlib

import pytest

from connectors.fax.sandbox import FileRejected, Limits, analyze, build, read_text

from . import faxgen, hostile


@pytest.fixture(scope="module")
def good_pdf(people) -> bytes:
    return faxgen.records_pdf(people[0], 2)


def reject(path, tmp_path, limits=Limits()):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    with pytest.raises(FileRejected) as info:
        analyze(path, out, limits)
    return info.value.reason


def test_zero_byte_and_unknown_files(tmp_path):
    (tmp_path / "empty.pdf").write_bytes(b"")
    (tmp_path / "note.txt").write_bytes(b"hello, not a fax")
    assert reject(tmp_path / "empty.pdf", tmp_path) == "empty"
    assert reject(tmp_path / "note.txt", tmp_path) == "unsupported"


def test_truncated_and_encrypted_pdfs(tmp_path, good_pdf):
    (tmp_path / "t.pdf").write_bytes(hostile.truncated_pdf(good_pdf))
    (tmp_path / "e.pdf").write_bytes(hostile.encrypted_pdf(good_pdf))
    assert reject(tmp_path / "t.pdf", tmp_path) == "truncated"
    assert reject(tmp_path / "e.pdf", tmp_path) == "encrypted"


def test_pdf_with_empty_user_password_is_delivered_decrypted(tmp_path, good_pdf):
    from pypdf import PdfReader

    (tmp_path / "e.pdf").write_bytes(hostile.encrypted_pdf(good_pdf, ""))
    analysis = analyze(tmp_path / "e.pdf", tmp_path)
    assert analysis.encrypted and analysis.pages == 2 and analysis.text_source == "layer"
    built = build(tmp_path / "e.pdf", tmp_path, [])
    reader = PdfReader(built.path)
    assert not reader.is_encrypted and len(reader.pages) == 2


def test_pdf_bombs(tmp_path, good_pdf):
    (tmp_path / "deep.pdf").write_bytes(hostile.deep_nesting_pdf())
    (tmp_path / "huge-page.pdf").write_bytes(hostile.huge_page_pdf())
    (tmp_path / "zip.pdf").write_bytes(hostile.zip_bomb_pdf(inflated_mb=1024))
    assert reject(tmp_path / "deep.pdf", tmp_path) == "too-deep"
    assert reject(tmp_path / "huge-page.pdf", tmp_path) == "absurd-size"
    # 1 MB on disk, 1 GB inflated: measured with a bound and refused before PDFium inflates it
    assert reject(tmp_path / "zip.pdf", tmp_path) == "stream-too-large"
    # and were that check off, the child hits its address-space limit, not the worker
    assert reject(tmp_path / "zip.pdf", tmp_path, Limits(memory_mb=512, max_stream_mb=4096)) == "memory-limit"
    (tmp_path / "good.pdf").write_bytes(good_pdf)  # while an ordinary fax fits in that limit
    assert analyze(tmp_path / "good.pdf", tmp_path / "out", Limits(memory_mb=512)).pages == 2


def test_read_text_gives_the_words_of_analyze_without_codes_or_previews(tmp_path, good_pdf, samples):
    """A text PDF: the pages and text layer `analyze` reads. A fax TIFF with a cover code:
    OCR (which `analyze` skips once it found the code). Nothing written, bombs refused."""
    (tmp_path / "good.pdf").write_bytes(good_pdf)
    limits = Limits(text_pages=2, ocr_pages=2)
    (tmp_path / "a").mkdir()
    (tmp_path / "t").mkdir()
    full = analyze(tmp_path / "good.pdf", tmp_path / "a", limits)
    words = read_text(tmp_path / "good.pdf", tmp_path / "t", limits)
    assert (words.pages, words.text, words.text_source) == (full.pages, full.text, "layer")
    assert words.codes == [] and not list((tmp_path / "t").iterdir())  # no previews
    scan = read_text(samples["qr_fine_g4"].path, tmp_path / "t", limits)
    assert scan.pages == 3 and scan.codes == []
    if shutil.which("tesseract"):
        assert scan.text_source == "ocr" and len(scan.text) == 2 and scan.text[1].strip()
    (tmp_path / "t.pdf").write_bytes(hostile.truncated_pdf(good_pdf))
    with pytest.raises(FileRejected) as info:
        read_text(tmp_path / "t.pdf", tmp_path / "t")
    assert info.value.reason == "truncated"


def test_slow_file_hits_the_wall_clock_limit(tmp_path):
    """200,000 strokes take PDFium over 10 s to render; a normal fax takes well under 1 s."""
    strokes = b"".join(b"%d %d m %d %d l S\n" % (i % 600, i % 700, (i * 7) % 600, (i * 3) % 700)
                       for i in range(200_000))
    pdf = hostile._page_pdf(zlib.compress(strokes), filters=b"/Filter /FlateDecode ")
    (tmp_path / "slow.pdf").write_bytes(pdf)
    assert reject(tmp_path / "slow.pdf", tmp_path, Limits(wall_seconds=3)) == "time-limit"


def test_absurd_and_truncated_tiffs(tmp_path, samples):
    hostile.absurd_tiff(tmp_path / "absurd.tif")
    hostile.truncated_tiff(samples["qr_fine_g4"].path, tmp_path / "half.tif")
    assert reject(tmp_path / "absurd.tif", tmp_path) == "absurd-size"
    assert reject(tmp_path / "half.tif", tmp_path) == "unreadable"


def test_tiff_becomes_pdf_losslessly(tmp_path, samples):
    """img2pdf embeds the CCITT data as is: the PDF's page images equal the TIFF frames."""
    import pypdfium2 as pdfium
    from PIL import Image, ImageChops

    tif = samples["qr_fine_g4"].path
    built = build(tif, tmp_path, [])
    doc = pdfium.PdfDocument(built.path)
    with Image.open(tif) as img:
        for index in range(built.pages):
            img.seek(index)
            objects = list(doc[index].get_objects(filter=[pdfium.raw.FPDF_PAGEOBJ_IMAGE]))
            extracted = objects[0].get_bitmap().to_pil().convert("1")
            assert extracted.size == img.size
            assert ImageChops.difference(extracted.convert("L"), img.convert("L")).getbbox() is None
    doc.close()
    assert built.pages == 3
