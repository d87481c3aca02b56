"""A deflated DICOM file is inflated only as far as its header needs, at most 8 MiB:
a few hundred kB that claim hundreds of MB are refused with a reason, never inflated
whole in memory (pydicom's reader would)."""
from __future__ import annotations

import struct
import tracemalloc
import zlib

import pytest

from connectors.dicom.header import MalformedDicom, read_header, read_header_bytes

DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian

SOP_CLASS, SOP = "1.2.840.10008.5.1.4.1.1.7", "1.2.826.0.1.3680043.10.999.1"


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"UN"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode()
    return raw + b"\0" * (len(raw) % 2)


def deflated_file(filler: int) -> bytes:
    """File meta, then a deflated data set: SOP UIDs, `filler` zero bytes in a private
    element, then the Study Instance UID."""
    meta = (_element(2, 1, b"OB", b"\0\1") + _element(2, 2, b"UI", _ui(SOP_CLASS))
            + _element(2, 3, b"UI", _ui(SOP)) + _element(2, 0x10, b"UI", _ui(DEFLATED)))
    head = b"\0" * 128 + b"DICM" + _element(2, 0, b"UL", struct.pack("<I", len(meta))) + meta
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = [deflater.compress(_element(8, 0x16, b"UI", _ui(SOP_CLASS))
                              + _element(8, 0x18, b"UI", _ui(SOP))
                              + struct.pack("<HH2sHI", 9, 0x1001, b"OB", 0, filler))]
    zeros = bytes(1 << 20)
    for _ in range(filler >> 20):
        body.append(deflater.compress(zeros))
    body.append(deflater.compress(bytes(filler % (1 << 20))))
    body.append(deflater.compress(_element(0x20, 0x0D, b"UI", _ui("1.2.3.4"))))
    body.append(deflater.flush())
    return head + b"".join(body)


def test_a_deflated_header_is_read_without_pydicom(tmp_path):
    path = tmp_path / "small.dcm"
    path.write_bytes(deflated_file(1024))
    header = read_header(path)
    assert (header["SOPInstanceUID"], header["StudyInstanceUID"]) == (SOP, "1.2.3.4")
    assert header["TransferSyntaxUID"] == DEFLATED
    assert read_header_bytes(path.read_bytes())["SOPInstanceUID"] == SOP


def test_a_deflate_bomb_is_refused_in_bounded_memory(tmp_path):
    bomb = deflated_file(384 << 20)  # 384 MiB of zeros before the study UID
    assert len(bomb) < 1 << 20  # what arrives is under a megabyte
    path = tmp_path / "bomb.dcm"
    path.write_bytes(bomb)
    for read in (lambda: read_header(path), lambda: read_header_bytes(bomb)):
        tracemalloc.start()
        try:
            with pytest.raises(MalformedDicom, match="not within the first 8 MiB"):
                read()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 64 << 20, f"{peak >> 20} MiB held while refusing"
