"""Hostile and broken files for the fax tests: each made on the spot, small on disk."""
from __future__ import annotations

import io
import zlib
from pathlib import Path


def _pdf(objects: list[bytes]) -> bytes:
    """A minimal PDF from numbered object bodies (1-based), with a correct xref table."""
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % n + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def _page_pdf(content: bytes, filters: bytes = b"", resources: bytes = b"<< >>",
              media: bytes = b"[0 0 612 792]", raw_length: int | None = None) -> bytes:
    length = raw_length if raw_length is not None else len(content)
    return _pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox " + media + b" /Resources " + resources
        + b" /Contents 4 0 R >>",
        b"<< /Length %d " % length + filters + b">>\nstream\n" + content + b"\nendstream",
    ])


def deep_nesting_pdf(depth: int = 200_000) -> bytes:
    """Resources nested `depth` arrays deep: recursive parsers overflow their stack."""
    nested = b"[" * depth + b"]" * depth
    return _page_pdf(b"BT ET", resources=b"<< /Deep " + nested + b" >>")


def zip_bomb_pdf(inflated_mb: int = 4096) -> bytes:
    """A content stream of a few MB that inflates to `inflated_mb` MB of spaces."""
    compressor = zlib.compressobj(9)
    chunk = b" " * (1 << 20)
    parts = [compressor.compress(chunk) for _ in range(inflated_mb)]
    parts.append(compressor.flush())
    return _page_pdf(b"".join(parts), filters=b"/Filter /FlateDecode ")


def huge_page_pdf() -> bytes:
    """One page 14,400 inches wide: rendering it at fax resolution would need terabytes."""
    return _page_pdf(b"0 0 m 10 10 l S", media=b"[0 0 1036800 1036800]")


def truncated_pdf(good: bytes) -> bytes:
    return good[: len(good) * 2 // 3]


def encrypted_pdf(good: bytes, password: str = "secret") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(good)))
    writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def absurd_tiff(path: Path, width: int = 200_000, height: int = 200_000) -> Path:
    """A real 1-bit TIFF whose header claims `width` x `height` (40 Gpx): the header is
    written by Pillow for a small image and its dimensions patched."""
    from PIL import Image

    small = Image.new("1", (16, 16), 1)
    buf = io.BytesIO()
    small.save(buf, format="TIFF", compression="group4")
    data = bytearray(buf.getvalue())
    # patch ImageWidth (256) and ImageLength (257) entries of the first IFD
    ifd = int.from_bytes(data[4:8], "little")
    count = int.from_bytes(data[ifd:ifd + 2], "little")
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag = int.from_bytes(data[entry:entry + 2], "little")
        typ = int.from_bytes(data[entry + 2:entry + 4], "little")
        if tag in (256, 257):
            value = width if tag == 256 else height
            if typ == 3:  # SHORT: switch to LONG to hold the value
                data[entry + 2:entry + 4] = (4).to_bytes(2, "little")
            data[entry + 8:entry + 12] = value.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


def truncated_tiff(good: Path, path: Path) -> Path:
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
