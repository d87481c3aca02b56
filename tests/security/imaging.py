"""An imaging transfer for the security tests: a small CT study of the synthetic patient in
a real Orthanc, pulled by C-FIND + C-MOVE into the sender's Storage SCP and sent beside the
bundle by STOW-RS to the receiving gateway."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from gateway.trust.authorizations import example_claims
from tests.dicom.dicom_peers import Modality, Orthanc, free_port, have_peers
from tests.dicom.dicom_studies import Study, make_study
from tests.helpers import ISSUER, RECEIVER_ORG, SENDER_ORG
from tests.security.phi import Patient

GATEWAY_AET = "GATEWAY"


@dataclass
class Pacs:
    orthanc: Orthanc
    gateway_port: int  # where the sender's Storage SCP listens for the C-MOVE

    @property
    def endpoint(self) -> str:
        return f"dicom://ORTHANC@127.0.0.1:{self.orthanc.dicom_port}"

    def source(self) -> dict:
        return {"kind": "dicom", "organization": SENDER_ORG, "data_class": "imaging",
                "endpoint": self.endpoint,
                "options": {"host": "127.0.0.1", "port": self.orthanc.dicom_port, "ae_title": "ORTHANC",
                            "calling_aet": GATEWAY_AET, "scp_port": self.gateway_port,
                            "scp_host": "127.0.0.1", "retrieve": "move"}}

    def upload_study(self, workdir: Path, patient: Patient) -> tuple[Study, bytes]:
        """A 4-instance study of `patient`; returns it and a run of its pixel data."""
        study = make_study(workdir / f"study-{uuid.uuid4().hex[:8]}", 4, 1, rows=32, cols=32,
                           patient_id=patient.mrn, patient_name=f"{patient.family}^{patient.given}",
                           birth_date=patient.birth_date.replace("-", ""))
        self.orthanc.upload(study.files)
        pixels = pydicom.dcmread(study.files[0]).PixelData
        return study, pixels[100:148]


@pytest.fixture(name="pacs")
def pacs_fixture(tmp_path):
    missing = have_peers()
    if missing:
        pytest.fail(f"DICOM peers not installed ({', '.join(missing)}): run tests/run.sh")
    port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", [Modality(GATEWAY_AET, port)]).start()
    yield Pacs(orthanc, port)
    orthanc.stop()


def imaging_claims(patient: Patient, pacs: Pacs, receiver_url: str) -> dict:
    return example_claims(
        ISSUER, f"auth-{uuid.uuid4().hex[:12]}", patient=patient.claims_patient(),
        disclosers=[{"id": SENDER_ORG, "name": "Test Hospital",
                     "endpoints": [{"type": "dicom", "address": pacs.endpoint}]}],
        recipient={"id": RECEIVER_ORG, "name": "Test Center",
                   "endpoint": {"type": "gateway", "address": receiver_url}})


def start_imaging_transfer(stack, sign, pacs: Pacs, patient: Patient, receiver_url: str) -> str:
    auth_id = stack.authorize(imaging_claims(patient, pacs, receiver_url), sign)
    r = stack.client.post("/transfers", json={"authorization": auth_id, "sources": ["pacs"],
                                              "recipient": "center"}, headers=stack.operator)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]
