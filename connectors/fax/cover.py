"""Records-request cover sheets: make them (PDF with a QR code) and read them back.

The provider faxes the cover sheet back in front of the records. Its QR code carries
the transfer id and a truncated HMAC-SHA256 over it, so a forged or damaged code is
told apart from a real one; the human-readable part (patient name, birth date, request
id, return fax number) lets a person, or the text matcher, route the fax when the code
did not survive.

Payload: ``RGW1.<transfer id>.<base64url(HMAC-SHA256(key, "RGW1." + transfer id))[:16]>``
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import io
import re
from dataclasses import dataclass
from datetime import date

PREFIX = "RGW1"
#: printed on every cover sheet; the text matcher uses it to spot cover pages
COVER_TITLE = "RECORDS REQUEST COVER SHEET"
_MAC_CHARS = 16  # 96 bits of HMAC, base64url
TRANSFER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_PAYLOAD_RE = re.compile(rf"^{PREFIX}\.([A-Za-z0-9][A-Za-z0-9_-]{{0,63}})\.([A-Za-z0-9_-]{{{_MAC_CHARS}}})$")
_MIN_KEY = 16


class CoverError(ValueError):
    """A cover sheet cannot be made from these values (bad transfer id, short key)."""


@dataclass(frozen=True)
class CoverSheet:
    """What a cover sheet says. `transfer_id` goes into the code; the rest is printed."""

    transfer_id: str
    patient_name: str
    birth_date: date | None
    request_id: str
    return_fax: str
    requester: str = ""  # who asks (the second-opinion center), printed on top
    note: str = ""


@dataclass(frozen=True)
class CoverCode:
    """A code found on a page. `valid` is False when it looks like ours but its HMAC is wrong."""

    transfer_id: str
    valid: bool
    payload: str


def check_key(key: bytes) -> None:
    """Raise CoverError unless `key` can serve as the cover-code HMAC key."""
    if not isinstance(key, (bytes, bytearray)) or len(key) < _MIN_KEY:
        raise CoverError(f"cover sheet HMAC key must be at least {_MIN_KEY} bytes")


def _mac(key: bytes, transfer_id: str) -> str:
    digest = hmac.new(bytes(key), f"{PREFIX}.{transfer_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode()[:_MAC_CHARS]


def cover_payload(transfer_id: str, key: bytes) -> str:
    """The text the QR code carries for `transfer_id`."""
    check_key(key)
    if not TRANSFER_ID_RE.match(transfer_id or ""):
        raise CoverError("transfer id must be 1-64 letters, digits, '-' or '_'")
    return f"{PREFIX}.{transfer_id}.{_mac(key, transfer_id)}"


def parse_cover_payload(text: str, key: bytes) -> CoverCode | None:
    """Verify one decoded QR text. None when it is not one of our codes at all."""
    check_key(key)
    match = _PAYLOAD_RE.match((text or "").strip())
    if not match:
        return None
    transfer_id, mac = match.groups()
    return CoverCode(transfer_id, hmac.compare_digest(mac, _mac(key, transfer_id)), text.strip())


def looks_like_cover_payload(text: str) -> bool:
    """True for texts in our payload format, whatever their HMAC (no key needed)."""
    return bool(_PAYLOAD_RE.match((text or "").strip()))


def decode_payloads(page_image, despeckle: bool = True) -> list[str]:
    """Every QR text zxing-cpp finds on a page image (PIL image), trying harder on faxes.

    Fax pages are 1-bit, noisy, slightly rotated and often non-square pixels (the caller
    resamples those to square first). We try the image as is, then a despeckled and a
    downscaled copy, which recover codes the first pass misses. Not `despeckle`: the page
    was drawn from vector content alone (no scan in it), so it has no speckles to remove.
    """
    import numpy as np
    import zxingcpp
    from PIL import Image

    gray = np.asarray(page_image.convert("L"))  # one array each attempt: zxing reads it as is
    found: list[str] = []
    cleaned: list = []

    def despeckled():
        if not cleaned:
            cleaned.append(median3(gray))
        return cleaned[0]

    def halved(pixels):
        return np.asarray(Image.fromarray(pixels).reduce(2))

    attempts = ((lambda: gray, despeckled, lambda: halved(gray), lambda: halved(despeckled()))
                if despeckle else (lambda: gray, lambda: halved(gray)))
    for attempt in attempts:
        image = attempt()
        for binarizer in (zxingcpp.Binarizer.LocalAverage, zxingcpp.Binarizer.GlobalHistogram):
            results = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode,
                                             binarizer=binarizer)
            for text in (r.text for r in results if r.valid and r.text):
                if text not in found:
                    found.append(text)
            if any(looks_like_cover_payload(t) for t in found):
                return found
    return found


def median3(pixels):
    """The 3x3 median of a 2-D uint8 array, edges replicated: the same values as PIL's
    MedianFilter(3), in a sixth of its time (a full page: 14 ms, not 70-100 ms). Each
    column of three is sorted once (low <= middle <= high) for its three windows; a
    window's median is then the median of the largest low, the median middle and the
    smallest high of its three columns."""
    import numpy as np

    padded = np.pad(pixels, 1, mode="edge")
    h, w = pixels.shape
    a, b, c = padded[0:h], padded[1:h + 1], padded[2:h + 2]
    low, high = np.minimum(a, b), np.maximum(a, b)
    mid, high = np.minimum(high, c), np.maximum(high, c)
    low, mid = np.minimum(low, mid), np.maximum(low, mid)
    lows = np.maximum(np.maximum(low[:, 0:w], low[:, 1:w + 1]), low[:, 2:w + 2])
    highs = np.minimum(np.minimum(high[:, 0:w], high[:, 1:w + 1]), high[:, 2:w + 2])
    return np.ascontiguousarray(_median_of_3(
        lows, _median_of_3(mid[:, 0:w], mid[:, 1:w + 1], mid[:, 2:w + 2]), highs))


def _median_of_3(a, b, c):
    import numpy as np

    return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))


def decode_cover(page_image, key: bytes) -> CoverCode | None:
    """Find and verify our cover code on one page image. None when there is none.

    When the page holds a code with a bad HMAC and no valid one, that invalid code is
    returned (`valid=False`) so the caller can say so rather than guess.
    """
    codes = [c for c in (parse_cover_payload(t, key) for t in decode_payloads(page_image)) if c]
    for code in codes:
        if code.valid:
            return code
    return codes[0] if codes else None


def render_cover_pdf(sheet: CoverSheet, key: bytes) -> bytes:
    """The cover sheet as a one-page US Letter PDF (reportlab, QR code at error level Q)."""
    from reportlab.lib.pagesizes import letter
    from reportlab.pdfgen import canvas

    payload = cover_payload(sheet.transfer_id, key)
    buf = io.BytesIO()
    page = canvas.Canvas(buf, pagesize=letter, pageCompression=1, invariant=1)
    page.setTitle("Records request cover sheet")
    _draw_cover(page, sheet, payload)
    page.save()
    return buf.getvalue()


def render_request_pdf(sheet: CoverSheet, key: bytes, reminder: int = 0) -> bytes:
    """A records request to fax to a provider: a letter page (a reminder when
    `reminder` > 0), then a fresh cover sheet for the reply."""
    from reportlab.lib.pagesizes import letter
    from reportlab.lib.units import inch
    from reportlab.pdfgen import canvas

    payload = cover_payload(sheet.transfer_id, key)
    buf = io.BytesIO()
    page = canvas.Canvas(buf, pagesize=letter, pageCompression=1, invariant=1)
    page.setTitle("Records request")
    top = letter[1] - 1.0 * inch
    page.setFont("Helvetica-Bold", 18)
    page.drawString(1.0 * inch, top, "REQUEST FOR MEDICAL RECORDS"
                    + (f" - REMINDER {reminder}" if reminder else ""))
    page.setFont("Helvetica", 11)
    body = [
        f"From: {sheet.requester}" if sheet.requester else "",
        "",
        f"We request the medical records of {sheet.patient_name}"
        + (f", born {sheet.birth_date.isoformat()}," if sheet.birth_date else "")
        + " under the patient's signed",
        "release authorization (HIPAA 45 CFR 164.508), which accompanies this request.",
        "",
        f"Please fax the records to {sheet.return_fax or 'the number on the cover sheet'},"
        " with the enclosed cover sheet",
        f"as the FIRST page. Quote request {sheet.request_id} in any correspondence.",
        "",
        "If you hold no records for this patient, please fax the cover sheet back with a",
        "note saying so, so that we stop asking.",
    ]
    if reminder:
        body[1:1] = ["", f"We have not yet received these records. This is reminder {reminder}."]
    y = top - 0.6 * inch
    for line in body:
        page.drawString(1.0 * inch, y, line)
        y -= 0.25 * inch
    page.showPage()
    _draw_cover(page, sheet, payload)
    page.save()
    return buf.getvalue()


def _draw_cover(page, sheet: CoverSheet, payload: str) -> None:
    from reportlab.graphics import renderPDF
    from reportlab.graphics.barcode.qr import QrCodeWidget
    from reportlab.graphics.shapes import Drawing
    from reportlab.lib.pagesizes import letter
    from reportlab.lib.units import inch

    width, height = letter
    top = height - 1.0 * inch
    page.setFont("Helvetica-Bold", 20)
    page.drawString(1.0 * inch, top, COVER_TITLE)
    page.setFont("Helvetica", 11)
    page.drawString(1.0 * inch, top - 0.35 * inch,
                    "Please fax this page FIRST, followed by the requested records.")
    if sheet.requester:
        page.drawString(1.0 * inch, top - 0.6 * inch, f"Requested by: {sheet.requester}")

    lines = [
        ("Patient", sheet.patient_name),
        ("Date of birth", sheet.birth_date.isoformat() if sheet.birth_date else "unknown"),
        ("Request ID", sheet.request_id),
        ("Return fax", sheet.return_fax),
        ("Transfer", sheet.transfer_id),
    ]
    y = top - 1.3 * inch
    for label, value in lines:
        page.setFont("Helvetica", 12)
        page.drawString(1.0 * inch, y, f"{label}:")
        page.setFont("Helvetica-Bold", 14)
        page.drawString(2.4 * inch, y, value)
        y -= 0.45 * inch

    # the code goes below the text, clear of it whatever the length of the values
    size = 2.6 * inch
    widget = QrCodeWidget(payload, barLevel="Q", barBorder=4)
    x0, y0, x1, y1 = widget.getBounds()
    drawing = Drawing(size, size, transform=[size / (x1 - x0), 0, 0, size / (y1 - y0), 0, 0])
    drawing.add(widget)
    y -= size
    renderPDF.draw(drawing, page, 1.0 * inch, y)
    y -= 0.2 * inch
    if sheet.note:
        page.setFont("Helvetica", 10)
        page.drawString(1.0 * inch, y - 0.2 * inch, sheet.note[:120])
    page.setFont("Helvetica", 9)
    page.drawString(1.0 * inch, 0.8 * inch,
                    "The code above identifies this request. Do not alter or copy it to other requests.")
    page.showPage()
