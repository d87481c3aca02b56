"""Read the few header attributes the gateway needs from a stored DICOM file, fast.

pydicom's dcmread (~1 ms a CT header) would cost more than the network does per
instance, so this walks the top-level elements of the first bytes of the file itself
(explicit or implicit VR little endian, sequences of defined or undefined length) and
stops after the last attribute it wants, well before the pixel data. For other transfer
syntaxes (deflated, big endian) or anything it cannot walk, it falls back to pydicom.
Anything malformed raises `MalformedDicom` with a short reason, never another error.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

from pydicom.charset import convert_encodings, decode_bytes

PREAMBLE = 128
_HEAD = 256 * 1024  # bytes read first; grown up to _MAX_HEAD for very long headers
_MAX_HEAD = 8 * 1024 * 1024

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

#: keyword -> (tag, kind) for what `read_header` returns
WANTED = {
    "SpecificCharacterSet": (0x00080005, "cs"),
    "SOPClassUID": (0x00080016, "ui"),
    "SOPInstanceUID": (0x00080018, "ui"),
    "StudyDate": (0x00080020, "str"),
    "SeriesDate": (0x00080021, "str"),
    "StudyTime": (0x00080030, "str"),
    "SeriesTime": (0x00080031, "str"),
    "AccessionNumber": (0x00080050, "text"),
    "Modality": (0x00080060, "str"),
    "ReferringPhysicianName": (0x00080090, "text"),
    "StudyDescription": (0x00081030, "text"),
    "SeriesDescription": (0x0008103E, "text"),
    "PatientName": (0x00100010, "text"),
    "PatientID": (0x00100020, "text"),
    "PatientBirthDate": (0x00100030, "str"),
    "BodyPartExamined": (0x00180015, "str"),
    "StudyInstanceUID": (0x0020000D, "ui"),
    "SeriesInstanceUID": (0x0020000E, "ui"),
    "StudyID": (0x00200010, "text"),
    "SeriesNumber": (0x00200011, "int"),
    "InstanceNumber": (0x00200013, "int"),
    "Laterality": (0x00200060, "str"),
    "NumberOfFrames": (0x00280008, "int"),
}
_BY_TAG = {tag: (kw, kind) for kw, (tag, kind) in WANTED.items()}
_LAST = max(_BY_TAG)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_EXPLICIT_HEAD = struct.Struct("<HH2sH").unpack_from
_IMPLICIT_HEAD = struct.Struct("<HHI").unpack_from
_U32 = struct.Struct("<I").unpack_from
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


class MalformedDicom(ValueError):
    """The file is not a DICOM Part 10 file we can read."""


class _NeedMore(Exception):
    pass


class _Refused(MalformedDicom):
    """Malformed in a way pydicom must not be asked to try (it would inflate it all)."""


def _tag(buf: bytes, pos: int) -> int:
    group, elem = struct.unpack_from("<HH", buf, pos)
    return (group << 16) | elem


def _element(buf: bytes, pos: int, explicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, vr, value offset, value length) of the element at `pos`."""
    if pos + 8 > len(buf):
        raise _NeedMore
    tag = _tag(buf, pos)
    if tag >> 16 == 0xFFFE:  # item / delimiters never carry a VR
        return tag, b"", pos + 8, struct.unpack_from("<I", buf, pos + 4)[0]
    if explicit:
        vr = bytes(buf[pos + 4:pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > len(buf):
                raise _NeedMore
            return tag, vr, pos + 12, struct.unpack_from("<I", buf, pos + 8)[0]
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise MalformedDicom(f"invalid VR at offset {pos}")
        return tag, vr, pos + 8, struct.unpack_from("<H", buf, pos + 6)[0]
    return tag, b"", pos + 8, struct.unpack_from("<I", buf, pos + 4)[0]


def _skip_undefined(buf: bytes, pos: int, explicit: bool, depth: int = 0) -> int:
    """Offset just past a sequence of undefined length whose first item starts at `pos`."""
    if depth > 16:
        raise MalformedDicom("sequences nested too deep")
    while True:
        tag, _, start, length = _element(buf, pos, explicit)
        if tag == _SEQ_END:
            return start
        if tag != _ITEM:
            raise MalformedDicom(f"expected a sequence item at offset {pos}")
        if length != _UNDEFINED:
            pos = start + length
            continue
        pos = start
        while True:  # undefined-length item: elements until the item delimiter
            tag, vr, start, length = _element(buf, pos, explicit)
            if tag == _ITEM_END:
                pos = start
                break
            if length == _UNDEFINED:
                pos = _skip_undefined(buf, start, explicit and vr != b"UN", depth + 1)
            else:
                pos = start + length
            if pos > len(buf):
                raise _NeedMore


def _value(raw: bytes, kind: str, encodings: list[str]):
    if kind == "ui":
        return raw.decode("ascii", "replace").rstrip("\x00 ")
    if kind == "int":
        text = raw.decode("ascii", "replace").strip("\x00 ")
        try:
            return int(text.split("\\")[0]) if text else None
        except ValueError:
            return None
    if kind == "cs":
        return [v.strip() for v in raw.decode("ascii", "replace").strip("\x00 ").split("\\")]
    if kind == "text":
        return decode_bytes(raw, encodings, set()).strip("\x00 ")
    return raw.decode("ascii", "replace").strip("\x00 ")


def _walk(buf: bytes, complete: bool = False) -> dict:
    """The wanted attributes from a file's first bytes (`complete`: they are all of it)."""
    if len(buf) < PREAMBLE + 4 or buf[PREAMBLE:PREAMBLE + 4] != b"DICM":
        raise MalformedDicom("no DICM prefix")
    pos = PREAMBLE + 4
    meta: dict[int, bytes] = {}
    while pos + 8 <= len(buf) and _tag(buf, pos) >> 16 == 0x0002:
        tag, _, start, length = _element(buf, pos, True)
        if length == _UNDEFINED or start + length > len(buf):
            raise MalformedDicom("bad file meta element")
        meta[tag] = bytes(buf[start:start + length])
        pos = start + length
    ts = meta.get(0x00020010, b"").decode("ascii", "replace").rstrip("\x00 ")
    if ts == DEFLATED:
        return _walk_deflated(buf, pos, meta, complete)
    if ts not in (EXPLICIT_LE, IMPLICIT_LE) and not ts.startswith("1.2.840.10008.1.2.4") \
            and ts != "1.2.840.10008.1.2.5":
        raise _NeedMore  # big endian / unknown: let pydicom read it
    return _walk_body(buf, pos, ts, meta)


def _walk_deflated(buf: bytes, pos: int, meta: dict, complete: bool) -> dict:
    """The header of a deflated data set, inflating at most `_MAX_HEAD` bytes of it: a
    deflate bomb (a few kB that claim gigabytes) costs 8 MiB here, never what it claims,
    and is never handed to pydicom (which would inflate all of it in memory)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        body = inflater.decompress(buf[pos:], _MAX_HEAD)
    except zlib.error:
        raise _Refused("deflated data set does not inflate") from None
    try:
        out = _walk_body(body, 0, EXPLICIT_LE, meta, final=inflater.eof)
    except (_NeedMore, MalformedDicom) as exc:
        if len(body) >= _MAX_HEAD:
            raise _Refused("deflated data set: its header is not within the first "
                           f"{_MAX_HEAD >> 20} MiB inflated") from None
        if complete or inflater.eof or len(buf) >= _MAX_HEAD:
            raise _Refused(str(exc) if isinstance(exc, MalformedDicom)
                           else "deflated data set ends before its header does") from None
        raise _NeedMore from None  # more of the compressed stream may finish it
    if not out.get("SOPInstanceUID"):
        raise _Refused("no SOP Instance UID (truncated or not an instance)")
    out["TransferSyntaxUID"] = DEFLATED
    return out


def _walk_body(buf: bytes, pos: int, ts: str, meta: dict, final: bool = False) -> dict:
    """The wanted attributes from the data set in `buf` from `pos` (`final`: the data set
    ends with `buf`, so what was found by then is all there is)."""
    explicit = ts != IMPLICIT_LE
    out: dict = {"TransferSyntaxUID": ts,
                 "MediaStorageSOPInstanceUID": meta.get(0x00020003, b"").decode(
                     "ascii", "replace").rstrip("\x00 ")}
    encodings = ["iso8859"]
    # The hot loop, inlined: one unpack per element (a CT header has ~200 before 0028).
    head = _EXPLICIT_HEAD if explicit else _IMPLICIT_HEAD
    end_of_buf = len(buf)
    while pos + 8 <= end_of_buf:
        if explicit:
            group, elem, vr, length = head(buf, pos)
            if vr in _LONG_VRS:
                if pos + 12 > end_of_buf:
                    raise _NeedMore
                length = _U32(buf, pos + 8)[0]
                start = pos + 12
            else:
                if not vr.isupper() or not vr.isalpha():
                    raise MalformedDicom(f"invalid VR at offset {pos}")
                start = pos + 8
        else:
            group, elem, length = head(buf, pos)
            vr = b""
            start = pos + 8
        tag = (group << 16) | elem
        if tag > _LAST:
            return out
        if length == _UNDEFINED:
            pos = _skip_undefined(buf, start, explicit and vr != b"UN")
            continue
        end = start + length
        if tag in _BY_TAG:
            if end > end_of_buf:
                raise _NeedMore
            kw, kind = _BY_TAG[tag]
            out[kw] = _value(bytes(buf[start:end]), kind, encodings)
            if kw == "SpecificCharacterSet":
                try:
                    encodings = convert_encodings(out[kw])
                except ValueError:  # e.g. a NUL inside a term: no codec can be looked up
                    raise MalformedDicom("unreadable Specific Character Set") from None
        pos = end
    if final and pos == end_of_buf:
        return out
    if pos < end_of_buf:
        raise _NeedMore
    raise _NeedMore if end_of_buf >= _HEAD else MalformedDicom("header ends early")


def _with_pydicom(path: Path) -> dict:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=[tag for tag, _ in WANTED.values()])
        out = {"TransferSyntaxUID": str(ds.file_meta.get("TransferSyntaxUID", "")),
               "MediaStorageSOPInstanceUID": str(ds.file_meta.get(
                   "MediaStorageSOPInstanceUID", ""))}
        for kw, (_, kind) in WANTED.items():
            if kw in ds:
                value = ds[kw].value
                if kind == "int":
                    try:
                        value = int(value) if value not in (None, "") else None
                    except (TypeError, ValueError):
                        value = None
                elif kind == "cs":
                    value = list(value) if not isinstance(value, str) else [value]
                else:
                    value = str(value) if value is not None else ""
                out[kw] = value
    except Exception as exc:
        raise MalformedDicom(f"unreadable dataset: {type(exc).__name__}") from None
    if not out.get("SOPInstanceUID"):
        raise MalformedDicom("no SOP Instance UID (truncated or not an instance)")
    return out


def read_header(path: Path, head: bytes | None = None) -> dict:
    """Header attributes (keywords of `WANTED`, plus TransferSyntaxUID) of a Part 10 file.

    `head` may be the file's first bytes, already read by the caller."""
    size = _HEAD
    buf = head
    with open(path, "rb") as fh:
        if buf is None:
            buf = fh.read(size)
        size = max(size, len(buf))
        while True:
            try:
                return _walk(buf, complete=len(buf) < size)
            except _Refused:
                raise
            except _NeedMore:
                if len(buf) < size or size >= _MAX_HEAD:
                    break  # truncated, or a header too long to walk here
                size *= 4
                fh.seek(0)
                buf = fh.read(size)
            except (MalformedDicom, struct.error, UnicodeError, LookupError):
                if buf[PREAMBLE:PREAMBLE + 4] != b"DICM":
                    raise MalformedDicom("not a DICOM file (no DICM prefix)") from None
                break  # odd encoding (e.g. implicit VR under an explicit syntax): pydicom
    return _with_pydicom(path)


def read_header_bytes(head: bytes) -> dict:
    """`read_header` for the first bytes of a file that is not on disk (a stream)."""
    try:
        return _walk(head)
    except _Refused:
        raise
    except (_NeedMore, MalformedDicom, struct.error, UnicodeError, LookupError):
        if head[PREAMBLE:PREAMBLE + 4] != b"DICM":
            raise MalformedDicom("not a DICOM file (no DICM prefix)") from None
    import io

    return _with_pydicom(io.BytesIO(head))


def zero_preamble(path: Path) -> None:
    """Overwrite the 128-byte preamble with zeros (it can hide another file format)."""
    with open(path, "r+b") as fh:
        head = fh.read(PREAMBLE)
        if head.count(0) != len(head):
            fh.seek(0)
            fh.write(bytes(len(head)))
