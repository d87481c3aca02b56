"""Cover sheets: the code survives a fax and a forged or altered code is told apart."""
from __future__ import annotations

from datetime import date

import pytest

from . import faxgen
from .faxgen import KEY, cover_pdf
from connectors.fax.cover import (CoverError, CoverSheet, cover_payload, decode_cover, decode_payloads,
                                  parse_cover_payload, render_cover_pdf)


def test_payload_round_trip_and_hmac():
    payload = cover_payload("tr-123", KEY)
    code = parse_cover_payload(payload, KEY)
    assert code.transfer_id == "tr-123" and code.valid
    assert not parse_cover_payload(payload, b"another-key-of-sufficient-size!!").valid
    forged = payload.replace("tr-123", "tr-124")
    assert parse_cover_payload(forged, KEY).valid is False
    assert parse_cover_payload("https://example.org/not-ours", KEY) is None


@pytest.mark.parametrize("bad", ["", "../etc", "a b", "x" * 65, "tr\n1"])
def test_bad_transfer_ids_and_short_keys_are_refused(bad):
    with pytest.raises(CoverError):
        cover_payload(bad, KEY)
    with pytest.raises(CoverError):
        cover_payload("tr-1", b"short")


def test_cover_pdf_prints_the_request_for_people():
    from pypdf import PdfReader
    import io

    sheet = CoverSheet("tr-9", "Clara Moreau", date(1970, 3, 5), "RQ-000042", "+1 555 0100", "SOC")
    reader = PdfReader(io.BytesIO(render_cover_pdf(sheet, KEY)))
    text = reader.pages[0].extract_text()
    assert len(reader.pages) == 1
    for value in ("Clara Moreau", "1970-03-05", "RQ-000042", "+1 555 0100", "RECORDS REQUEST COVER SHEET"):
        assert value in text


@pytest.mark.parametrize("fine,skew,noise", [(True, 0, 0), (True, 2.0, 0.02), (False, -3.0, 0.03),
                                             (False, 4.0, 0.01)])
def test_code_decodes_after_a_fax(people, fine, skew, noise):
    person = people[0]
    page = faxgen.render(cover_pdf(person), 204)[0]
    fax = faxgen.faxify(page, fine=fine, skew=skew, noise=noise, seed=5)
    if not fine:  # a standard-resolution fax has 2:1 pixels; the connector squares them
        fax = fax.convert("L").resize((fax.width, fax.height * 2))
    code = decode_cover(fax, KEY)
    assert code is not None and code.valid and code.transfer_id == person.transfer_id


def test_code_with_another_key_is_found_but_invalid(people):
    page = faxgen.render(cover_pdf(people[0], key=b"attacker-key-0123456789abcdefgh"), 204)[0]
    code = decode_cover(faxgen.faxify(page, seed=1), KEY)
    assert code is not None and code.valid is False


def test_page_without_code(people):
    page = faxgen.render(faxgen.records_pdf(people[0], 1), 204)[0]
    assert decode_cover(faxgen.faxify(page), KEY) is None


@pytest.mark.parametrize("transfer_id", ["0123456789abcdef0123456789abcdef", "T" * 64])
def test_code_of_a_long_transfer_id_is_clear_of_the_text(transfer_id):
    """The gateway's transfer ids are 32 hex characters; the printed id must not run over
    the code (it once did, and the code no longer decoded)."""
    import pypdfium2 as pdfium

    pdf = render_cover_pdf(CoverSheet(transfer_id, "Avery Maximilian Testperson-Longname",
                                      date(1970, 1, 1), "R-0123456789", "+1 555 0100"), KEY)
    page = pdfium.PdfDocument(pdf)[0]
    image = page.render(scale=200 / 72, grayscale=True).to_pil()
    code = decode_cover(image, KEY)
    assert code is not None and code.valid and code.transfer_id == transfer_id


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (2, 2), (37, 53), (400, 311)])
def test_the_despeckle_median_is_pil_s_median_filter(shape):
    import numpy as np
    from PIL import Image, ImageFilter

    from connectors.fax.cover import median3

    rng = np.random.default_rng(sum(shape))
    for pixels in (rng.integers(0, 256, shape, dtype=np.uint8),  # gray
                   np.where(rng.random(shape) < 0.85, 255, 0).astype(np.uint8)):  # speckled 1-bit
        expected = np.asarray(Image.fromarray(pixels).filter(ImageFilter.MedianFilter(3)))
        got = median3(pixels)
        assert got.shape == pixels.shape and got.dtype == np.uint8
        assert np.array_equal(got, expected)


def test_a_scanned_page_is_despeckled_and_a_drawn_one_need_not_be(tmp_path):
    """The despeckled attempts run on pages that draw a scan (every TIFF frame; a PDF page
    with a raster image): this noisy fax's code is found only by them, in a PDF too. A
    page drawn from vector content alone has no speckles and skips them."""
    import pypdfium2 as pdfium

    from connectors.fax.pages import _draws_images
    from connectors.fax.sandbox import analyze

    person = faxgen.people(1)[0]  # (this page and noise: only the despeckled attempts decode it)
    noisy = faxgen.faxify(faxgen.render(cover_pdf(person), 204)[0], noise=0.25, seed=1)
    assert decode_payloads(noisy, despeckle=False) == []
    assert [parse_cover_payload(t, KEY).transfer_id for t in decode_payloads(noisy)] == [person.transfer_id]

    scanned = faxgen.scanned_pdf([noisy], tmp_path / "scanned.pdf", dpi=204)
    drawn = tmp_path / "drawn.pdf"
    drawn.write_bytes(faxgen.records_pdf(person, 1))
    assert [_draws_images(pdfium.PdfDocument(str(p)), 0) for p in (scanned, drawn)] == [True, False]
    (tmp_path / "out").mkdir()
    codes = analyze(scanned, tmp_path / "out").codes
    assert [parse_cover_payload(c["text"], KEY).transfer_id for c in codes] == [person.transfer_id]
