"""Real DICOM peers for the DICOM tests: one Orthanc (with DICOMweb) holding generated
studies, a dcmqrscp as a second PACS, and an empty Orthanc as the recipient. Started once
per session on free ports, stopped by PID."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.dicom.dicom_peers import Dcmqrscp, Modality, Orthanc, free_port, have_peers
from tests.dicom.dicom_studies import Study, make_multiframe, make_study

GATEWAY_AET = "GATEWAY"


@dataclass
class DicomWorld:
    gateway_port: int
    movescu_port: int
    orthanc: Orthanc
    dcmqrscp: Dcmqrscp
    recipient: Orthanc
    study: Study  # PAT-0001, 2024-01-15, 300 CT instances in 3 series
    old_study: Study  # PAT-0001, 2019-06-01, 12 instances
    other: Study  # PAT-0099, 6 instances
    multiframe: Study  # PAT-0002, one ~48 MB multi-frame instance
    small: Study  # PAT-0003 in dcmqrscp: 30 instances in 2 series

    def options(self, **extra) -> dict:
        opts = {"host": "127.0.0.1", "port": self.orthanc.dicom_port, "ae_title": "ORTHANC",
                "calling_aet": GATEWAY_AET, "scp_port": self.gateway_port,
                "scp_host": "127.0.0.1", "retrieve": "move"}
        opts.update(extra)
        return opts


@pytest.fixture(scope="session")
def dicom(tmp_path_factory) -> DicomWorld:
    missing = have_peers()
    if missing:
        pytest.fail(f"DICOM peers not installed ({', '.join(missing)}): run tests/run.sh")
    root = tmp_path_factory.mktemp("dicom")
    gen = root / "generated"
    study = make_study(gen / "ct", 300, 3)
    old = make_study(gen / "old", 12, 1, study_date="20190601", accession="ACC-OLD",
                     modality="MR", rows=64, cols=64)
    other = make_study(gen / "other", 6, 1, patient_id="PAT-0099", patient_name="Other^Otto",
                       rows=64, cols=64)
    multiframe = make_multiframe(gen / "mf", 48)
    small = make_study(gen / "small", 30, 2, patient_id="PAT-0003", patient_name="Small^Sam",
                       rows=128, cols=128)
    gateway_port, movescu_port = free_port(), free_port()
    peers = [Modality(GATEWAY_AET, gateway_port), Modality("MOVESCU", movescu_port)]
    orthanc = Orthanc(root / "orthanc", peers).start()
    qr = recipient = None
    try:
        orthanc.upload(study.files + old.files + other.files + multiframe.files)
        qr = Dcmqrscp(root / "dcmqrscp", peers).start()
        qr.upload(small.files)
        recipient = Orthanc(root / "recipient", peers, aet="RECIPIENT").start()
        yield DicomWorld(gateway_port, movescu_port, orthanc, qr, recipient, study, old,
                         other, multiframe, small)
    finally:
        for peer in (recipient, qr, orthanc):
            if peer is not None:
                peer.stop()
