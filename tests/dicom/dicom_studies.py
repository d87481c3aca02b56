"""Synthetic studies for tests and benchmarks, generated with pydicom from its bundled
CT_small.dcm: new UIDs, 512x512 16-bit slices, many series, and a large multi-frame
instance written in chunks. Generated into a temporary folder, never committed.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MF_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture


@dataclass
class Study:
    study_uid: str
    patient_id: str
    files: list[Path] = field(default_factory=list)
    series: dict[str, list[str]] = field(default_factory=dict)  # series UID -> SOP UIDs

    @property
    def sop_uids(self) -> list[str]:
        return [u for uids in self.series.values() for u in uids]

    def sop_uids_in_file_order(self) -> list[str]:
        """SOP Instance UIDs in the order of `files` (for multi-series studies too)."""
        from pydicom import dcmread

        return [str(dcmread(f, stop_before_pixels=True, specific_tags=[(0x0008, 0x0018)])
                    .SOPInstanceUID) for f in self.files]

    @property
    def size(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def _template(patient_id: str, patient_name: str, birth_date: str, study_uid: str,
              study_date: str, accession: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = birth_date
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.StudyDescription = "CT CHEST W/O CONTRAST"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.BodyPartExamined = "CHEST"
    for tag in ("OtherPatientIDs", "RequestAttributesSequence"):
        if tag in ds:
            delattr(ds, tag)
    if 0xFFFCFFFC in ds:  # trailing padding: PACSs drop it, so files would differ by it
        del ds[0xFFFCFFFC]
    return ds


def make_study(outdir: Path, n_instances: int = 300, n_series: int = 3, *, rows: int = 512,
               cols: int = 512, patient_id: str = "PAT-0001", patient_name: str = "Doe^Jane",
               birth_date: str = "19700101", study_date: str = "20240115",
               accession: str = "ACC0001", modality: str = "CT") -> Study:
    """Write a CT study of `n_instances` 16-bit slices split over `n_series` series."""
    outdir.mkdir(parents=True, exist_ok=True)
    study = Study(study_uid=generate_uid(), patient_id=patient_id)
    ds = _template(patient_id, patient_name, birth_date, study.study_uid, study_date, accession)
    ds.Modality = modality
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    base = os.urandom(rows * cols * 2)
    series_uids = [generate_uid() for _ in range(n_series)]
    for s in series_uids:
        study.series[s] = []
    for i in range(n_instances):
        s_index = i * n_series // n_instances
        series_uid = series_uids[s_index]
        sop = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = s_index + 1
        ds.SeriesDescription = f"Axial {s_index + 1}"
        ds.InstanceNumber = len(study.series[series_uid]) + 1
        ds.SOPClassUID = CT_IMAGE
        ds.SOPInstanceUID = sop
        ds.SliceLocation = float(i)
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        k = (i * 7919) % len(base)
        ds.PixelData = base[k:] + base[:k]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = outdir / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        study.files.append(path)
        study.series[series_uid].append(sop)
    return study


def make_multiframe(outdir: Path, size_mb: int = 200, *, rows: int = 512, cols: int = 512,
                    patient_id: str = "PAT-0002", patient_name: str = "Roe^Rick",
                    birth_date: str = "19800202", study_date: str = "20240301") -> Study:
    """One multi-frame instance of about `size_mb` MB, its pixel data written in chunks."""
    outdir.mkdir(parents=True, exist_ok=True)
    frame = rows * cols * 2
    frames = max(1, size_mb * 1024 * 1024 // frame)
    study = Study(study_uid=generate_uid(), patient_id=patient_id)
    ds = _template(patient_id, patient_name, birth_date, study.study_uid, study_date, "ACC0002")
    for tag in ("SliceLocation", "ImagePositionPatient", "ImageOrientationPatient",
                "SliceThickness", "PixelSpacing", "KVP", "RescaleIntercept", "RescaleSlope"):
        if tag in ds:
            delattr(ds, tag)
    del ds.PixelData
    ds.Modality = "OT"
    ds.SOPClassUID = MF_WORD_SC
    ds.SOPInstanceUID = sop = generate_uid()
    ds.SeriesInstanceUID = series = generate_uid()
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MF_WORD_SC
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path = outdir / "multiframe.dcm"
    ds.save_as(path, enforce_file_format=True)
    block = os.urandom(frame)
    with open(path, "ab") as fh:
        # (7FE0,0010) OW, explicit VR little endian, 4-byte length
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frames * frame))
        for _ in range(frames):
            fh.write(block)
    study.files.append(path)
    study.series[series] = [sop]
    return study


#: transfer syntax UID -> how the fidelity study encodes an instance in it: a dcmtk tool
#: with its arguments (the Debian dcmtk's own encoders), or "j2k" (OpenJPEG via pydicom)
SYNTAX_ENCODERS = {
    "1.2.840.10008.1.2.1": ("dcmconv", "+te"),  # Explicit VR Little Endian
    "1.2.840.10008.1.2": ("dcmconv", "+ti"),  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2": ("dcmconv", "+tb"),  # Explicit VR Big Endian
    "1.2.840.10008.1.2.1.99": ("dcmconv", "+td"),  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50": ("dcmcjpeg", "+eb"),  # JPEG Baseline (lossy)
    "1.2.840.10008.1.2.4.57": ("dcmcjpeg", "+el"),  # JPEG Lossless, process 14
    "1.2.840.10008.1.2.4.70": ("dcmcjpeg", "+e1"),  # JPEG Lossless, SV1
    "1.2.840.10008.1.2.4.80": ("dcmcjpls", "+el"),  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": ("dcmcjpls", "+en"),  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.5": ("dcmcrle",),  # RLE Lossless
    "1.2.840.10008.1.2.4.90": ("j2k",),  # JPEG 2000 Lossless
}
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage


def make_syntax_study(outdir: Path, *, patient_id: str = "PAT-FIDELITY",
                      patient_name: str = "Doe^Jane", birth_date: str = "19700101",
                      rows: int = 64, cols: int = 64, syntaxes=None,
                      sop_classes=None) -> tuple[Study, dict]:
    """One instance per transfer syntax of SYNTAX_ENCODERS (small 8-bit images, two series:
    secondary captures and CT), each encoded by a real encoder. Returns the study and
    SOP Instance UID -> transfer syntax UID."""
    import subprocess

    import numpy as np
    from pydicom.uid import JPEG2000Lossless

    from tests.dicom.dicom_peers import dcmtk

    outdir.mkdir(parents=True, exist_ok=True)
    study = Study(study_uid=generate_uid(), patient_id=patient_id)
    ds = _template(patient_id, patient_name, birth_date, study.study_uid, "20240220", "ACC-FID")
    for tag in ("RescaleIntercept", "RescaleSlope"):
        if tag in ds:
            delattr(ds, tag)
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    series = {"SC": generate_uid(), "CT": generate_uid()}
    for uid in series.values():
        study.series[uid] = []
    yy, xx = np.mgrid[0:rows, 0:cols]
    syntax_of: dict[str, str] = {}
    for i, syntax in enumerate(syntaxes or SYNTAX_ENCODERS):
        kind = "SC" if i % 2 == 0 else "CT"
        klass = SC_IMAGE if kind == "SC" else CT_IMAGE
        if sop_classes:
            klass = sop_classes[i % len(sop_classes)]
        sop = generate_uid()
        ds.SOPClassUID = klass
        ds.SOPInstanceUID = sop
        ds.Modality = "OT" if kind == "SC" else "CT"
        ds.SeriesInstanceUID = series[kind]
        ds.SeriesNumber = 1 if kind == "SC" else 2
        ds.InstanceNumber = len(study.series[series[kind]]) + 1
        # a smooth picture with some noise: every codec has work to do
        noise = np.frombuffer(os.urandom(rows * cols), dtype=np.uint8).reshape(rows, cols)
        pixels = ((xx * 3 + yy * 2 + i * 17) % 256 // 2 + noise // 4).astype(np.uint8)
        ds.PixelData = pixels.tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = klass
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        plain = outdir / f"plain-{i:02d}.dcm"
        ds.save_as(plain, enforce_file_format=True)
        path = outdir / f"{i:02d}.dcm"
        tool = SYNTAX_ENCODERS[syntax]
        if tool[0] == "j2k":
            enc = pydicom.dcmread(plain)
            enc.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg",
                         generate_instance_uid=False)
            enc.save_as(path, enforce_file_format=True)
        else:
            args = [dcmtk(tool[0]), *tool[1:]]
            if tool[0] != "dcmconv":
                args.append("+un")  # keep the SOP Instance UID
            run = subprocess.run([*args, str(plain), str(path)], capture_output=True,
                                 text=True, timeout=60)
            if run.returncode != 0:
                raise RuntimeError(f"{tool[0]} failed: {run.stderr[-1000:]}")
        plain.unlink()
        held = pydicom.dcmread(path, stop_before_pixels=True)
        assert str(held.file_meta.TransferSyntaxUID) == syntax, (syntax, held.file_meta)
        assert str(held.SOPInstanceUID) == sop
        study.files.append(path)
        study.series[series[kind]].append(sop)
        syntax_of[sop] = syntax
    return study, syntax_of
