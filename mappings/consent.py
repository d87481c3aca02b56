"""The FHIR R4 Consent carried by a release authorization: build it, validate it,
and check that it says the same as the authorization's HIPAA elements.

Pure functions (no I/O). Validation uses the `fhir.resources.R4B` models, which accept
R4 JSON for Consent (`model_validate`, never `model_construct`).

The Consent an authorization carries (what `build_consent` makes and
`consent_mismatches` checks):
- `status` "active", `scope` "patient-privacy", `category` LOINC 59284-0 (consent
  document), `dateTime` the signature date (checked);
- `patient` a Reference by `identifier` (system, value) equal to one of the
  authorization's patient identifiers;
- `policyRule` v3 ActCode "OPTIN" and `policy` naming 45 CFR 164.508;
- `provision.type` "permit", `provision.period` from `nbf` to `exp` (ISO datetimes),
  `provision.dataPeriod` the authorized date range (absent when none),
  `provision.actor`: each discloser with role v3 ParticipationType "CST" (custodian)
  and the recipient with role "IRCP" (information recipient), each a Reference by
  identifier (system `ORG_SYSTEM`, value the organization id), `provision.action`
  "disclose", `provision.class` one Coding a data class (system `DATA_CLASS_SYSTEM`),
  the same set as the authorization's dataClasses;
- `sourceAttachment` the signed form PDF when one is attached (by hash and size only:
  the bytes travel once, in the authorization's `attachment`).
"""
from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any, Iterable

from pydantic import ValidationError

from connectors.data_classes import DATA_CLASS_SYSTEM

ORG_SYSTEM = "urn:records-gateway:organization"
ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
DISCLOSER_ROLE = "CST"
RECIPIENT_ROLE = "IRCP"


class ConsentInvalid(ValueError):
    """The Consent is not valid FHIR R4, or contradicts the authorization; says where."""


def _iso(value: datetime | date) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return value.isoformat()


def _org_ref(org_id: str, name: str) -> dict:
    return {"identifier": {"system": ORG_SYSTEM, "value": org_id}, "display": name}


def _actor(role: str, org_id: str, name: str) -> dict:
    return {"role": {"coding": [{"system": ROLE_SYSTEM, "code": role}]},
            "reference": _org_ref(org_id, name)}


def build_consent(*, patient_identifier: dict, signed_on: date | datetime,
                  not_before: datetime, expires_at: datetime,
                  disclosers: Iterable[dict], recipient: dict, data_classes: Iterable[str],
                  purpose: str, date_range: dict | None = None,
                  form_sha256_b64: str | None = None, form_size: int | None = None,
                  consent_id: str | None = None) -> dict:
    """The R4 Consent JSON for these authorization terms, validated before it is returned.

    `disclosers` and `recipient` are {"id", "name"} dicts; `date_range` is
    {"start"?: date, "end"?: date}; `form_sha256_b64` is the base64 SHA-256 of the form.
    """
    provision: dict[str, Any] = {
        "type": "permit",
        "period": {"start": _iso(not_before), "end": _iso(expires_at)},
        "actor": [_actor(DISCLOSER_ROLE, d["id"], d["name"]) for d in disclosers]
        + [_actor(RECIPIENT_ROLE, recipient["id"], recipient["name"])],
        "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                "code": "disclose"}]}],
        "class": [{"system": DATA_CLASS_SYSTEM, "code": c} for c in sorted(data_classes)],
    }
    if date_range and (date_range.get("start") or date_range.get("end")):
        provision["dataPeriod"] = {k: _iso(v) for k, v in date_range.items() if v}
    consent: dict[str, Any] = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0",
                                  "display": "Patient Consent"}]}],
        "patient": {"identifier": {"system": patient_identifier["system"],
                                   "value": patient_identifier["value"]}},
        "dateTime": _iso(signed_on),
        "policy": [{"authority": "https://www.ecfr.gov",
                    "uri": "https://www.ecfr.gov/current/title-45/section-164.508"}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                   "code": "OPTIN"}], "text": purpose},
        "provision": provision,
    }
    if consent_id:
        consent["id"] = consent_id
    if form_sha256_b64:
        consent["sourceAttachment"] = {"contentType": "application/pdf", "hash": form_sha256_b64,
                                       "size": form_size, "title": "signed authorization form"}
    validate_consent(consent)
    return consent


def validate_consent(consent: Any):
    """The R4B Consent model for this JSON; raises ConsentInvalid naming the bad field."""
    from fhir.resources.R4B.consent import Consent

    if not isinstance(consent, dict):
        raise ConsentInvalid("consent is not a JSON object")
    if consent.get("resourceType") != "Consent":
        raise ConsentInvalid("consent.resourceType is not 'Consent'")
    try:
        model = Consent.model_validate(consent)
    except ValidationError as exc:
        where = "; ".join(f"consent.{'.'.join(str(p) for p in e['loc'] if p != 'Consent')}: {e['msg']}"
                          for e in exc.errors()[:5])
        raise ConsentInvalid(f"consent is not a valid FHIR R4 Consent ({where})") from None
    if model.status != "active":
        raise ConsentInvalid(f"consent.status is {model.status!r}, expected 'active'")
    return model


def _ref_identifier(ref) -> tuple[str | None, str | None]:
    if ref is None or ref.identifier is None:
        return None, None
    return ref.identifier.system, ref.identifier.value


def _instant(value) -> datetime | str | None:
    """A FHIR dateTime as an aware datetime; partial dates ("2026-03") stay strings,
    which match nothing."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    return value


def _day(value) -> date | str | None:
    return value.date() if isinstance(value, datetime) else value


def consent_mismatches(model, *, patient_identifiers: Iterable[dict], not_before: datetime,
                       expires_at: datetime, disclosers: Iterable[str], recipient: str,
                       date_range: dict | None, data_classes: Iterable[str] | None = None,
                       signed_on: date | None = None) -> list[str]:
    """Where a validated Consent contradicts the authorization's terms (empty: consistent).

    Each entry names the Consent element and the authorization element it disagrees with;
    no values are quoted (they may be patient data).
    """
    problems: list[str] = []
    ids = {(i["system"], i["value"]) for i in patient_identifiers}
    if _ref_identifier(model.patient) not in ids:
        problems.append("consent.patient.identifier does not match any of patient.identifiers")
    if signed_on is not None and _day(model.dateTime) != signed_on:
        problems.append("consent.dateTime does not match signature.date")
    prov = model.provision
    if prov is None:
        return problems + ["consent.provision is missing"]
    if prov.type != "permit":
        problems.append("consent.provision.type is not 'permit'")
    if prov.period is None:
        problems.append("consent.provision.period is missing")
    else:
        if _instant(prov.period.start) != not_before:
            problems.append("consent.provision.period.start does not match nbf")
        if _instant(prov.period.end) != expires_at:
            problems.append("consent.provision.period.end does not match exp")
    want = date_range or {}
    got = prov.dataPeriod
    if _day(got.start if got else None) != want.get("start"):
        problems.append("consent.provision.dataPeriod.start does not match information.dateRange.start")
    if _day(got.end if got else None) != want.get("end"):
        problems.append("consent.provision.dataPeriod.end does not match information.dateRange.end")
    actors: dict[str, set[str]] = {DISCLOSER_ROLE: set(), RECIPIENT_ROLE: set()}
    for actor in prov.actor or []:
        codes = {c.code for c in (actor.role.coding or []) if c.system == ROLE_SYSTEM}
        system, value = _ref_identifier(actor.reference)
        if system != ORG_SYSTEM:
            continue
        for code in codes & actors.keys():
            actors[code].add(value)
    if actors[DISCLOSER_ROLE] != set(disclosers):
        problems.append("consent.provision.actor (role CST) does not match disclosers")
    if actors[RECIPIENT_ROLE] != {recipient}:
        problems.append("consent.provision.actor (role IRCP) does not match recipient")
    if data_classes is not None:
        codes = {c.code for c in (prov.class_fhir or []) if c.system == DATA_CLASS_SYSTEM}
        if codes != set(data_classes):
            problems.append("consent.provision.class does not match information.dataClasses")
    return problems
