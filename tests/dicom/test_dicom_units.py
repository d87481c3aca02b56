"""Pure pieces: the UID grammar, the fast header reader (against pydicom), and the
streaming multipart/related splitter (boundaries cut at every position)."""
from __future__ import annotations

import glob
import random
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from connectors.dicom.header import MalformedDicom, _with_pydicom, read_header
from connectors.dicom.uids import clean_uid, is_uid
from connectors.dicom.web import MultipartSplitter, _from_json


@pytest.mark.parametrize("uid", ["1.2", "1.2.840.10008.1.2.1", "0.0", "2.25.0",
                                 "1." + "2" * 62])
def test_valid_uids(uid):
    assert is_uid(uid)


@pytest.mark.parametrize("uid", ["", "1", "1.2.", ".1.2", "1..2", "1.02", "1.2.3a",
                                 "1.2/3", "../../etc/passwd", "1.2\x00", "1." + "2" * 63,
                                 "１.２", "1.2\n", None, 12])
def test_invalid_uids(uid):
    assert not is_uid(uid)


def test_clean_uid_strips_padding_only():
    assert clean_uid(b"1.2.3\x00") == "1.2.3"
    assert clean_uid("1.2.3 ") == "1.2.3"
    assert clean_uid("1.2.3\x00x") is None


def test_header_reader_agrees_with_pydicom_on_its_test_files():
    files = glob.glob(str(Path(get_testdata_file("CT_small.dcm")).parent / "*.dcm"))
    compared = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            try:
                expected = _with_pydicom(Path(path))
            except MalformedDicom:
                continue
            try:
                got = read_header(Path(path))
            except MalformedDicom:
                assert pydicom.dcmread(path, force=True).get("SOPInstanceUID") is None or \
                    open(path, "rb").read()[128:132] != b"DICM"
                continue
            assert got == expected, path
            compared += 1
    assert compared > 50


@pytest.mark.parametrize("cut", [0, 10, 131, 200, 400, 1000])
def test_truncated_and_garbage_files_are_refused(tmp_path, cut):
    from connectors.dicom.intake import FolderSink, InstanceError, Retrieval

    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(data[:cut] + (b"\xff" * 50 if cut > 300 else b""))
    retrieval = Retrieval("t", FolderSink(tmp_path / "out"), spool=tmp_path)
    retrieval.begin()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = retrieval.take(bad, via="test")
    assert isinstance(result, InstanceError) and "malformed" in result.reason
    assert not (tmp_path / "out").exists() and not bad.exists()


def _split(body: bytes, boundary: bytes, chunks) -> list[tuple[dict, bytes]]:
    parts: list = []
    cur = bytearray()
    splitter = MultipartSplitter(boundary, lambda h: (parts.append([h, None]), cur.clear()),
                                 lambda v: cur.extend(v), lambda: parts[-1].__setitem__(1, bytes(cur)))
    pos = 0
    for size in chunks:
        splitter.feed(body[pos:pos + size])
        pos += size
    splitter.feed(body[pos:])
    assert splitter.finished
    return [(h, b) for h, b in parts]


def _multipart(parts: list[bytes], boundary: bytes) -> bytes:
    out = b"preamble text\r\n"
    for p in parts:
        out += b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
    return out + b"--" + boundary + b"--\r\nepilogue"


def test_multipart_boundaries_cut_everywhere():
    boundary = b"b0undary-1234"
    rng = random.Random(7)
    parts = [rng.randbytes(n) for n in (0, 1, 300, 5000)]
    parts.append(b"\r\n--b0undary-123 almost a boundary \r\n--b0undary-12")
    body = _multipart(parts, boundary)
    for step in (1, 2, 3, 7, 16, 64, len(body)):
        got = _split(body, boundary, [step] * (len(body) // step))
        assert [b for _, b in got] == parts
        assert all(h["content-type"] == "application/dicom" for h, _ in got)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(body)), 6))
        sizes = [b - a for a, b in zip([0] + cuts, cuts)]
        assert [b for _, b in _split(body, boundary, sizes)] == parts


def test_multipart_cut_in_two_at_every_position():
    boundary = b"b0undary-1234"
    rng = random.Random(11)
    parts = [rng.randbytes(n) for n in (40, 0, 3, 90)]
    body = _multipart(parts, boundary)
    for cut in range(1, len(body)):
        assert [b for _, b in _split(body, boundary, [cut])] == parts, cut


def test_multipart_bodies_are_views_of_the_chunks_fed():
    """No body byte is copied, delimiters cut in two included: a piece longer than a
    delimiter is a view of a chunk (only a chunk that starts inside a part's headers,
    rare with 1 MiB chunks, is joined to the headers' start)."""
    boundary = b"b0undary-1234"
    rng = random.Random(5)
    parts = [rng.randbytes(n) for n in (70000, 300, 150000)]
    body = _multipart(parts, boundary)
    cuts, pos = [], 0
    for part in parts:
        start = body.index(b"\r\n\r\n", pos) + 4
        end = start + len(part)
        cuts += [start + 3, start + len(part) // 2, end + 5]  # in the body; in the delimiter
        pos = end
    chunks = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
    pieces: list = []
    splitter = MultipartSplitter(boundary, lambda h: None, pieces.append, lambda: None)
    for chunk in chunks:
        splitter.feed(chunk)
    assert splitter.finished
    assert b"".join(pieces) == b"".join(parts)
    long = [p for p in pieces if len(p) > len(boundary) + 4]
    assert sum(map(len, long)) > 0.99 * len(b"".join(parts))
    assert all(isinstance(p, memoryview) and any(p.obj is c for c in chunks) for p in long)


def test_multipart_without_closing_boundary_is_not_finished():
    boundary = b"xyz"
    body = _multipart([b"abc"], boundary)[:-20]
    splitter = MultipartSplitter(boundary, lambda h: None, lambda v: None, lambda: None)
    splitter.feed(body)
    assert not splitter.finished


def test_dicom_json_values():
    obj = {"0020000D": {"vr": "UI", "Value": ["1.2.3"]},
           "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
           "00201208": {"vr": "IS", "Value": ["42"]},
           "00080061": {"vr": "CS", "Value": ["CT"]}}
    from connectors.dicom.web import STUDY_TAGS

    got = _from_json(obj, STUDY_TAGS)
    assert got == {"StudyInstanceUID": "1.2.3", "PatientName": "Doe^Jane",
                   "NumberOfStudyRelatedInstances": 42, "ModalitiesInStudy": ["CT"]}
