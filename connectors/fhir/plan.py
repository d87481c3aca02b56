"""What to ask a FHIR server for: `Patient/$everything` where its CapabilityStatement
offers it, otherwise one search per US Core type, narrowed by the authorization's data
classes, its date range and the incremental `since`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone

from connectors.base import SourceRejected

# data class -> resource types searched for it (US Core types first)
CLASS_TYPES: dict[str, tuple[str, ...]] = {
    "notes": ("DocumentReference", "DiagnosticReport"),
    "documents": ("DocumentReference",),
    "labs": ("Observation", "DiagnosticReport"),
    "pathology": ("DiagnosticReport", "Observation", "DocumentReference", "Specimen"),
    "imaging": ("ImagingStudy", "DiagnosticReport", "DocumentReference", "Observation"),
    "radiology": ("ImagingStudy", "DiagnosticReport", "DocumentReference", "Observation"),
    "medications": ("MedicationRequest", "MedicationStatement", "MedicationAdministration",
                    "MedicationDispense"),
    "allergies": ("AllergyIntolerance",),
    "conditions": ("Condition", "Observation"),
    "procedures": ("Procedure", "Device"),
    "immunizations": ("Immunization",),
    "encounters": ("Encounter",),
    "vitals": ("Observation",),
    "care-plans": ("CarePlan", "CareTeam", "Goal"),
    "demographics": (),
}
ALL_TYPES: tuple[str, ...] = (
    "AllergyIntolerance", "CarePlan", "CareTeam", "Condition", "Device", "DiagnosticReport",
    "DocumentReference", "Encounter", "Goal", "Immunization", "ImagingStudy",
    "MedicationAdministration", "MedicationDispense", "MedicationRequest", "MedicationStatement",
    "Observation", "Procedure", "Specimen", "ServiceRequest", "Provenance",
)
# Observation categories that belong to a data class, so a narrow authorization does not
# pull every Observation (usually most of a record)
OBSERVATION_CATEGORIES: dict[str, tuple[str, ...]] = {
    "labs": ("laboratory",),
    "pathology": ("laboratory",),
    "vitals": ("vital-signs",),
    "imaging": ("imaging",),
    "radiology": ("imaging",),
}
# the search parameter for the clinical date of each type, where there is one
DATE_PARAMS: dict[str, str] = {
    "Observation": "date", "DiagnosticReport": "date", "DocumentReference": "date",
    "Procedure": "date", "Immunization": "date", "Encounter": "date", "CarePlan": "date",
    "Condition": "onset-date", "MedicationRequest": "authoredon", "ImagingStudy": "started",
    "MedicationAdministration": "effective-time", "MedicationDispense": "whenhandedover",
    "MedicationStatement": "effective", "AllergyIntolerance": "date", "Goal": "target-date",
    "CareTeam": "date", "ServiceRequest": "authored",
}
# resources clinical ones point at, fetched by id afterwards when the pull lacks them
SUPPORTING_TYPES = ("Practitioner", "PractitionerRole", "Organization", "Location", "Medication")
R4_VERSIONS = ("4.0", "4.3")  # R4 and R4B: read with the R4B models


@dataclass(frozen=True)
class Capability:
    fhir_version: str
    everything: bool
    search_params: dict[str, frozenset[str]]  # type -> declared search params (may be empty)
    raw_types: frozenset[str]

    @classmethod
    def from_statement(cls, doc: dict) -> "Capability":
        if not isinstance(doc, dict) or doc.get("resourceType") != "CapabilityStatement":
            kind = doc.get("resourceType") if isinstance(doc, dict) else type(doc).__name__
            raise SourceRejected(f"/metadata did not return a CapabilityStatement (got {kind})")
        version = str(doc.get("fhirVersion") or "")
        everything = False
        params: dict[str, frozenset[str]] = {}
        for rest in doc.get("rest") or ():
            if not isinstance(rest, dict) or rest.get("mode") not in (None, "server"):
                continue
            for op in rest.get("operation") or ():
                if _is_everything(op):
                    everything = True
            for res in rest.get("resource") or ():
                if not isinstance(res, dict) or not res.get("type"):
                    continue
                names = frozenset(str(p.get("name")) for p in res.get("searchParam") or ()
                                  if isinstance(p, dict))
                params[res["type"]] = params.get(res["type"], frozenset()) | names
                if res["type"] == "Patient" and any(_is_everything(op) for op in res.get("operation") or ()):
                    everything = True
        return cls(version, everything, params, frozenset(params))

    def check_version(self) -> None:
        """Stop on anything but R4/R4B: STU3 and R5 JSON would be mis-read by R4 models."""
        if not self.fhir_version.startswith(R4_VERSIONS):
            name = {"1.0": "DSTU2", "3.0": "STU3", "5.0": "R5", "6.0": "R6"}.get(self.fhir_version[:3], "")
            raise SourceRejected(
                f"the server speaks FHIR {self.fhir_version or '(no fhirVersion)'}"
                f"{' (' + name + ')' if name else ''}; this connector reads FHIR R4 (4.0.x) only")

    def supports(self, rtype: str, param: str) -> bool:
        """Declared, or the server declares no search params at all for the type."""
        declared = self.search_params.get(rtype)
        return not declared or param in declared

    def patient_param(self, rtype: str) -> str:
        declared = self.search_params.get(rtype) or frozenset()
        if "patient" in declared or not declared:
            return "patient"
        return "subject" if "subject" in declared else "patient"


def _is_everything(op) -> bool:
    if not isinstance(op, dict):
        return False
    return op.get("name") in ("everything", "$everything", "patient-everything") or \
        str(op.get("definition", "")).endswith(("/Patient-everything", "/patient-everything"))


@dataclass(frozen=True)
class Stream:
    """One paged request: `$everything`, one type's search, or supporting resources by id."""

    key: str  # stable name, used in record origins and the resume journal
    path: str  # relative to the base
    params: tuple[tuple[str, str], ...]


def instant(value) -> str | None:
    """A FHIR instant for `_since` / `_lastUpdated` from a datetime or ISO string."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise SourceRejected(f"since must be an ISO 8601 timestamp, got {value!r}") from None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def search_types(data_classes: frozenset[str]) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """Types to search and, for Observation, the categories when narrower than all."""
    if not data_classes or "all" in data_classes:
        return list(ALL_TYPES), {}
    unknown = set(data_classes) - set(CLASS_TYPES)
    if unknown:
        raise SourceRejected(f"unknown data classes {sorted(unknown)}")
    types: list[str] = []
    for cls in sorted(data_classes):
        for rtype in CLASS_TYPES[cls]:
            if rtype not in types:
                types.append(rtype)
    categories: dict[str, tuple[str, ...]] = {}
    if "Observation" in types:
        # Observation is narrowed only when every class asking for it names categories
        asking = [c for c in data_classes if "Observation" in CLASS_TYPES[c]]
        if all(c in OBSERVATION_CATEGORIES for c in asking):
            cats = sorted({cat for c in asking for cat in OBSERVATION_CATEGORIES[c]})
            categories["Observation"] = tuple(cats)
    return sorted(types), categories


def plan_streams(cap: Capability, patient_id: str, *, data_classes: frozenset[str],
                 date_from: date | None, date_to: date | None, since: str | None,
                 page_size: int, mode: str = "auto") -> list[Stream]:
    if mode not in ("auto", "everything", "search"):
        raise SourceRejected(f"retrieval must be auto, everything or search, not {mode!r}")
    types, categories = search_types(data_classes)
    count = ("_count", str(page_size))
    if mode == "everything" or (mode == "auto" and cap.everything):
        params = [count]
        if since:
            params.append(("_since", since))
        if date_from:
            params.append(("start", date_from.isoformat()))
        if date_to:
            params.append(("end", date_to.isoformat()))
        if data_classes and "all" not in data_classes:
            params.append(("_type", ",".join(["Patient", *types, *SUPPORTING_TYPES])))
        return [Stream("Patient/$everything", f"Patient/{patient_id}/$everything", tuple(params))]
    streams = []
    for rtype in types:
        if cap.raw_types and rtype not in cap.raw_types:
            continue  # the server does not have the type at all
        params = [(cap.patient_param(rtype), patient_id)]
        if rtype in categories:
            params.append(("category", ",".join(categories[rtype])))
        dparam = DATE_PARAMS.get(rtype)
        if dparam and cap.supports(rtype, dparam):
            if date_from:
                params.append((dparam, f"ge{date_from.isoformat()}"))
            if date_to:
                params.append((dparam, f"le{date_to.isoformat()}"))
        if since:
            params.append(("_lastUpdated", f"ge{since}"))
        params.append(count)
        streams.append(Stream(rtype, rtype, tuple(params)))
    return streams
