"""A pydicom decoder plugin for what pydicom's own plugins leave out here: 12-bit JPEG
Extended (Process 4, 1.2.840.10008.1.2.4.51), the lossy syntax of many older CT and MR
archives. pydicom's GDCM plugin refuses it and its other decoder (pylibjpeg-libjpeg) is
GPL-licensed; GDCM's own 12-bit IJG codec decodes it. Tests check its frames value for
value against dcmtk's dcmdjpeg, an independent decoder.

`register()` adds it after pydicom's plugins, so they are tried first (8-bit and colour
frames go to them; this one takes only 12-bit greyscale). It is a pydicom plugin module:
`is_available`, DECODER_DEPENDENCIES and `decode_frame` are what pydicom calls.
"""
from __future__ import annotations

from pydicom import uid
from pydicom.pixels.decoders import JPEGExtended12BitDecoder

try:
    import gdcm
except ImportError:  # a deployment without python-gdcm shows a placeholder instead
    gdcm = None

LABEL = "gdcm-12bit"
DECODER_DEPENDENCIES = {uid.JPEGExtended12Bit: ("python-gdcm>=3.0.10",)}


def is_available(syntax: str) -> bool:
    return gdcm is not None and syntax == uid.JPEGExtended12Bit


def decode_frame(src: bytes, runner) -> bytes:
    """One JPEG Extended frame (`src`, its codestream) as little-endian 16-bit samples."""
    if runner.samples_per_pixel != 1 or not 8 < runner.bits_stored <= 12:
        raise NotImplementedError("only 12-bit greyscale JPEG Extended is decoded here")
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(
        gdcm.PhotometricInterpretation.GetPIType(str(runner.photometric_interpretation))))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(
        str(uid.JPEGExtended12Bit))))
    image.SetPixelFormat(gdcm.PixelFormat(1, 16, runner.bits_stored, runner.bits_stored - 1,
                                          runner.pixel_representation))
    runner.set_option("bits_allocated", 16)
    frame = image.GetBuffer().encode("utf-8", "surrogateescape")  # GDCM hands back a str
    if len(frame) != runner.rows * runner.columns * 2:
        raise ValueError("GDCM could not decode this JPEG Extended frame")
    return frame


def register() -> None:
    """Add the plugin to pydicom's JPEG Extended decoder (once per process)."""
    try:
        JPEGExtended12BitDecoder.add_plugin(LABEL, (__name__, "decode_frame"))
    except ValueError:  # added already
        pass
