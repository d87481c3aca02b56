"""Fuzz what the gateway parses of DICOM from outside: the header of a received Part 10
instance (`connectors/dicom/header.read_header_bytes`, used by the Storage SCP and by
STOW-RS), a C-STORE command set (`dimse_store.parse_command`, `store_command`), the body
of a P-DATA-TF PDU as the Storage SCP's reader decodes it (`net.FastDUL._decode_p_data`)
and a STOW-RS multipart body (`gateway/inbound/stow.parts`, `boundary_of`). The first
byte picks the target.

Expected: MalformedDicom (headers), ValueError (command sets and PDUs: the reader
answers them with an A-ABORT), InvalidInput (STOW-RS). Anything else is a finding.

Longer run by hand (from the repository root):

    python tests/security/fuzz/dicom_receive.py --seeds /tmp/fuzz-dicom
    python tests/security/fuzz/dicom_receive.py /tmp/fuzz-dicom -max_total_time=600 \
        -timeout=5 -artifact_prefix=/tmp/fuzz-dicom-
"""
from __future__ import annotations

import common  # noqa: F401  (puts the repository on sys.path)

import atheris

with atheris.instrument_imports(include=["connectors.dicom", "gateway.inbound.stow"]):
    from connectors.dicom import dimse_store
    from connectors.dicom.header import MalformedDicom, read_header_bytes
    from connectors.dicom.net import FastDUL
    from connectors.dicom.uids import clean_uid
    from gateway.errors import InvalidInput
    from gateway.inbound import stow

import io
import struct
from types import SimpleNamespace

BOUNDARY = b"fuzz-boundary-1"
# the reader's decoder needs only its association's event handlers (none here)
_READER = SimpleNamespace(assoc=SimpleNamespace(get_handlers=lambda event: []))


def _header(data: bytes) -> None:
    try:
        header = read_header_bytes(data)
    except MalformedDicom:
        return
    for name in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "TransferSyntaxUID"):
        clean_uid(header.get(name))


def _command(data: bytes) -> None:
    try:
        fields = dimse_store.parse_command(data)
    except ValueError:
        return
    command = dimse_store.store_command(fields)
    dimse_store.file_head(command, "1.2.840.10008.1.2.1")
    dimse_store.store_response(command, 0)


def _p_data(data: bytes) -> None:
    try:
        FastDUL._decode_p_data(_READER, bytearray(data))
    except ValueError:
        pass


def _stow(data: bytes) -> None:
    try:
        for part in stow.parts(io.BytesIO(data), len(data), BOUNDARY):
            head = b"".join(part.chunks())[:stow.HEAD]
            if part.content_type() == "application/dicom":
                _header(head)
    except InvalidInput:
        pass


def _content_type(data: bytes) -> None:
    try:
        stow.boundary_of(data.decode("latin-1"))
    except InvalidInput:
        pass


TARGETS = [_header, _command, _p_data, _stow, _content_type]


def test_one_input(data: bytes) -> None:
    if data:
        TARGETS[data[0] % len(TARGETS)](data[1:])


def _part10(charset: bytes = b"ISO_IR 100") -> bytes:
    """A small synthetic CT instance, explicit VR little endian."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["fuzz-sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["fuzz-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["fuzz-series"])
    ds.Modality, ds.PatientID, ds.PatientName = "CT", "SYN-0001", "Synthetic^Fuzz"
    ds.ReferencedImageSequence = [Dataset()]
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored = 2, 2, 16, 16
    ds.PixelData = bytes(8)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue().replace(b"ISO_IR 100", charset)


def seeds():
    part10 = _part10()
    yield bytes([0]) + part10
    command = dimse_store.StoreCommand(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", "MOVER", 3)
    yield bytes([1]) + dimse_store.store_response(command, 0)
    pdv = b"\x03" + dimse_store.store_response(command, 0)
    yield bytes([2]) + struct.pack(">IB", len(pdv) + 1, 1) + pdv
    yield bytes([3]) + (b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n" + part10
                        + b"\r\n--" + BOUNDARY + b"--\r\n")
    yield bytes([4]) + b'multipart/related; type="application/dicom"; boundary=' + BOUNDARY
    yield bytes([0]) + _part10(b"ISO_IR\x00100")  # past finding: a NUL in the character set


if __name__ == "__main__":
    common.main(test_one_input, seeds)
