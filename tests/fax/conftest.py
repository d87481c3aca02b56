"""Fixtures for the fax connector tests: real files from real tools, made once a session."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from connectors.fax.match import TransferDescriptor

from . import faxgen
from .faxgen import KEY, cover_pdf


@dataclass(frozen=True)
class Sample:
    """One generated fax file and what the connector should make of it."""

    name: str
    path: Path
    transfer_id: str | None  # expected match, None when it must go to review
    method: str  # "qr", "text", "sidecar" or "review"
    pages: int  # delivered page count


@pytest.fixture(scope="session")
def key() -> bytes:
    return KEY


@pytest.fixture(scope="session")
def people():
    return faxgen.people(6, seed=7)


@pytest.fixture(scope="session")
def descriptors(people):
    """Open transfers: all but the last person (whose transfer is closed)."""
    return [TransferDescriptor(p.transfer_id, p.name, p.birth_date, p.request_id, "+1 555 0100")
            for p in people[:-1]]


@pytest.fixture(scope="session")
def samples(tmp_path_factory, people):
    """A small set of faxes covering every route: qr (TIFF fine/standard, fax-server
    PDF), text layer, OCR, forged code, closed transfer, unknown patient."""
    base = tmp_path_factory.mktemp("fax-samples")
    out: dict[str, Sample] = {}
    a, b, c, d, e, closed = people

    pages = faxgen.render(cover_pdf(a), 204) + faxgen.render(faxgen.records_pdf(a, 2, seed=1), 204)
    frames = [faxgen.faxify(p, fine=True, skew=1.2, noise=0.01, seed=i) for i, p in enumerate(pages)]
    out["qr_fine_g4"] = Sample("qr_fine_g4", faxgen.save_tiff(frames, base / "a.tif", True, "group4",
                                                              "+1 555 123 4567"), a.transfer_id, "qr", 2)

    pages = faxgen.render(cover_pdf(b), 204) + faxgen.render(faxgen.records_pdf(b, 1, seed=2), 204)
    frames = [faxgen.faxify(p, fine=False, skew=-2.5, noise=0.03, seed=10 + i) for i, p in enumerate(pages)]
    tif = faxgen.save_tiff(frames, base / "b-std.tif", False, "group3")
    out["qr_standard_g3"] = Sample("qr_standard_g3", tif, b.transfer_id, "qr", 1)
    out["qr_pdf"] = Sample("qr_pdf", faxgen.tiff_to_pdf(tif, base / "b-std.pdf"), b.transfer_id, "qr", 1)

    path = base / "c-letter.pdf"
    path.write_bytes(faxgen.records_pdf(c, 3, seed=3))
    out["text_layer"] = Sample("text_layer", path, c.transfer_id, "text", 3)

    scans = [faxgen.faxify(p, fine=True, noise=0.002, seed=20).convert("L")
             for p in faxgen.render(faxgen.records_pdf(d, 1, seed=4, birth_format="%B %d, %Y"), 300)]
    out["ocr"] = Sample("ocr", faxgen.scanned_pdf(scans, base / "d-scan.pdf", dpi=300), d.transfer_id, "text", 1)

    pages = faxgen.render(cover_pdf(e, key=b"someone-else-key-0123456789abcd"), 204) \
        + faxgen.render(faxgen.records_pdf(None, 1, seed=5), 204)
    frames = [faxgen.faxify(p, seed=30 + i) for i, p in enumerate(pages)]
    out["forged"] = Sample("forged", faxgen.save_tiff(frames, base / "e-forged.tif"), None, "review", 2)

    pages = faxgen.render(cover_pdf(closed), 204) + faxgen.render(faxgen.records_pdf(None, 1, seed=6), 204)
    frames = [faxgen.faxify(p, seed=40 + i) for i, p in enumerate(pages)]
    out["closed"] = Sample("closed", faxgen.save_tiff(frames, base / "f-closed.tif"), None, "review", 2)

    path = base / "g-unknown.pdf"
    path.write_bytes(faxgen.records_pdf(None, 1, seed=7))
    out["unknown"] = Sample("unknown", path, None, "review", 1)
    return out
