"""One table of data classes (connectors/data_classes.py): every class the authorization
schema accepts works on every source kind (issue 12, item 6) — the FHIR plan and a pull,
the DICOM query, the PDF folder and the fax and document mappings each accept it and
produce what they should or nothing, never an error."""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import pytest

from connectors.base import PatientIdentifier, RawRecord, RecordQuery
from connectors.data_classes import CLASSES, DICOM_CLASSES, DOCUMENT_TYPES, TYPE_CLASS
from connectors.dicom.study import wants_imaging
from connectors.fhir.connector import FhirRestConnector
from connectors.fhir.plan import CLASS_TYPES, PATIENT_PARAMS, Capability, plan_streams
from connectors.pdf_folder import PdfFolderConnector
from gateway.trust.authorizations.schema import Information
from mappings import DATA_CLASSES, MappingContext, map_record
from mappings.fhir.classify import DOCUMENT_TYPE, OBSERVATION_CATEGORY, REPORT_CATEGORY, data_class
from tests.fhir.fault_peer import FaultPeer, observation, patient

ACCEPTED = sorted(DATA_CLASSES | {"all"})
CTX = MappingContext("urn:uuid:6d0c2d7e-1111-4000-8000-000000000001")
DICOM_DATA = Path(__file__).parent / "dicom" / "data"


def query(cls: str) -> RecordQuery:
    return RecordQuery("a", "t", identifiers=(PatientIdentifier("urn:mrn", "42"),),
                       data_classes=frozenset({cls}))


def test_the_schema_accepts_exactly_the_table():
    for cls in ACCEPTED:
        assert Information.model_validate({"dataClasses": [cls]}).dataClasses == (cls,)
    with pytest.raises(ValueError, match="unknown data classes"):
        Information.model_validate({"dataClasses": ["horoscopes"]})
    assert {"billing", "supporting"} <= DATA_CLASSES == frozenset(CLASSES)


def test_fhir_classification_agrees_with_the_table():
    for rtype, cls in TYPE_CLASS.items():
        if rtype not in ("Observation", "DiagnosticReport", "DocumentReference"):  # by category
            assert data_class({"resourceType": rtype}) == cls, rtype
    for table in (OBSERVATION_CATEGORY, REPORT_CATEGORY, DOCUMENT_TYPE):
        assert set(table.values()) <= DATA_CLASSES
    # each class searches every type of its own that can be searched by patient
    for cls, spec in CLASSES.items():
        assert {t for t in spec.fhir_types if t in PATIENT_PARAMS} <= set(CLASS_TYPES[cls]), cls


@pytest.fixture(scope="module")
def fhir_peers():
    """Two fault peers: one offering $everything, one answering per-type searches only."""
    peers = [FaultPeer().start(), FaultPeer(everything=False).start()]
    for peer in peers:
        peer.capability_types = {"Patient": ["identifier"], **{t: ["patient"] for t in PATIENT_PARAMS}}
        peer.add(patient("p1", "42"), observation("o1", "p1"),
                 {"resourceType": "Claim", "id": "c1", "patient": {"reference": "Patient/p1"}})
    yield peers
    for peer in peers:
        peer.stop()


@pytest.mark.parametrize("cls", ACCEPTED)
def test_every_class_plans_and_pulls_from_a_fhir_server(cls, fhir_peers, tmp_path):
    cap = Capability.from_statement(fhir_peers[1].capability())
    streams = plan_streams(cap, "p1", data_classes=frozenset({cls}), date_from=None, date_to=None,
                           since=None, page_size=10, mode="search")
    wanted = set(PATIENT_PARAMS) if cls == "all" else set(CLASS_TYPES[cls]) & set(PATIENT_PARAMS)
    assert {s.key for s in streams} == wanted
    for i, peer in enumerate(fhir_peers):
        with FhirRestConnector("ehr", {"base_url": peer.base_url, "page_size": 10}, tmp_path / str(i)) as conn:
            records = [r for r in conn.fetch(query(cls)) if isinstance(r, RawRecord)]
        # the pull runs without an error ($everything is not narrowed by this peer: no more)
    lines = b"".join(r.path.read_bytes() for r in records if r.kind == "fhir-json")
    assert (b'"Claim"' in lines) == (cls in ("all", "billing"))  # searched for billing only


@pytest.mark.parametrize("cls", ACCEPTED)
def test_every_class_on_dicom_pdf_and_fax(cls, tmp_path):
    assert wants_imaging(query(cls)) == (cls == "all" or cls in DICOM_CLASSES)
    study = RawRecord("pacs", "dicom-study", "application/json", DICOM_DATA / "study-manifest.json", "x", 1,
                      "1.2.3")
    assert {m.data_class for m in map_record(study, CTX)} <= DATA_CLASSES
    if cls == "all":
        return  # "all" is what an authorization says, never the class of one record
    from gateway.cli.demo import make_pdf

    folder = tmp_path / "drop" / "t"  # one folder per transfer
    folder.mkdir(parents=True)
    make_pdf(folder / "report.pdf", "Synthetic report", ["synthetic"],
             {"name": {"family": "Testperson", "given": ["Avery"]}, "birthDate": "1970-01-01"})
    with PdfFolderConnector("records", {"path": str(folder.parent)}, tmp_path / "work") as conn:
        (pdf,) = list(conn.fetch(query(cls)))
    pdf = RawRecord(**{**pdf.__dict__, "metadata": {**pdf.metadata, "data_class": cls}})
    (doc,) = map_record(pdf, CTX)
    assert doc.data_class == cls
    code = doc.resource.type.coding[0].code
    assert code == DOCUMENT_TYPES.get(cls, ("55188-7",))[0]
    data = (folder / "report.pdf").read_bytes()
    fax = RawRecord("fax", "fax", "application/pdf", folder / "report.pdf", hashlib.sha256(data).hexdigest(),
                    len(data), "fax-1", metadata={"received_at": datetime.now(timezone.utc).isoformat(),
                                                  "pages": 1, "data_class": cls})
    (faxed,) = map_record(fax, CTX)
    assert faxed.data_class == cls


@pytest.mark.parametrize("cls", ACCEPTED)
def test_a_study_pulled_for_a_class_is_released_under_it(cls):
    """A DICOM study is pulled for every class that takes images (the table's `dicom`);
    its ImagingStudy is then released under that class too, not dropped as "imaging"."""
    from types import SimpleNamespace

    from gateway.engine.policy import allows
    from gateway.trust.authorizations import example_claims

    claims = example_claims("https://issuer.example", f"jti-{cls}", data_classes=(cls,))
    auth = SimpleNamespace(id=f"a-{cls}", jws_sha256=hashlib.sha256(cls.encode()).hexdigest(),
                           claims=claims)
    pulled = wants_imaging(query(cls))
    assert allows(auth, "imaging", datetime(2024, 1, 2, tzinfo=timezone.utc).date()) == pulled
    assert pulled == (cls == "all" or cls in DICOM_CLASSES)

