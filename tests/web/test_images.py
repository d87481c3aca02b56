"""DICOM frames rendered to PNG for the viewer: size, window/level, MONOCHROME1, colour,
multi-frame, compressed syntaxes, and a placeholder for what cannot be shown."""
import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.web import images


def _bytes(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as f:
        return f.read()


def _png(frame: images.Frame) -> Image.Image:
    img = Image.open(io.BytesIO(frame.png))
    assert img.format == "PNG"
    assert img.size == (frame.width, frame.height)
    return img


def _synthetic(values: np.ndarray, photometric: str = "MONOCHROME2", **header) -> bytes:
    """A 16-bit unsigned greyscale instance with the given pixels and header values."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    frames = values.shape[0] if values.ndim == 3 else 1
    ds.Rows, ds.Columns = values.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    for k, v in header.items():
        setattr(ds, k, v)
    ds.PixelData = values.astype("<u2").tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_ct_slice_has_its_size_and_uses_the_header_window():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth = 40, 400  # a soft-tissue window, in Hounsfield units
    out = io.BytesIO()
    ds.save_as(out)
    frame = images.render_frame(out.getvalue())
    assert frame.placeholder is None
    img = _png(frame)
    assert img.mode == "L" and img.size == (128, 128)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    c, w = 40.0, 400.0
    got = np.asarray(img)
    assert 0 < (got == 0).sum() < got.size and 0 < (got == 255).sum() < got.size
    # below the window is black, above it white, as the header's window says
    assert (got[hu <= c - 0.5 - (w - 1) / 2] == 0).all()
    assert (got[hu > c - 0.5 + (w - 1) / 2] == 255).all()


def test_window_center_and_width_map_linearly():
    ramp = np.arange(0, 1000, dtype=np.uint16).reshape(10, 100)
    data = _synthetic(ramp, WindowCenter=500, WindowWidth=201)
    got = np.asarray(_png(images.render_frame(data)))
    assert got[ramp <= 399].max() == 0 and got[ramp >= 601].min() == 255
    assert got[5, 0] == 128  # pixel value 500, the window's centre: mid-grey


def test_monochrome1_is_inverted():
    ramp = np.arange(0, 1000, dtype=np.uint16).reshape(10, 100)
    two = np.asarray(_png(images.render_frame(_synthetic(ramp))))
    one = np.asarray(_png(images.render_frame(_synthetic(ramp, "MONOCHROME1"))))
    assert two[0, 0] == 0 and one[0, 0] == 255  # the lowest value is white in MONOCHROME1
    assert (one.astype(int) + two.astype(int) == 255).all()


def test_without_a_window_the_frame_range_is_stretched():
    values = np.full((4, 4), 1000, np.uint16)
    values[0, 0], values[3, 3] = 200, 3000
    got = np.asarray(_png(images.render_frame(_synthetic(values))))
    assert got[0, 0] == 0 and got[3, 3] == 255 and 0 < got[1, 1] < 255


def test_each_frame_of_a_multi_frame_instance():
    stack = np.stack([np.full((8, 12), v, np.uint16) for v in (0, 100, 200)])
    stack[:, 0, 0] = 0  # so every frame has a range: its own value reads white
    stack[:, 0, 1] = 300
    data = _synthetic(stack)
    facts = images.read_facts(data)
    assert (facts.frames, facts.rows, facts.columns, facts.has_pixels) == (3, 8, 12, True)
    shades = [np.asarray(_png(images.render_frame(data, i)))[4, 4] for i in range(3)]
    assert shades == [0, 85, 170]
    beyond = images.render_frame(data, 3)
    assert beyond.placeholder == "there is no frame 4; the instance has 3"


@pytest.mark.parametrize("name,size,mode", [
    ("MR_small_RLE.dcm", (64, 64), "L"),           # RLE Lossless: pydicom's own decoder
    ("JPEG2000.dcm", (256, 1024), "L"),             # JPEG 2000: Pillow or pylibjpeg-openjpeg
    ("JPEG-lossy.dcm", (256, 1024), "L"),           # 12-bit JPEG Extended: GDCM (dicom_decoders)
    ("MR_small_jpeg_ls_lossless.dcm", (64, 64), "L"),  # JPEG-LS: GDCM or pyjpegls
    ("SC_rgb_jpeg.dcm", (256, 256), "RGB"),         # JPEG baseline colour: Pillow
    ("examples_ybr_color.dcm", (320, 240), "RGB"),  # YBR_FULL_422: converted to RGB
    ("examples_palette.dcm", (800, 350), "RGB"),    # PALETTE COLOR through its LUT
    ("MR_small_bigendian.dcm", (64, 64), "L"),      # Explicit VR Big Endian
])
def test_compressed_and_colour_syntaxes_decode(name, size, mode):
    frame = images.render_frame(_bytes(name))
    assert frame.placeholder is None
    img = _png(frame)
    assert (img.size, img.mode) == (size, mode)
    assert len(set(np.asarray(img).ravel().tolist())) > 10  # a picture, not a flat field


def test_colour_jpeg_lossless_renders_as_its_uncompressed_original():
    lossless = np.asarray(_png(images.render_frame(_bytes("SC_rgb_jpeg_gdcm.dcm"))))  # GDCM
    original = np.asarray(_png(images.render_frame(_bytes("SC_rgb_rle.dcm"))))  # pydicom
    assert lossless.shape == (100, 100, 3) and (lossless == original).all()


def test_colour_frames_of_a_two_frame_rle_instance_differ():
    data = _bytes("SC_rgb_rle_2frame.dcm")
    assert images.read_facts(data).frames == 2
    first, second = (np.asarray(_png(images.render_frame(data, i))) for i in (0, 1))
    assert first.shape == second.shape == (100, 100, 3)
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    assert (first == ds.pixel_array[0]).all() and (second == ds.pixel_array[1]).all()


def test_a_report_has_no_image_and_garbage_is_not_dicom():
    sr = images.render_frame(_bytes("test-SR.dcm"))
    assert sr.placeholder.startswith("this instance holds no image")
    assert _png(sr).size == images.PLACEHOLDER_SIZE
    assert images.read_facts(_bytes("test-SR.dcm")).has_pixels is False
    junk = images.render_frame(b"\x00" * 10)
    assert junk.placeholder is not None and _png(junk).size == images.PLACEHOLDER_SIZE


def test_a_frame_too_large_to_decode_is_refused_from_its_header():
    data = _synthetic(np.zeros((2, 2), np.uint16))
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.Rows = ds.Columns = 20000  # the header lies: 400 megapixels
    out = io.BytesIO()
    ds.save_as(out)
    frame = images.render_frame(out.getvalue())
    assert frame.placeholder == "the frame is too large to show (20000 x 20000)"


def test_frames_of_a_series_in_instance_number_order():
    def facts(uid, number, frames=1):
        return images.InstanceFacts(uid, "1.2", number, frames, 4, 4, True, "")

    order = images.frame_order([facts("c", 3), facts("a", 1, 2), facts("x", None), facts("b", 2)])
    assert order == [("a", 0), ("a", 1), ("b", 0), ("c", 0), ("x", 0)]
