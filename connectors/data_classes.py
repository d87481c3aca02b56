"""The data classes a release authorization names, and what each means on every kind of
source. ONE table, read by the authorization schema (through `mappings.DATA_CLASSES`),
the FHIR search plan (connectors/fhir/plan.py), the FHIR classification
(mappings/fhir/classify.py), the DICOM connector and the document mappings.

It lives in `connectors/` because connectors may not import `mappings/` (data flows
connectors -> mappings -> gateway) and the FHIR plan needs it; `mappings` re-exports it.

Per class:
- `fhir_types`: FHIR resource types that belong to the class by their type alone (each
  type belongs to exactly one class; a type in no class is "documents");
- `fhir_also`: further types searched for the class, whose resources belong to it by
  category or document type (Observation, DiagnosticReport, DocumentReference);
- `observation_categories`: the Observation categories of the class (a narrow search);
- `document_type`: the LOINC type given to a PDF or fax of the class;
- `dicom`: whether DICOM studies are pulled for the class.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

ALL = "all"
# the code system of a data class where a resource names one (a Consent's provision.class,
# a summary section, a document of a source whose content cannot say)
DATA_CLASS_SYSTEM = "urn:records-gateway:data-class"


@dataclass(frozen=True)
class DataClass:
    name: str
    fhir_types: tuple[str, ...] = ()
    fhir_also: tuple[str, ...] = ()
    observation_categories: tuple[str, ...] = ()
    document_type: tuple[str, str] | None = None
    dicom: bool = False


_REPORTS = ("DiagnosticReport", "DocumentReference", "Observation")

TABLE: tuple[DataClass, ...] = (
    DataClass("notes", fhir_also=("DiagnosticReport", "DocumentReference"),
              document_type=("11506-3", "Progress note")),
    DataClass("documents", fhir_types=("DocumentReference", "Composition", "DocumentManifest",
                                       "Communication", "CommunicationRequest", "Consent", "List",
                                       "Basic")),
    DataClass("labs", fhir_types=("DiagnosticReport", "Specimen", "MolecularSequence"),
              fhir_also=("Observation",), observation_categories=("laboratory",),
              document_type=("11502-2", "Laboratory report")),
    DataClass("pathology", fhir_also=(*_REPORTS, "Specimen"), observation_categories=("laboratory",),
              document_type=("11526-1", "Pathology study")),
    DataClass("imaging", fhir_types=("ImagingStudy", "Media"), fhir_also=_REPORTS,
              observation_categories=("imaging",),
              document_type=("18748-4", "Diagnostic imaging study"), dicom=True),
    DataClass("radiology", fhir_also=("ImagingStudy", *_REPORTS), observation_categories=("imaging",),
              document_type=("18748-4", "Diagnostic imaging study"), dicom=True),
    DataClass("medications", fhir_types=("MedicationRequest", "MedicationStatement",
                                         "MedicationAdministration", "MedicationDispense",
                                         "Medication")),
    DataClass("allergies", fhir_types=("AllergyIntolerance",)),
    DataClass("conditions", fhir_types=("Condition", "Observation", "ClinicalImpression",
                                        "FamilyMemberHistory", "DetectedIssue", "RiskAssessment",
                                        "Flag", "AdverseEvent", "QuestionnaireResponse")),
    DataClass("procedures", fhir_types=("Procedure", "Device", "ServiceRequest", "SupplyDelivery",
                                        "SupplyRequest", "DeviceRequest", "DeviceUseStatement",
                                        "NutritionOrder", "VisionPrescription", "BodyStructure")),
    DataClass("immunizations", fhir_types=("Immunization", "ImmunizationEvaluation",
                                           "ImmunizationRecommendation")),
    DataClass("encounters", fhir_types=("Encounter", "EpisodeOfCare", "Appointment",
                                        "AppointmentResponse")),
    DataClass("vitals", fhir_also=("Observation",), observation_categories=("vital-signs",)),
    DataClass("care-plans", fhir_types=("CarePlan", "CareTeam", "Goal", "Task", "RequestGroup")),
    DataClass("demographics", fhir_types=("Patient", "RelatedPerson")),
    # who and where, and Provenance: released with the records that reference them,
    # whatever the classes and dates (see gateway/engine/policy.py)
    DataClass("supporting", fhir_types=("Practitioner", "PractitionerRole", "Organization",
                                        "Location", "Provenance", "HealthcareService", "Endpoint",
                                        "Substance")),
    # only "all" (or "billing" itself) covers them
    DataClass("billing", fhir_types=("Coverage", "Claim", "ExplanationOfBenefit", "ClaimResponse",
                                     "Account", "ChargeItem", "Invoice", "CoverageEligibilityRequest",
                                     "CoverageEligibilityResponse")),
)

CLASSES: dict[str, DataClass] = {c.name: c for c in TABLE}
DATA_CLASSES: frozenset[str] = frozenset(CLASSES)
# a FHIR type's class when nothing in the resource says more
TYPE_CLASS: dict[str, str] = {t: c.name for c in TABLE for t in c.fhir_types}
DEFAULT_FHIR_CLASS = "documents"
# classes for which DICOM studies are pulled ("all" besides)
DICOM_CLASSES: frozenset[str] = frozenset(c.name for c in TABLE if c.dicom)
DOCUMENT_TYPES: dict[str, tuple[str, str]] = {c.name: c.document_type for c in TABLE if c.document_type}


def fhir_class(rtype: str) -> str:
    return TYPE_CLASS.get(rtype, DEFAULT_FHIR_CLASS)


def unknown(classes) -> list[str]:
    """The names in `classes` that are neither a data class nor "all", sorted."""
    return sorted(set(classes) - DATA_CLASSES - {ALL})


def covers(classes, start: date | None, end: date | None, data_class: str, day: date | None) -> bool:
    """Whether an authorization for `classes` and the clinical dates `start`..`end`
    (inclusive, either open) covers a record of `data_class` dated `day`. The one rule:
    the sender filters by it and the receiver checks by it.

    "supporting" (who and where) carries no clinical facts and no clinical date: it goes
    with the records that cite it. "imaging" (a study) is pulled for every class that takes
    images. Under a date range, a record without a readable date is not covered."""
    if data_class == "supporting":
        return True
    if ALL not in classes and data_class not in classes and not (
            data_class == "imaging" and DICOM_CLASSES & set(classes)):
        return False
    if start is None and end is None:
        return True
    if day is None:
        return False
    return (start is None or start <= day) and (end is None or day <= end)
