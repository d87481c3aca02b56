"""Structure checks on an untrusted PDF before PDFium decodes any of it (sandbox child only).

PDFium decodes what a page draws without asking how large it is, and when an allocation
fails it silently draws nothing: a 1 MB file holding a 32768 x 32768 image (1 GiB once
inflated) would render as a blank page, pass review and be delivered to a recipient
whose viewer then inflates it. So before PDFium sees the file, qpdf (pikepdf) reads
its objects and every stream is measured against `Limits`:

- each image's pixels (the dictionary's /Width x /Height, and the JPEG or JPEG 2000
  header's own size where the codec carries one) and its decoded bytes;
- the pixels of the distinct images each page draws (through its Form XObjects);
- each stream's inflated size (Flate, LZW, RunLength, ASCII filters), decoded with a
  bound and thrown away, never held;
- reference loops: an object that is only a reference to itself (or to a chain that
  comes back), a Form XObject that draws itself.

Every refusal is a `FileRejected` with a short reason: "image-too-large",
"stream-too-large", "reference-loop", "bad-image", "unreadable", "encrypted".
"""
from __future__ import annotations

import re
import zlib
from pathlib import Path

from .sandbox import FileRejected

_REF_ONLY_RE = re.compile(rb"(?<![0-9])(\d{1,10})\s+(\d{1,5})\s+obj\s*(\d{1,10})\s+(\d{1,5})\s+R\s*endobj")
_REF_BODY_RE = re.compile(rb"\s*(\d{1,10})\s+\d{1,5}\s+R\s*$")
_STREAM_FILTERS = {"/FlateDecode", "/Fl", "/LZWDecode", "/LZW", "/RunLengthDecode", "/RL",
                   "/ASCIIHexDecode", "/AHx", "/ASCII85Decode", "/A85"}
# most bytes one byte of input can become, per filter (Flate's deflate limit is 1032:1)
_EXPANSION = {"/FlateDecode": 1032, "/Fl": 1032, "/LZWDecode": 3641, "/LZW": 3641,
              "/RunLengthDecode": 64, "/RL": 64, "/ASCIIHexDecode": 1, "/AHx": 1,
              "/ASCII85Decode": 1, "/A85": 1}
_HEX = frozenset(b"0123456789abcdefABCDEF")
_COMPONENTS = {"/DeviceGray": 1, "/G": 1, "/CalGray": 1, "/Indexed": 1, "/I": 1, "/Separation": 1,
               "/DeviceRGB": 3, "/RGB": 3, "/CalRGB": 3, "/Lab": 3, "/DeviceCMYK": 4, "/CMYK": 4}


def check_pdf(path: Path, limits: dict, references: dict[int, int]) -> dict:
    """Refuse `path` when it breaks a limit; return what was measured: {"streams",
    "images", "largest_image_pixels", "largest_stream_bytes"}. `references` is what
    `reference_chains` found in the file's bytes."""
    import pikepdf

    try:
        pdf = pikepdf.open(path, suppress_warnings=True)
    except pikepdf.PasswordError:
        raise FileRejected("encrypted", "PDF needs a password") from None
    except pikepdf.PikepdfError as exc:  # PdfError, and QpdfRuntimeError (e.g. a bad /Count)
        raise FileRejected("unreadable", f"PDF does not open: {_short(exc)}") from None
    except (ValueError, OverflowError):  # e.g. a number past 64 bits in the trailer
        raise FileRejected("unreadable", "PDF does not open: a number out of range") from None
    facts = {"streams": 0, "images": 0, "largest_image_pixels": 0, "largest_stream_bytes": 0}
    try:
        images: dict[tuple[int, int], int] = {}
        references = dict(references)
        for obj in pdf.objects:
            if not isinstance(obj, pikepdf.Stream):
                continue
            facts["streams"] += 1
            where = f"object {obj.objgen[0]}"
            if obj.stream_dict.get("/Subtype") == "/Image":
                pixels = _check_image(obj, where, limits)
                images[obj.objgen] = pixels
                facts["images"] += 1
                facts["largest_image_pixels"] = max(facts["largest_image_pixels"], pixels)
                if all(f in _STREAM_FILTERS for f in _filters(obj.stream_dict)):
                    continue  # decoded row by row up to its size, which _check_image bounds
            size = _inflated_size(obj, where, limits)
            facts["largest_stream_bytes"] = max(facts["largest_stream_bytes"], size)
            if obj.stream_dict.get("/Type") == "/ObjStm":  # inflated size checked just above
                references.update(_object_stream_refs(obj.read_bytes(), obj.stream_dict.get("/First")))
        _find_loop(references)
        for number, page in enumerate(pdf.pages, start=1):
            drawn: set[tuple[int, int]] = set()
            _page_images(_inherited(page.obj, "/Resources"), drawn, [], set(), number)
            total = sum(images.get(og, 0) for og in drawn)
            if total > limits["max_page_image_pixels"]:
                raise FileRejected("image-too-large", f"page {number} draws {total} image pixels "
                                                      f"(limit {limits['max_page_image_pixels']})")
    except pikepdf.PikepdfError as exc:
        raise FileRejected("unreadable", f"PDF structure is broken: {_short(exc)}") from None
    except UnicodeDecodeError:  # a name or string read as text (a filter, a color space)
        raise FileRejected("unreadable", "PDF structure is broken: a name is not UTF-8") from None
    finally:
        pdf.close()
    return facts


def _short(exc: Exception) -> str:
    """An error message without the file's path (it names our work folder)."""
    return str(exc).split(": ", 1)[-1][:120]


def reference_chains(data) -> dict[int, int]:
    """Objects whose whole body is a reference to another object ("5 0 obj 5 0 R endobj"),
    as {object: the object it names}; refused when they loop. A chain that comes back to
    itself has no value (a /MediaBox, /Resources or /Length pointing into it), and readers
    that follow it loop or give up differently. `check_pdf` adds those inside object
    streams, which a scan of the raw file cannot see."""
    references = {int(m.group(1)): int(m.group(3)) for m in _REF_ONLY_RE.finditer(data)}
    _find_loop(references)
    return references


def _object_stream_refs(data: bytes, first) -> dict[int, int]:
    """The objects of an object stream (PDF 1.5) whose body is only a reference: its
    header holds (object number, offset) pairs, the bodies start at /First."""
    if not isinstance(first, int) or not 0 < first <= len(data):
        return {}
    try:
        numbers = [int(n) for n in data[:first].split()]
    except ValueError:
        return {}
    pairs = list(zip(numbers[0::2], numbers[1::2]))
    body = data[first:]
    out = {}
    for index, (number, offset) in enumerate(pairs):
        end = pairs[index + 1][1] if index + 1 < len(pairs) else len(body)
        ref = _REF_BODY_RE.match(body[offset:end]) if 0 <= offset <= end <= len(body) else None
        if ref:
            out[number] = int(ref.group(1))
    return out


def _find_loop(points_to: dict[int, int]) -> None:
    """Refuse when following the references from any object comes back (linear time)."""
    settled: set[int] = set()  # objects whose chain is known to end
    for start in points_to:
        path, current = set(), start
        while current in points_to and current not in settled:
            if current in path:
                raise FileRejected("reference-loop", f"object {start} resolves to a loop of references")
            path.add(current)
            current = points_to[current]
        settled.update(path)


def _inherited(page, key: str):
    """A page attribute, from the page or the nearest /Pages node above it that has it."""
    node = page
    for _ in range(64):
        value = node.get(key)
        if value is not None:
            return value
        node = node.get("/Parent")
        if node is None:
            return None
    return None


def _int(value, where: str, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise FileRejected("bad-image", f"image {where} has no valid {name}") from None
    if number <= 0:
        raise FileRejected("bad-image", f"image {where} has {name} {number}")
    return number


def _check_image(obj, where: str, limits: dict) -> int:
    """Refuse an image too large to decode; return its pixel count."""
    d = obj.stream_dict
    width = _int(d.get("/Width", d.get("/W")), where, "/Width")
    height = _int(d.get("/Height", d.get("/H")), where, "/Height")
    filters = _filters(d)
    if filters and filters[-1] in ("/DCTDecode", "/DCT", "/JPXDecode"):
        codec = _codec_size(obj.read_raw_bytes()[:1 << 20], filters[-1])
        if codec:  # the decoder uses the codec's own size, whatever the dictionary says
            width, height = max(width, codec[0]), max(height, codec[1])
    pixels = width * height
    if pixels > limits["max_image_pixels"]:
        raise FileRejected("image-too-large", f"image {where} is {width} x {height} pixels "
                                              f"(limit {limits['max_image_pixels']} per image)")
    mask = bool(d.get("/ImageMask", False))
    bits = 1 if mask else _bits(d.get("/BitsPerComponent", 8))
    components = 1 if mask else _components(d.get("/ColorSpace"))
    decoded = (width * bits * components + 7) // 8 * height
    if decoded > limits["max_stream_mb"] * 1024 * 1024:
        raise FileRejected("image-too-large", f"image {where} decodes to {decoded} bytes "
                                              f"(limit {limits['max_stream_mb']} MB)")
    return pixels


def _bits(value) -> int:
    try:
        return min(max(int(value), 1), 16)
    except (TypeError, ValueError):
        return 16


def _components(space) -> int:
    """Colour components of an image's colour space (4, the most, when unsure)."""
    import pikepdf

    if isinstance(space, pikepdf.Name):
        return _COMPONENTS.get(str(space), 4)
    if isinstance(space, pikepdf.Array) and len(space) > 0:
        family = str(space[0])
        if family in ("/ICCBased",) and len(space) > 1 and isinstance(space[1], pikepdf.Stream):
            try:
                return min(max(int(space[1].stream_dict.get("/N", 4)), 1), 4)
            except (TypeError, ValueError):
                return 4
        if family == "/DeviceN" and len(space) > 1 and isinstance(space[1], pikepdf.Array):
            return min(len(space[1]), 32)
        return _COMPONENTS.get(family, 4)
    return 4


def _codec_size(head: bytes, codec: str) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF marker or a JPEG 2000 SIZ marker, when found."""
    if codec == "/JPXDecode":
        at = head.find(b"\xff\x4f\xff\x51")  # SOC then SIZ: Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz
        if at < 0 or len(head) < at + 24:
            return None
        at += 2
        x, y, xo, yo = (int.from_bytes(head[at + 6 + 4 * i: at + 10 + 4 * i], "big") for i in range(4))
        return max(x - xo, 0), max(y - yo, 0)
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            i += 1
            continue
        marker = head[i + 1]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            height = int.from_bytes(head[i + 5:i + 7], "big")
            width = int.from_bytes(head[i + 7:i + 9], "big")
            return width, height
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 2 if marker != 0xFF else 1
            continue
        i += 2 + int.from_bytes(head[i + 2:i + 4], "big")
    return None


def _filters(d) -> list[str]:
    import pikepdf

    value = d.get("/Filter")
    if value is None:
        return []
    if isinstance(value, pikepdf.Array):
        return [str(v) for v in value]
    return [str(value)]


def _inflated_size(obj, where: str, limits: dict) -> int:
    """Bytes the stream holds once its general-purpose filters are undone, decoded with a
    bound (image codecs are left to `_check_image`). Refuses at the limit."""
    limit = limits["max_stream_mb"] * 1024 * 1024
    filters = _filters(obj.stream_dict)
    chain = []
    for name in filters:
        if name not in _STREAM_FILTERS:
            break  # an image codec or a crypt filter: sized by the image checks
        chain.append(name)
    if not chain:  # stored as is (or an image codec's data): no larger than the file
        length = obj.stream_dict.get("/Length", 0)
        return length if isinstance(length, int) else 0
    raw = obj.read_raw_bytes()
    bound = len(raw)
    for name in chain:
        bound *= _EXPANSION[name]
    if bound <= limit:
        return bound
    data = raw
    for index, name in enumerate(chain):
        last = index == len(chain) - 1
        data = _decode_bounded(name, data, limit, where, count_only=last)
        if isinstance(data, int):
            return data
    return len(data)


def _too_large(where: str, limit: int) -> FileRejected:
    return FileRejected("stream-too-large", f"stream {where} inflates to over {limit // (1024 * 1024)} MB")


def _decode_bounded(name: str, data: bytes, limit: int, where: str, count_only: bool):
    """One filter undone with at most `limit` bytes of output; the size alone when
    `count_only` (the output is then discarded block by block)."""
    if name in ("/FlateDecode", "/Fl"):
        inflater = zlib.decompressobj()
        out, total, rest = [], 0, data
        while rest:
            try:
                block = inflater.decompress(rest, 1 << 20)
            except zlib.error:
                break  # PDFium stops at the damage too: what came before counts
            total += len(block)
            if total > limit:
                raise _too_large(where, limit)
            if not count_only:
                out.append(block)
            rest = inflater.unconsumed_tail
            if inflater.eof or not block:
                break
        return total if count_only else b"".join(out)
    if name in ("/LZWDecode", "/LZW"):
        return _lzw_bounded(data, limit, where, count_only)
    if name in ("/RunLengthDecode", "/RL"):
        out, total, i = bytearray(), 0, 0
        while i < len(data) and data[i] != 128:
            n = data[i]
            if n < 128:
                chunk, i = data[i + 1:i + 2 + n], i + 2 + n
            else:
                chunk, i = data[i + 1:i + 2] * (257 - n), i + 2
            total += len(chunk)
            if total > limit:
                raise _too_large(where, limit)
            if not count_only:
                out += chunk
        return total if count_only else bytes(out)
    if name in ("/ASCIIHexDecode", "/AHx"):
        text = bytes(c for c in data.split(b">", 1)[0] if c in _HEX)
        return len(text) // 2 if count_only else bytes.fromhex((text + b"0" * (len(text) % 2)).decode())
    import base64  # ASCII85

    body = re.sub(rb"\s", b"", data).removeprefix(b"<~").split(b"~>", 1)[0]
    try:
        decoded = base64.a85decode(body)
    except ValueError:
        decoded = b""
    return len(decoded) if count_only else decoded


def _lzw_bounded(data: bytes, limit: int, where: str, count_only: bool):
    """PDF LZW (early change 1) with an output bound."""
    out, total = bytearray(), 0
    table = [bytes([i]) for i in range(256)] + [b"", b""]
    bits, bitlen, width, prev = 0, 0, 9, b""
    for byte in data:
        bits = (bits << 8) | byte
        bitlen += 8
        while bitlen >= width:
            bitlen -= width
            code = (bits >> bitlen) & ((1 << width) - 1)
            if code == 256:
                table, width, prev = table[:258], 9, b""
                continue
            if code == 257:
                return total if count_only else bytes(out)
            if code < len(table):
                entry = table[code]
                if prev:
                    table.append(prev + entry[:1])
            elif prev:
                entry = prev + prev[:1]
                table.append(entry)
            else:
                return total if count_only else bytes(out)
            total += len(entry)
            if total > limit:
                raise _too_large(where, limit)
            if not count_only:
                out += entry
            prev = entry
            if len(table) + 1 >= (1 << width) and width < 12:
                width += 1
    return total if count_only else bytes(out)


def _page_images(resources, drawn: set, stack: list, visited: set, page: int) -> None:
    """Collect the images a page's resources can draw (through nested Form XObjects);
    a form that draws itself is a reference loop."""
    import pikepdf

    if not isinstance(resources, pikepdf.Dictionary):
        return
    xobjects = resources.get("/XObject")
    if not isinstance(xobjects, pikepdf.Dictionary):
        return
    for key in list(xobjects.keys())[:10000]:
        xobj = xobjects.get(key)
        if not isinstance(xobj, pikepdf.Stream):
            continue
        subtype = xobj.stream_dict.get("/Subtype")
        if subtype == "/Image":
            drawn.add(xobj.objgen)
        elif subtype == "/Form":
            if xobj.objgen in stack:
                raise FileRejected("reference-loop", f"page {page}: form object {xobj.objgen[0]} draws itself")
            if xobj.objgen in visited:
                continue  # drawn again elsewhere on the page: its images are counted once
            visited.add(xobj.objgen)
            if len(stack) > 20:
                raise FileRejected("too-deep", f"page {page}: forms nested over 20 deep")
            stack.append(xobj.objgen)
            _page_images(xobj.stream_dict.get("/Resources"), drawn, stack, visited, page)
            stack.pop()
