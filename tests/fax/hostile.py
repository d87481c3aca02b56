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


def _zeros_deflate(size: int) -> bytes:
    """A zlib stream of `size` zero bytes (a multiple of 1 MiB) in about size/1000 bytes,
    made in milliseconds: one fully flushed 1 MiB block repeated, then the trailer."""
    mib = 1 << 20
    assert size % mib == 0
    comp = zlib.compressobj(9)
    first = comp.compress(b"\0" * mib) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(b"\0" * mib) + comp.flush(zlib.Z_FULL_FLUSH)
    adler = ((size % 65521) << 16) | 1  # adler32 of zeros: a stays 1, b counts the bytes
    return first + block * (size // mib - 1) + b"\x03\x00" + adler.to_bytes(4, "big")


def _image_page_pdf(images: list[bytes], content: bytes | None = None) -> bytes:
    """One letter page drawing each image XObject (given as `<< dict >>\\nstream...`)."""
    names = b" ".join(b"/Im%d %d 0 R" % (i, 5 + i) for i in range(len(images)))
    draw = content or b" ".join(b"q 100 0 0 100 %d 100 cm /Im%d Do Q" % (100 * i, i)
                                for i in range(len(images)))
    return _pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /XObject << "
        + names + b" >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(draw) + draw + b"\nendstream",
        *images,
    ])


def _gray_image(width: int, height: int, data: bytes, filters: bytes = b"/Filter /FlateDecode ") -> bytes:
    return (b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /BitsPerComponent 8 "
            b"/ColorSpace /DeviceGray " % (width, height) + filters
            + b"/Length %d >>\nstream\n" % len(data) + data + b"\nendstream")


def image_bomb_pdf(side: int = 32768) -> bytes:
    """About 1 MB on disk: one `side` x `side` 8-bit image (1 GiB for 32768) of zeros."""
    return _image_page_pdf([_gray_image(side, side, _zeros_deflate(side * side))])


def many_images_pdf(count: int = 3, side: int = 6000) -> bytes:
    """`count` distinct images, each within the per-image limit, together over the page's."""
    return _image_page_pdf([_gray_image(side, side, zlib.compress(bytes([i]) * side * side, 9))
                            for i in range(count)])


def lying_jpeg_pdf(width: int = 40000, height: int = 40000) -> bytes:
    """A DCT image whose dictionary says 64 x 64 but whose JPEG frame header says
    `width` x `height`: the decoder believes the JPEG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (64, 64), 128).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return _image_page_pdf([_gray_image(64, 64, bytes(data), b"/Filter /DCTDecode ")])


def inline_image_bomb_pdf(side: int = 40000) -> bytes:
    """An inline image (inside the content stream) claiming `side` x `side` pixels."""
    content = (b"q 500 0 0 500 50 50 cm BI /W %d /H %d /BPC 8 /CS /G /F /Fl ID\n" % (side, side)
               + zlib.compress(b"\0" * 4096) + b"\nEI Q")
    return _pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    ])


def reference_loop_pdf() -> bytes:
    """A page whose MediaBox, Resources and content Length are references that resolve to
    themselves ("5 0 obj 5 0 R endobj")."""
    content = b"BT /F1 12 Tf 72 700 Td (loop) Tj ET"
    return _pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox 5 0 R /Resources 6 0 R /Contents 4 0 R >>",
        b"<< /Length 7 0 R >>\nstream\n" + content + b"\nendstream",
        b"6 0 R", b"5 0 R", b"7 0 R",  # 5 -> 6 -> 5, 7 -> 7
    ])


def form_loop_pdf() -> bytes:
    """A Form XObject whose resources name itself and whose content draws itself."""
    form = b"/Fm0 Do"
    return _pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /XObject << /Fm0 5 0 R >> >> "
        b"/Contents 4 0 R >>",
        b"<< /Length 7 >>\nstream\n/Fm0 Do\nendstream",
        b"<< /Type /XObject /Subtype /Form /BBox [0 0 10 10] /Resources << /XObject << /Fm0 5 0 R >> >> "
        b"/Length %d >>\nstream\n" % len(form) + form + b"\nendstream",
    ])


def bad_page_pdf() -> bytes:
    """Two pages counted, the second of which is a font dictionary: PDFium cannot load it."""
    return _pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R 5 0 R] /Count 2 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length 5 >>\nstream\nBT ET\nendstream",
        b"<< /Type /Font >>",
    ])


def compressed_reference_loop_pdf() -> bytes:
    """As reference_loop_pdf, with the looping objects inside an object stream (PDF 1.5),
    where a scan of the raw file cannot see them; a cross-reference stream finds them."""
    bodies = [b"6 0 R", b"5 0 R"]  # objects 5 and 6
    offsets, body = [], b""
    for item in bodies:
        offsets.append(len(body))
        body += item + b"\n"
    header = b" ".join(b"%d %d" % (5 + i, off) for i, off in enumerate(offsets)) + b"\n"
    objstm = zlib.compress(header + body)
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    plain = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        3: b"<< /Type /Page /Parent 2 0 R /MediaBox 5 0 R /Resources 6 0 R /Contents 4 0 R >>",
        4: b"<< /Length 5 >>\nstream\nBT ET\nendstream",
        7: b"<< /Type /ObjStm /N 2 /First %d /Filter /FlateDecode /Length %d >>\nstream\n"
           % (len(header), len(objstm)) + objstm + b"\nendstream",
    }
    offs = {}
    for n, obj in plain.items():
        offs[n] = out.tell()
        out.write(b"%d 0 obj\n" % n + obj + b"\nendobj\n")
    xref_at = out.tell()
    rows = [b"\x00\x00\x00\x00\xff\xff"]  # type, offset (4), generation / index (1)
    for n in range(1, 9):
        if n in (5, 6):
            rows.append(b"\x02" + (7).to_bytes(4, "big") + bytes([n - 5]))
        elif n == 8:
            rows.append(b"\x01" + xref_at.to_bytes(4, "big") + b"\x00")
        else:
            rows.append(b"\x01" + offs[n].to_bytes(4, "big") + b"\x00")
    table = b"".join(rows)
    out.write(b"8 0 obj\n<< /Type /XRef /Size 9 /W [1 4 1] /Root 1 0 R /Length %d >>\nstream\n" % len(table)
              + table + b"\nendstream\nendobj\nstartxref\n%d\n%%%%EOF\n" % xref_at)
    return out.getvalue()


def many_images_inherited_pdf(count: int = 3, side: int = 6000) -> bytes:
    """As many_images_pdf, with the resources inherited from the page tree's /Pages node."""
    images = [_gray_image(side, side, zlib.compress(bytes([i]) * side * side, 9)) for i in range(count)]
    names = b" ".join(b"/Im%d %d 0 R" % (i, 5 + i) for i in range(count))
    draw = b" ".join(b"q 100 0 0 100 %d 100 cm /Im%d Do Q" % (100 * i, i) for i in range(count))
    return _pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 /Resources << /XObject << " + names + b" >> >> >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(draw) + draw + b"\nendstream",
        *images,
    ])
