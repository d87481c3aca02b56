"""Synthetic faxes made with real tools, for the fax tests and bench/fax_match.py.

PDFs come from reportlab (vector text, with a text layer); fax images come from
rendering those PDFs with pypdfium2 at fax resolution (204x196 "fine" or 204x98
"standard" dpi), rotating them slightly, adding speckle noise and thresholding to 1 bit
(Pillow), saved as CCITT G3/G4 TIFFs or wrapped into PDFs (img2pdf) like a fax server's.
All names and dates here are invented.
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image

#: the cover-code HMAC key of the tests
KEY = b"test-cover-key-0123456789abcdef!"

FAMILY = ["Alvarez", "Brennan", "Chowdhury", "Dubois", "Eriksen", "Fitzgerald", "Gallagher",
          "Haddad", "Ivanova", "Jablonski", "Kowalczyk", "Lindqvist", "Moreau", "Nakamura",
          "Okafor", "Petrovic", "Quintero", "Rasmussen", "Schneider", "Takahashi", "Underwood",
          "Valdivia", "Whitfield", "Xenakis", "Yamamoto", "Zielinski"]
GIVEN = ["Amelia", "Bruno", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hector", "Ingrid",
         "Jonas", "Katya", "Lionel", "Marisol", "Nikolai", "Odile", "Pavel", "Rosalind",
         "Stellan", "Tamsin", "Ulrich", "Vesna", "Wendell", "Yusuf", "Zora"]


@dataclass(frozen=True)
class Person:
    transfer_id: str
    given: str
    family: str
    birth_date: date
    request_id: str

    @property
    def name(self) -> str:
        return f"{self.given} {self.family}"


def people(count: int, seed: int = 1) -> list[Person]:
    """Distinct invented patients, each with a transfer id and request id."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < count:
        given, family = rng.choice(GIVEN), rng.choice(FAMILY)
        if (given, family) in seen:
            continue
        seen.add((given, family))
        n = len(out)
        out.append(Person(
            transfer_id=f"tr-{seed:02d}{n:04d}-{rng.randrange(16**6):06x}",
            given=given, family=family,
            birth_date=date(rng.randrange(1935, 2005), rng.randrange(1, 13), rng.randrange(1, 29)),
            request_id=f"RQ-{rng.randrange(10**6):06d}",
        ))
    return out


def records_pdf(person: Person | None, pages: int = 2, seed: int = 0, mention: bool = True,
                birth_format: str = "%m/%d/%Y") -> bytes:
    """A provider's clinical letter: vector text PDF (has a text layer)."""
    from reportlab.lib.pagesizes import letter
    from reportlab.pdfgen import canvas

    rng = random.Random(seed)
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=letter, invariant=1)
    for n in range(pages):
        c.setFont("Helvetica-Bold", 16)
        c.drawString(72, 720, "Riverside Clinic - Medical Records")
        c.setFont("Helvetica", 13)
        if person and mention:
            c.drawString(72, 690, f"Patient: {person.family}, {person.given}")
            c.drawString(72, 670, f"DOB: {person.birth_date.strftime(birth_format)}")
        y = 630
        for _ in range(14):
            words = rng.choices(["blood", "pressure", "stable", "follow-up", "imaging", "normal",
                                 "reviewed", "history", "plan", "therapy", "noted", "patient"], k=9)
            c.drawString(72, y, " ".join(words).capitalize() + ".")
            y -= 22
        c.drawString(72, 80, f"Page {n + 1} of {pages}")
        c.showPage()
    c.save()
    return buf.getvalue()


def render(pdf_bytes: bytes, dpi: float = 204) -> list[Image.Image]:
    """Every page of a PDF as a grayscale image at `dpi` (square pixels)."""
    doc = pdfium.PdfDocument(pdf_bytes)
    try:
        return [doc[i].render(scale=dpi / 72, grayscale=True).to_pil().convert("L")
                for i in range(len(doc))]
    finally:
        doc.close()


def faxify(page: Image.Image, fine: bool = True, skew: float = 0.0, noise: float = 0.0,
           seed: int = 0, threshold: int = 150) -> Image.Image:
    """What a fax machine does to a page rendered at 204 dpi: vertical resolution 196 or
    98 dpi, a slight rotation, speckle noise, 1-bit. Returns a mode "1" image whose
    pixels are 204 x (196|98) dpi."""
    rng = random.Random(seed)
    img = page.convert("L")
    if skew:
        img = img.rotate(skew, resample=Image.BICUBIC, expand=False, fillcolor=255)
    if not fine:
        img = img.resize((img.width, img.height // 2), Image.BILINEAR)
    img = img.point(lambda v: 255 if v > threshold else 0).convert("1")
    if noise:  # flip a random `noise` fraction of the pixels
        from PIL import ImageChops

        cut = int(256 * noise)
        flips = Image.frombytes("L", img.size, rng.randbytes(img.width * img.height))
        flips = flips.point(lambda v: 255 if v < cut else 0).convert("1")
        img = ImageChops.logical_xor(img, flips)
    return img


def save_tiff(frames: list[Image.Image], path: Path, fine: bool = True,
              compression: str = "group4", description: str | None = None) -> Path:
    """A multi-page CCITT TIFF with fax resolution tags (204 x 196|98 dpi)."""
    extra = {}
    if description is not None:
        extra["tiffinfo"] = {270: description}
    frames[0].save(path, format="TIFF", compression=compression, save_all=True,
                   append_images=frames[1:], dpi=(204, 196 if fine else 98), **extra)
    return path


def tiff_to_pdf(tiff_path: Path, pdf_path: Path) -> Path:
    """Wrap a fax TIFF into a PDF as a fax server does (img2pdf, CCITT data kept as is)."""
    import img2pdf

    pdf_path.write_bytes(img2pdf.convert(str(tiff_path)))
    return pdf_path


def scanned_pdf(pages: list[Image.Image], pdf_path: Path, dpi: int = 200) -> Path:
    """An image-only PDF (no text layer), like a scanner's output."""
    import img2pdf

    blobs = []
    for img in pages:
        buf = io.BytesIO()
        img.convert("L").save(buf, format="PNG", dpi=(dpi, dpi))
        blobs.append(buf.getvalue())
    pdf_path.write_bytes(img2pdf.convert(blobs))
    return pdf_path


def blot(page: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """Black out a region given as fractions of the page (ruins a QR code)."""
    from PIL import ImageDraw

    img = page.copy()
    w, h = img.size
    ImageDraw.Draw(img).rectangle((box[0] * w, box[1] * h, box[2] * w, box[3] * h), fill=0)
    return img


def cover_pdf(person: Person, key: bytes = KEY) -> bytes:
    """The gateway's cover sheet for this person's transfer."""
    from connectors.fax.cover import CoverSheet, render_cover_pdf

    return render_cover_pdf(CoverSheet(person.transfer_id, person.name, person.birth_date,
                                       person.request_id, "+1 555 0100", "Second Opinion Center"), key)
