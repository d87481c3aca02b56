"""DICOM frames as PNG for the receiving center's image viewer, rendered on the server.

pydicom decodes, with the decoders the package depends on for the compressed syntaxes
archives hold: GDCM (JPEG Lossless, JPEG Extended, JPEG-LS, JPEG 2000), CharLS through
pyjpegls (JPEG-LS), OpenJPEG through pylibjpeg (JPEG 2000), Pillow (JPEG baseline), its
own RLE, and 12-bit JPEG Extended through dicom_decoders.py; numpy applies the header's rescale and window/level
(the DICOM linear VOI function, or the VOI LUT when there is one), inverts MONOCHROME1
and maps palette colour. Whatever cannot be decoded or is no image becomes a placeholder
PNG that says why, never an error page: one odd instance must not break the viewer.
The DICOM bytes come from outside, so frame sizes are checked before anything decodes.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.errors import InvalidDicomError

from . import dicom_decoders

dicom_decoders.register()

MAX_FRAME_PIXELS = 64 * 1024 * 1024  # 8192 x 8192: beyond this, a placeholder, not a decode
PLACEHOLDER_SIZE = (512, 512)


@dataclass(frozen=True)
class InstanceFacts:
    """What the viewer needs from an instance's header to order and page its frames."""
    sop_instance_uid: str
    series_uid: str
    instance_number: int | None
    frames: int
    rows: int
    columns: int
    has_pixels: bool
    transfer_syntax: str
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""


@dataclass(frozen=True)
class Frame:
    png: bytes
    width: int
    height: int
    placeholder: str | None = None  # why the frame could not be shown, else None


def _int(value, default: int | None = None) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _read(data: bytes):
    return pydicom.dcmread(io.BytesIO(data), force=True)


def read_facts(data: bytes) -> InstanceFacts:
    """The header facts of one Part 10 instance."""
    ds = _read(data)
    meta = getattr(ds, "file_meta", None)
    return InstanceFacts(
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        instance_number=_int(ds.get("InstanceNumber")),
        frames=max(1, _int(ds.get("NumberOfFrames"), 1) or 1),
        rows=_int(ds.get("Rows"), 0) or 0, columns=_int(ds.get("Columns"), 0) or 0,
        has_pixels=any(t in ds for t in PIXEL_TAGS),
        transfer_syntax=str(meta.get("TransferSyntaxUID", "")) if meta else "",
        modality=str(ds.get("Modality", "")), series_number=_int(ds.get("SeriesNumber")),
        series_description=str(ds.get("SeriesDescription", "")))


def frame_order(instances: list[InstanceFacts]) -> list[tuple[str, int]]:
    """(SOP Instance UID, frame index) of every frame of a series, in viewing order:
    by Instance Number (instances without one last, in the order given), then frame."""
    ranked = sorted(enumerate(instances), key=lambda p: (p[1].instance_number is None,
                                                         p[1].instance_number or 0, p[0]))
    return [(f.sop_instance_uid, n) for _, f in ranked for n in range(f.frames)]


def placeholder(reason: str, size: tuple[int, int] = PLACEHOLDER_SIZE) -> Frame:
    """A dark grey PNG that says, in words, why there is no picture."""
    width, height = size
    img = Image.new("L", size, 48)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=18)
    draw.rectangle((0, 0, width - 1, height - 1), outline=160)
    words, lines = reason.split(), [""]
    for word in words:  # wrap at ~40 characters
        lines[-1:] = [f"{lines[-1]} {word}".strip()] if len(lines[-1]) + len(word) < 40 \
            else [lines[-1], word]
    y = max(8, height // 2 - 12 * len(lines))
    for line in ["Cannot display this image:", *lines]:
        draw.text((16, y), line, fill=235, font=font)
        y += 24
    return Frame(_png(img), width, height, reason)


def render_frame(data: bytes, index: int = 0) -> Frame:
    """Frame `index` of a Part 10 instance as an 8-bit PNG, or a placeholder saying why not."""
    try:
        ds = _read(data)
    except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
        return placeholder(f"not a readable DICOM file ({type(exc).__name__})")
    rows, cols = _int(ds.get("Rows"), 0) or 0, _int(ds.get("Columns"), 0) or 0
    frames = max(1, _int(ds.get("NumberOfFrames"), 1) or 1)
    if not any(t in ds for t in PIXEL_TAGS):
        return placeholder("this instance holds no image (a report, a document or a structure)")
    if not (0 <= index < frames):
        return placeholder(f"there is no frame {index + 1}; the instance has {frames}")
    if rows <= 0 or cols <= 0:
        return placeholder("the header gives no image size")
    if rows * cols > MAX_FRAME_PIXELS:
        return placeholder(f"the frame is too large to show ({cols} x {rows})")
    try:
        arr = pydicom.pixels.pixel_array(ds, index=index)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is shown, never raised
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        name = getattr(syntax, "name", None) or "this encoding"
        return placeholder(f"no decoder here for {name} ({type(exc).__name__})")
    try:
        img = _to_image(arr, ds)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return placeholder(f"the pixel values cannot be mapped for display ({type(exc).__name__})")
    return Frame(_png(img), img.width, img.height)


def _to_image(arr: np.ndarray, ds) -> Image.Image:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        rgb = pydicom.pixels.apply_color_lut(arr, ds)
        return Image.fromarray(_to_uint8(rgb, 0, float(rgb.max() or 1)), "RGB")
    if arr.ndim == 3:  # colour: pydicom has already converted YBR to RGB
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        return Image.fromarray(_to_uint8(arr, 0, top), "RGB")
    grey = _window(arr, ds)
    if photometric == "MONOCHROME1":  # 0 is white: invert for display
        grey = 255 - grey
    return Image.fromarray(grey, "L")


def _window(arr: np.ndarray, ds) -> np.ndarray:
    """Modality rescale, then the header's first window (DICOM PS3.3 C.11.2.1.2.1, linear),
    else its VOI LUT, else the frame's own range."""
    values = pydicom.pixels.apply_modality_lut(arr, ds).astype(np.float64)
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        if w >= 1:
            scaled = ((values - (c - 0.5)) / max(w - 1, 1) + 0.5).clip(0, 1)
            return (scaled * 255).round().astype(np.uint8)
    if "VOILUTSequence" in ds:
        values = pydicom.pixels.apply_voi_lut(arr, ds).astype(np.float64)
    return _to_uint8(values, float(values.min()), float(values.max()))


def _to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    span = high - low
    if span <= 0:
        return np.zeros(values.shape, np.uint8)
    return ((values.astype(np.float64) - low) / span * 255).clip(0, 255).round().astype(np.uint8)


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG", optimize=False, compress_level=6)
    return out.getvalue()
