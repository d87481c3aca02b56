"""DICOM records -> FHIR R4 ImagingStudy (+ a DocumentReference that lists it).

The DICOM connector yields one "dicom" record per instance and one "dicom-study" record
per complete study: a small JSON manifest of the study, its series and instances, built
from the query answers and the instances' own headers (connectors/dicom/study.py). The
study record becomes:
- an ImagingStudy: identifiers (Study Instance UID, accession), status, started,
  modalities, counts, referrer, description, the source endpoint (contained), and each
  series (modality, body site, laterality, started) with its instances (SOP class, number);
- a DocumentReference of type "Diagnostic imaging study" whose attachment names the study
  (urn:oid:<Study Instance UID>) and whose context points at the ImagingStudy by its
  identifier, so the MHD submission set lists the images beside the documents.
Instance records map to nothing: the instances travel as DICOM (C-STORE / STOW-RS) beside
the bundle, described by their study's ImagingStudy. The gateway adds the Provenance per
source. Pure: reads the record's own file and nothing else.
"""
from __future__ import annotations

import json
import uuid
from datetime import date

from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.imagingstudy import ImagingStudy

from connectors.base import RawRecord
from connectors.dicom.uids import is_uid

from . import Mapped, MappingContext, MappingFailed

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ENDPOINT_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
NS = uuid.UUID("4b1c2d9e-6f0a-4e55-9d0b-0d1c0f2a9e31")

# DICOM Body Part Examined (PS3.16 Annex L) -> SNOMED CT, for the common ones
BODY_PARTS = {
    "ABDOMEN": ("818981001", "Abdomen"), "ANKLE": ("70258002", "Ankle joint"),
    "BRAIN": ("12738006", "Brain"), "BREAST": ("76752008", "Breast"),
    "CHEST": ("51185008", "Thorax"), "ELBOW": ("16953009", "Elbow joint"),
    "FOOT": ("56459004", "Foot"), "HAND": ("85562004", "Hand"),
    "HEAD": ("69536005", "Head"), "HEART": ("80891009", "Heart"),
    "HIP": ("24136001", "Hip joint"), "KNEE": ("72696002", "Knee"),
    "LSPINE": ("122496007", "Lumbar spine"), "CSPINE": ("122494005", "Cervical spine"),
    "TSPINE": ("122495006", "Thoracic spine"), "NECK": ("45048000", "Neck"),
    "PELVIS": ("816092008", "Pelvis"), "SHOULDER": ("16982005", "Shoulder"),
    "SKULL": ("89546000", "Skull"), "SPINE": ("421060004", "Spine"),
    "WRIST": ("74670003", "Wrist joint"), "CHESTABDOMEN": ("416550000", "Chest and abdomen"),
    "CHESTABDPELVIS": ("416775004", "Chest, abdomen and pelvis"),
}
LATERALITY = {"R": ("24028007", "Right"), "L": ("7771000", "Left"),
              "B": ("51440002", "Right and left")}
ENDPOINT_CODES = {"dicom-wado-rs": "DICOM WADO-RS", "dicom-c-move": "DICOM C-MOVE",
                  "dicom-c-get": "DICOM C-GET", "dicom-qido-rs": "DICOM QIDO-RS"}


def map_instance(record: RawRecord, context: MappingContext) -> list[Mapped]:
    """An instance travels as DICOM; its study's ImagingStudy describes it."""
    return []


def _date(value: str) -> date | None:
    value = (value or "").strip()
    if len(value) >= 8 and value[:8].isdigit():
        try:
            return date(int(value[:4]), int(value[4:6]), int(value[6:8]))
        except ValueError:
            return None
    return None


def _person(pn: str) -> str:
    """DICOM PN "Family^Given^Middle^Prefix^Suffix" -> "Prefix Given Middle Family Suffix"."""
    parts = (pn or "").split("=")[0].split("^") + [""] * 5
    family, given, middle, prefix, suffix = (p.strip() for p in parts[:5])
    return " ".join(p for p in (prefix, given, middle, family, suffix) if p)


def _int(value) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


def _text(value, limit: int = 1024) -> str:
    return str(value or "").strip()[:limit]


def _series(s: dict) -> dict | None:
    uid = s.get("uid")
    if not is_uid(uid):
        return None
    modality = _text(s.get("modality"), 16).upper() or "OT"
    out: dict = {"uid": uid, "modality": {"system": DCM, "code": modality}}
    if _int(s.get("number")) is not None:
        out["number"] = _int(s["number"])
    if _text(s.get("description")):
        out["description"] = _text(s["description"])
    body = _text(s.get("body_part"), 16).upper()
    if body:
        code = BODY_PARTS.get(body)
        out["bodySite"] = ({"system": SNOMED, "code": code[0], "display": code[1]}
                           if code else {"display": body})
    side = LATERALITY.get(_text(s.get("laterality"), 2).upper())
    if side:
        out["laterality"] = {"system": SNOMED, "code": side[0], "display": side[1]}
    started = _date(s.get("started", ""))
    if started:
        out["started"] = started.isoformat()
    instances = []
    for inst in sorted((s.get("instances") or {}).values(),
                       key=lambda i: (_int(i.get("number")) or 0, i.get("sop_instance_uid", ""))):
        sop, klass = inst.get("sop_instance_uid"), inst.get("sop_class_uid")
        if not is_uid(sop) or not is_uid(klass):
            continue
        entry = {"uid": sop, "sopClass": {"system": "urn:ietf:rfc:3986",
                                          "code": f"urn:oid:{klass}"}}
        if _int(inst.get("number")) is not None:
            entry["number"] = _int(inst["number"])
        instances.append(entry)
    if instances:
        out["instance"] = instances
        out["numberOfInstances"] = len(instances)
    return out


def map_study(record: RawRecord, context: MappingContext) -> list[Mapped]:
    try:
        with open(record.path, "rb") as fh:
            doc = json.loads(fh.read(64 * 1024 * 1024))
        study = doc["study"]
        series_in = doc["series"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MappingFailed(f"DICOM study manifest unreadable ({type(exc).__name__})",
                            record.origin) from None
    uid = study.get("uid")
    if not is_uid(uid):
        raise MappingFailed("DICOM study manifest without a valid Study Instance UID",
                            record.origin)
    series = [s for s in (_series(s) for s in series_in if isinstance(s, dict)) if s]
    series.sort(key=lambda s: (s.get("number", 0), s["uid"]))
    started = _date(study.get("date", ""))
    modalities = sorted({s["modality"]["code"] for s in series})
    identifiers = [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}]
    if _text(study.get("accession"), 64):
        identifiers.append({"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                            "value": _text(study["accession"], 64)})
    body: dict = {
        "resourceType": "ImagingStudy",
        "id": str(uuid.uuid5(NS, f"{record.source}/{uid}")),
        "identifier": identifiers,
        "status": "available",
        "subject": {"reference": context.patient_reference},
        "numberOfSeries": len(series),
        "numberOfInstances": sum(s.get("numberOfInstances", 0) for s in series),
        "series": series,
    }
    if modalities:
        body["modality"] = [{"system": DCM, "code": m} for m in modalities]
    if started:
        body["started"] = started.isoformat()
    if _person(study.get("referrer", "")):
        body["referrer"] = {"display": _person(study["referrer"])}
    if _text(study.get("description")):
        body["description"] = _text(study["description"])
    endpoint = doc.get("endpoint") or {}
    if endpoint.get("type") in ENDPOINT_CODES and _text(endpoint.get("address")):
        body["contained"] = [{
            "resourceType": "Endpoint", "id": "source",
            "status": "active",
            "connectionType": {"system": ENDPOINT_TYPE, "code": endpoint["type"],
                               "display": ENDPOINT_CODES[endpoint["type"]]},
            "name": f"{_text(record.source, 64)} (source of the images)",
            "payloadType": [{"text": "DICOM"}],
            "payloadMimeType": ["application/dicom"],
            "address": _text(endpoint["address"], 2048)}]
        body["endpoint"] = [{"reference": "#source"}]
    try:
        imaging = ImagingStudy.model_validate(body)
    except ValueError as exc:
        raise MappingFailed(f"ImagingStudy invalid: {str(exc).splitlines()[0][:200]}",
                            record.origin) from None

    title = _text(study.get("description"), 200) or "Imaging study"
    doc_ref = DocumentReference.model_validate({
        "resourceType": "DocumentReference",
        "id": str(uuid.uuid5(NS, f"{record.source}/{uid}/document")),
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "status": "current",
        "type": {"coding": [{"system": LOINC, "code": "18748-4",
                             "display": "Diagnostic imaging study"}]},
        "category": [{"coding": [{"system": LOINC, "code": "LP29684-5",
                                  "display": "Radiology"}]}],
        "subject": {"reference": context.patient_reference},
        "description": f"{title}: {body['numberOfInstances']} DICOM instances in "
                       f"{len(series)} series, sent by DICOM beside this bundle",
        "content": [{"attachment": {"contentType": "application/dicom",
                                    "url": f"urn:oid:{uid}", "title": title}}],
        "context": {"related": [{"type": "ImagingStudy", "identifier": {
            "system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}}],
            **({"period": {"start": started.isoformat()}} if started else {})},
    })
    return [Mapped(resource=imaging, data_class="imaging", clinical_date=started),
            Mapped(resource=doc_ref, data_class="imaging", clinical_date=started)]
