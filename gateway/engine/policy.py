"""What an authorization allows, in the terms of our configuration.

Maps configured sources and peers onto the disclosers, endpoints and recipient the
authorization names, and turns its patient and information elements into the query a
connector narrows by.
"""
from __future__ import annotations

from datetime import date, datetime

from connectors.base import PatientIdentifier, RecordQuery
from connectors.data_classes import DICOM_CLASSES
from gateway import audit
from gateway.config import PeerConfig, SourceConfig
from gateway.storage.models import Authorization
from gateway.trust import authorizations

# connector kind -> endpoint type in authorizations
ENDPOINT_TYPE = {"pdf-folder": "pdf-folder", "fhir-rest": "fhir", "dicom": "dicom",
                 "dicomweb": "dicom", "fax-drop": "fax"}


def check_active(auth: Authorization) -> None:
    authorizations.check_active(auth)


def covers_source(auth: Authorization, source: SourceConfig) -> None:
    endpoint = {"type": ENDPOINT_TYPE.get(source.kind, source.kind), "address": source.endpoint}
    authorizations.covers_source(auth, source.organization, endpoint)


def covers_recipient(auth: Authorization, peer: PeerConfig) -> None:
    authorizations.covers_recipient(auth, peer.organization,
                                    {"type": "gateway", "address": peer.base_url})


def allows(auth: Authorization, data_class: str, clinical_date) -> bool:
    """Whether a mapped resource may be released. Supporting resources (who and where)
    carry no clinical facts and no clinical date: they go with the records that cite them."""
    if data_class == "supporting":
        return True
    if data_class == "imaging":  # a study is pulled for every class that takes images
        return any(authorizations.allows(auth, c, clinical_date) for c in DICOM_CLASSES)
    return authorizations.allows(auth, data_class, clinical_date)


def patient_key(auth: Authorization, secret: bytes) -> str | None:
    """The audit log's key for the authorization's patient (its first identifier)."""
    ids = auth.claims.get("patient", {}).get("identifiers", [])
    return audit.patient_key(ids[0]["system"], ids[0]["value"], secret) if ids else None


def record_query(auth: Authorization, transfer_id: str, already_fetched: frozenset[str],
                 since: datetime | None = None,
                 earlier_transfers: frozenset[str] = frozenset()) -> RecordQuery:
    claims = auth.claims
    patient = claims["patient"]
    info = claims["information"]
    rng = info.get("dateRange") or {}
    return RecordQuery(
        authorization_id=auth.id, transfer_id=transfer_id,
        identifiers=tuple(PatientIdentifier(i["system"], i["value"]) for i in patient["identifiers"]),
        family_name=patient["name"]["family"],
        given_names=tuple(patient["name"].get("given", ())),
        birth_date=date.fromisoformat(patient["birthDate"]),
        date_from=date.fromisoformat(rng["start"]) if rng.get("start") else None,
        date_to=date.fromisoformat(rng["end"]) if rng.get("end") else None,
        data_classes=frozenset(info["dataClasses"]),
        already_fetched=already_fetched,
        since=since,
        earlier_transfers=earlier_transfers,
    )
