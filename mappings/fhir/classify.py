"""Which data class a FHIR resource belongs to, and its clinical date, read from the
resource's JSON so filters work on valid and invalid resources alike.

A type's class comes from the one table of data classes (connectors/data_classes.py);
Observation, DiagnosticReport and DocumentReference are classed by category or type. A
document whose content cannot say (a scan, a fax) carries the class its source was
configured with as a category in `DATA_CLASS_SYSTEM`; one pointing at DICOM images is
"imaging", as its ImagingStudy is. The receiving gateway classifies what it receives with
these same functions (gateway/inbound/scope.py).
"supporting" (who and where, Provenance) is released with whatever references it;
"billing" (Claim, ExplanationOfBenefit, Coverage...) only under "all" or "billing".
"""
from __future__ import annotations

from datetime import date

from connectors.data_classes import DATA_CLASS_SYSTEM, DATA_CLASSES, DEFAULT_FHIR_CLASS, TYPE_CLASS

OBSERVATION_CATEGORY = {
    "laboratory": "labs", "vital-signs": "vitals", "imaging": "radiology",
    "procedure": "procedures",
}
# DiagnosticReport categories (HL7 v2 table 0074 and LOINC parts)
REPORT_CATEGORY = {
    "LAB": "labs", "HM": "labs", "CH": "labs", "MB": "labs", "SR": "labs", "CG": "labs",
    "BLB": "labs", "IMM": "labs", "SP": "pathology", "PAT": "pathology", "CP": "pathology",
    "OSP": "pathology", "RAD": "radiology", "CT": "radiology", "MR": "radiology",
    "US": "radiology", "NMR": "radiology", "NMS": "radiology", "RX": "radiology",
    "XRC": "radiology", "VUS": "radiology", "CUS": "radiology", "OUS": "radiology",
    "LP29684-5": "radiology", "LP7839-6": "pathology", "LP29708-2": "notes",
    "LP7819-8": "notes", "LP75011-4": "notes",
}
NOTE_SYSTEMS = ("http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",)
# LOINC document types that say radiology or pathology
DOCUMENT_TYPE = {"18748-4": "radiology", "11526-1": "pathology", "60567-5": "pathology",
                 "18842-5": "notes", "11506-3": "notes", "34117-2": "notes", "11488-4": "notes",
                 "28570-0": "notes", "34109-9": "notes"}

DATE_FIELDS = {
    "Observation": ("effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued"),
    "Condition": ("onsetDateTime", "onsetPeriod", "recordedDate"),
    "AllergyIntolerance": ("onsetDateTime", "onsetPeriod", "recordedDate"),
    "DiagnosticReport": ("effectiveDateTime", "effectivePeriod", "issued"),
    "DocumentReference": ("context.period", "date"),
    "MedicationRequest": ("authoredOn",),
    "MedicationStatement": ("effectiveDateTime", "effectivePeriod", "dateAsserted"),
    "MedicationAdministration": ("effectiveDateTime", "effectivePeriod"),
    "MedicationDispense": ("whenHandedOver", "whenPrepared"),
    "Procedure": ("performedDateTime", "performedPeriod"),
    "Immunization": ("occurrenceDateTime", "recorded"),
    "Encounter": ("period",),
    "ImagingStudy": ("started",),
    "CarePlan": ("period", "created"),
    "CareTeam": ("period",),
    "Goal": ("startDate", "statusDate"),
    "ServiceRequest": ("occurrenceDateTime", "occurrencePeriod", "authoredOn"),
    "Specimen": ("collection.collectedDateTime", "receivedTime"),
    "SupplyDelivery": ("occurrenceDateTime", "occurrencePeriod"),
    "Claim": ("billablePeriod", "created"),
    "ExplanationOfBenefit": ("billablePeriod", "created"),
    "Media": ("createdDateTime", "createdPeriod", "issued"),
}


def _codes(concepts, system: str | None = None) -> list[str]:
    out = []
    if isinstance(concepts, dict):
        concepts = [concepts]
    for concept in concepts if isinstance(concepts, list) else ():
        if isinstance(concept, dict):
            for coding in concept.get("coding") or ():
                if isinstance(coding, dict) and coding.get("code") and (
                        system is None or coding.get("system") == system):
                    out.append(str(coding["code"]))
    return out


def _dicom_content(resource: dict) -> bool:
    contents = resource.get("content")
    return isinstance(contents, list) and any(
        isinstance(c, dict) and isinstance(c.get("attachment"), dict)
        and c["attachment"].get("contentType") == "application/dicom" for c in contents)


def data_class(resource: dict) -> str:
    rtype = resource.get("resourceType")
    if rtype == "Observation":
        for code in _codes(resource.get("category")):
            if code in OBSERVATION_CATEGORY:
                return OBSERVATION_CATEGORY[code]
        return "conditions"  # social history, surveys, exams: clinical findings
    if rtype == "DiagnosticReport":
        for code in _codes(resource.get("category")):
            if code in REPORT_CATEGORY:
                return REPORT_CATEGORY[code]
        return "labs"
    if rtype == "DocumentReference":
        for code in _codes(resource.get("category"), DATA_CLASS_SYSTEM):
            if code in DATA_CLASSES:
                return code
        if _dicom_content(resource):
            return "imaging"
        for code in _codes(resource.get("type")):
            if code in DOCUMENT_TYPE:
                return DOCUMENT_TYPE[code]
        if "clinical-note" in _codes(resource.get("category")):
            return "notes"
        return "documents"
    if rtype == "ImagingStudy" or rtype == "Media":
        return "imaging"
    return TYPE_CLASS.get(rtype, DEFAULT_FHIR_CLASS)


_DATE_PATHS = {rtype: tuple(tuple(p.split(".")) for p in paths) for rtype, paths in DATE_FIELDS.items()}


def _pick(resource: dict, path: tuple[str, ...]):
    value = resource
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    if isinstance(value, dict):  # a Period: its start, else its end
        value = value.get("start") or value.get("end")
    return value


def clinical_date(resource: dict) -> date | None:
    for path in _DATE_PATHS.get(resource.get("resourceType"), ()):
        value = _pick(resource, path)
        if isinstance(value, str) and len(value) >= 4:
            try:
                if len(value) == 4:
                    return date(int(value), 1, 1)
                if len(value) == 7:
                    return date(int(value[:4]), int(value[5:7]), 1)
                return date.fromisoformat(value[:10])
            except ValueError:
                continue
    return None
