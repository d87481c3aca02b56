"""What to ask a FHIR server for: `Patient/$everything` where its CapabilityStatement
offers it, otherwise one search per resource type the server supports that has a patient
search parameter, narrowed by the authorization's data classes (the one table in
connectors/data_classes.py), its date range and the incremental `since`. Types the plan
wants but cannot search by patient are reported (`not_searchable`), never left out silently.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone

from connectors.base import SourceRejected
from connectors.data_classes import ALL, CLASSES, TABLE, unknown

# the search parameters that find a type's resources ABOUT the patient, best first (R4's
# Patient compartment, without those where the patient acts: performer, author, sender...)
PATIENT_PARAMS: dict[str, tuple[str, ...]] = {
    t: ("patient", "subject") for t in (
        "Account", "AdverseEvent", "AllergyIntolerance", "Basic", "BodyStructure", "CarePlan", "CareTeam",
        "ChargeItem", "Claim", "ClaimResponse", "ClinicalImpression", "Communication",
        "CommunicationRequest", "Composition", "Condition", "Consent", "CoverageEligibilityRequest",
        "CoverageEligibilityResponse", "DetectedIssue", "Device", "DeviceRequest", "DeviceUseStatement",
        "DiagnosticReport", "DocumentManifest", "DocumentReference", "Encounter", "EpisodeOfCare",
        "ExplanationOfBenefit", "FamilyMemberHistory", "Flag", "Goal", "ImagingStudy", "Immunization",
        "ImmunizationEvaluation", "ImmunizationRecommendation", "Invoice", "List", "Media",
        "MedicationAdministration", "MedicationDispense", "MedicationRequest", "MedicationStatement",
        "MolecularSequence", "NutritionOrder", "Observation", "Procedure", "Provenance",
        "QuestionnaireResponse", "RelatedPerson", "RequestGroup", "RiskAssessment", "ServiceRequest",
        "Specimen", "SupplyDelivery", "SupplyRequest", "Task", "VisionPrescription")}
PATIENT_PARAMS.update({
    "Coverage": ("patient", "beneficiary"),
    "Appointment": ("patient", "actor"),
    "AppointmentResponse": ("patient", "actor"),
})
# what a patient's record is expected to hold (US Core, billing): a type the plan wants that
# the server does not list at all is reported as not searchable
CORE_TYPES = frozenset({
    "AllergyIntolerance", "CarePlan", "CareTeam", "Condition", "Device", "DiagnosticReport",
    "DocumentReference", "Encounter", "Goal", "Immunization", "ImagingStudy",
    "MedicationAdministration", "MedicationDispense", "MedicationRequest", "MedicationStatement",
    "Observation", "Procedure", "Specimen", "ServiceRequest", "Provenance", "Coverage", "Claim",
    "ExplanationOfBenefit", "SupplyDelivery",
})
# data class -> resource types searched for it (its own types first)
CLASS_TYPES: dict[str, tuple[str, ...]] = {c.name: (*c.fhir_types, *c.fhir_also) for c in TABLE}
ALL_TYPES: tuple[str, ...] = tuple(sorted(PATIENT_PARAMS))
# Observation categories that belong to a data class, so a narrow authorization does not
# pull every Observation (usually most of a record)
OBSERVATION_CATEGORIES: dict[str, tuple[str, ...]] = {
    c.name: c.observation_categories for c in TABLE if c.observation_categories}
# the search parameter for the clinical date of each type, where there is one
DATE_PARAMS: dict[str, str] = {
    "Observation": "date", "DiagnosticReport": "date", "DocumentReference": "date",
    "Procedure": "date", "Immunization": "date", "Encounter": "date", "CarePlan": "date",
    "Condition": "onset-date", "MedicationRequest": "authoredon", "ImagingStudy": "started",
    "MedicationAdministration": "effective-time", "MedicationDispense": "whenhandedover",
    "MedicationStatement": "effective", "AllergyIntolerance": "date", "Goal": "target-date",
    "CareTeam": "date", "ServiceRequest": "authored",
}
# resources clinical ones point at, read afterwards when the pull lacks them, whatever the
# classes (the gateway's authorization filter still decides what is released)
SUPPORTING_TYPES = (*CLASSES["supporting"].fhir_types, "Medication")
# never read by reference: other people (a Group lists other patients), raw bytes
NEVER_FOLLOWED = frozenset({"Patient", "Group", "Person", "Binary", "Bundle"})
# types that take a `patient` parameter but are not the patient's records (the server's
# access log, its notification channels, its calendars)
NOT_RECORDS = frozenset({"AuditEvent", "Subscription", "Schedule", "Slot"})
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

    def patient_param(self, rtype: str) -> str | None:
        """The parameter that finds `rtype` by patient, None when the server lists search
        parameters for the type and none of them does (the standard one when it lists none)."""
        candidates = PATIENT_PARAMS.get(rtype, ("patient", "subject"))
        declared = self.search_params.get(rtype)
        if not declared:
            return candidates[0]
        return next((p for p in candidates if p in declared), None)


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
    """Types the classes want and, for Observation, the categories when narrower than all."""
    if not data_classes or ALL in data_classes:
        return list(ALL_TYPES), {}
    bad = unknown(data_classes)
    if bad:
        raise SourceRejected(f"unknown data classes {bad}")
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


def followed_types(data_classes: frozenset[str]) -> frozenset[str] | None:
    """Types whose referenced resources are read when the pull lacks them: None for any
    type (an "all" authorization), else those the classes want plus the supporting ones."""
    if not data_classes or ALL in data_classes:
        return None
    types, _ = search_types(data_classes)
    return frozenset(types) | frozenset(SUPPORTING_TYPES)


def _searched(cap: Capability, data_classes: frozenset[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """([(type, patient param)] to search, [(type, why not)]) for a per-type search plan."""
    types, _ = search_types(data_classes)
    wanted = [t for t in types if t in PATIENT_PARAMS]
    if not cap.raw_types:  # the statement lists no resources: the usual types, the usual way
        return [(t, PATIENT_PARAMS[t][0]) for t in wanted if t in CORE_TYPES], []
    search, gaps = [], []
    for rtype in wanted:
        if rtype not in cap.raw_types:
            if rtype in CORE_TYPES:
                gaps.append((rtype, "the server's CapabilityStatement does not list this type"))
            continue
        param = cap.patient_param(rtype)
        if param is None:
            gaps.append((rtype, "the server lists no patient search parameter for this type "
                                f"(none of {', '.join(PATIENT_PARAMS[rtype])})"))
        else:
            search.append((rtype, param))
    # types the server has, with a patient search, that no class of the table names
    if not data_classes or ALL in data_classes:
        for rtype in sorted(cap.raw_types - set(PATIENT_PARAMS) - _placed()):
            declared = cap.search_params.get(rtype) or frozenset()
            if "patient" in declared:
                search.append((rtype, "patient"))
    return search, gaps


def _placed() -> frozenset[str]:
    """Types the table places in a class (searched for it, or read by reference)."""
    return frozenset(t for c in TABLE for t in c.fhir_types) | NEVER_FOLLOWED | NOT_RECORDS


def not_searchable(cap: Capability, data_classes: frozenset[str]) -> list[tuple[str, str]]:
    """(type, reason) for each type the classes want that this server cannot be searched
    for by patient: a per-type plan cannot ask for it."""
    return _searched(cap, data_classes)[1]


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
        if data_classes and ALL not in data_classes:
            params.append(("_type", ",".join(["Patient", *types, *SUPPORTING_TYPES])))
        return [Stream("Patient/$everything", f"Patient/{patient_id}/$everything", tuple(params))]
    streams = []
    searched, _ = _searched(cap, data_classes)
    for rtype, param in sorted(searched):
        params = [(param, patient_id if param == "patient" else f"Patient/{patient_id}")]
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
