"""The viewer decodes the compressed syntaxes archives hold to real frames: synthetic
12- and 16-bit instances encoded here (JPEG Lossless and JPEG Extended by dcmtk's
dcmcjpeg, an independent encoder; JPEG-LS by CharLS and JPEG 2000 by OpenJPEG through
pydicom's encoders) render to the same PNG as the uncompressed source (lossless) or
nearly so (lossy). What no decoder knows stays a placeholder that says so."""
from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    generate_uid,
)

from gateway.web import images

JPEG_LOSSLESS_P14 = "1.2.840.10008.1.2.4.57"  # JPEG Lossless, Non-Hierarchical (Process 14)


def source(bits: int, signed: bool = False, frames: int = 1) -> pydicom.Dataset:
    """An uncompressed greyscale instance of `bits` stored bits: a ramp, a disc and noise,
    so every encoder has edges and texture to keep, and the full range is used."""
    rng = np.random.default_rng(bits + frames)
    y, x = np.mgrid[0:96, 0:128]
    top = 2 ** bits - 1
    stack = []
    for f in range(frames):
        field = x * top / 127 * 0.7 + ((x - 64) ** 2 + (y - 48) ** 2 < (20 + 5 * f) ** 2) * top * 0.25
        field = field + rng.normal(0, top * 0.01, field.shape)
        stack.append(field.clip(0, top).round())
    values = np.stack(stack) if frames > 1 else stack[0]
    values[..., 0, 0], values[..., -1, -1] = 0, top  # the full range in every frame
    if signed:
        values = values - 2 ** (bits - 1)
    dtype = ("<i2" if signed else "<u2") if bits > 8 else "u1"
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = 96, 128
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(signed)
    ds.PixelData = values.astype(dtype).tobytes()
    return ds


def part10(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def dcmtk(tool: str, ds: pydicom.Dataset, tmp_path: Path, *options: str) -> bytes:
    assert shutil.which(tool), f"{tool} is missing: apt-get install dcmtk (tests/apt-packages.txt)"
    src, out = tmp_path / "in.dcm", tmp_path / "out.dcm"
    src.write_bytes(part10(ds))
    subprocess.run([tool, *options, str(src), str(out)], check=True, capture_output=True)
    return out.read_bytes()


def pydicom_encoded(ds: pydicom.Dataset, syntax: str, **options) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(part10(ds)))
    ds.compress(syntax, **options)
    return part10(ds)


def png(frame: images.Frame) -> np.ndarray:
    assert frame.placeholder is None, frame.placeholder
    img = Image.open(io.BytesIO(frame.png))
    assert img.format == "PNG" and img.mode == "L" and img.size == (frame.width, frame.height)
    return np.asarray(img).astype(int)


def check(original: pydicom.Dataset, encoded: bytes, syntax: str, lossless: bool,
          index: int = 0) -> None:
    """The encoded instance is in `syntax` and renders as the source does."""
    assert pydicom.dcmread(io.BytesIO(encoded)).file_meta.TransferSyntaxUID == syntax
    want = png(images.render_frame(part10(original), index))
    got = png(images.render_frame(encoded, index))
    assert got.shape == want.shape == (96, 128)
    assert len(np.unique(want)) > 100  # a picture, not a flat field
    if lossless:
        assert (got == want).all()
    else:  # lossy: close everywhere, equal on average to within a shade
        diff = np.abs(got - want)
        assert diff.mean() < 1.5 and diff.max() <= 16, (diff.mean(), diff.max())
        assert not (got == want).all() or syntax == JPEGLSNearLossless


def test_jpeg_lossless_sv1_12_bit(tmp_path):
    ds = source(12)
    check(ds, dcmtk("dcmcjpeg", ds, tmp_path, "+e1"), JPEGLosslessSV1, lossless=True)


def test_jpeg_lossless_process_14_16_bit_signed(tmp_path):
    ds = source(16, signed=True)  # as CT stores Hounsfield units below zero
    check(ds, dcmtk("dcmcjpeg", ds, tmp_path, "+el", "+sv", "6"), JPEG_LOSSLESS_P14,
          lossless=True)


def test_jpeg_extended_12_bit_lossy(tmp_path):
    ds = source(12)
    check(ds, dcmtk("dcmcjpeg", ds, tmp_path, "+ee", "+q", "95"), JPEGExtended12Bit,
          lossless=False)


def test_jpeg_extended_12_bit_multi_frame(tmp_path):
    ds = source(12, frames=3)
    encoded = dcmtk("dcmcjpeg", ds, tmp_path, "+ee", "+q", "95")
    for index in range(3):
        check(ds, encoded, JPEGExtended12Bit, lossless=False, index=index)


def test_jpeg_extended_12_bit_matches_dcmtks_own_decoder(tmp_path):
    """pydicom's 12-bit JPEG sample, decoded here and by dcmtk's dcmdjpeg: value for value."""
    original = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))
    assert original.file_meta.TransferSyntaxUID == JPEGExtended12Bit
    reference = pydicom.dcmread(io.BytesIO(dcmtk("dcmdjpeg", original, tmp_path)))
    ours = pydicom.pixels.pixel_array(original)
    assert ours.dtype == np.uint16 and (ours == reference.pixel_array).all()
    assert png(images.render_frame(part10(original))).shape == (1024, 256)


@pytest.mark.parametrize("bits,signed", [(12, False), (16, True), (8, False)])
def test_jpeg_ls_lossless(bits, signed):
    ds = source(bits, signed)
    check(ds, pydicom_encoded(ds, JPEGLSLossless), JPEGLSLossless, lossless=True)


def test_jpeg_ls_near_lossless_12_bit():
    ds = source(12)
    encoded = pydicom_encoded(ds, JPEGLSNearLossless, jls_error=3)
    check(ds, encoded, JPEGLSNearLossless, lossless=False)
    # near-lossless: no sample further from the source than the error asked for
    back = pydicom.pixels.pixel_array(pydicom.dcmread(io.BytesIO(encoded))).astype(int)
    assert np.abs(back - ds.pixel_array.astype(int)).max() <= 3


def test_jpeg_2000_lossless_and_lossy_12_bit():
    ds = source(12)
    check(ds, pydicom_encoded(ds, JPEG2000Lossless), JPEG2000Lossless, lossless=True)
    check(ds, pydicom_encoded(ds, JPEG2000, j2k_psnr=[60]), JPEG2000, lossless=False)


def test_an_unknown_syntax_is_a_placeholder_that_names_it():
    ds = source(12)
    ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.10.1186.7"  # a private codec's UID
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not a codestream any decoder knows"])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True, implicit_vr=False, little_endian=True)
    frame = images.render_frame(out.getvalue())
    assert frame.placeholder == ("no decoder here for 1.2.826.0.1.3680043.10.1186.7 "
                                 "(NotImplementedError)")
    img = Image.open(io.BytesIO(frame.png))
    assert img.size == images.PLACEHOLDER_SIZE
