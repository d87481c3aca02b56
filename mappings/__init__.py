"""Pure functions from raw records to validated FHIR R4 resources (R4B models).

No network and no database here: a mapping reads the record's own local file at most.
`map_record` picks the mapping by the record's kind.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from importlib import import_module

from connectors import data_classes
from connectors.base import RawRecord

# the one table of data classes (connectors/data_classes.py: the FHIR plan needs it too, and
# connectors may not import mappings): the authorization schema reads it from here
DATA_CLASSES = data_classes.DATA_CLASSES


class MappingFailed(Exception):
    """A record cannot become valid FHIR; `origin` names the record."""

    def __init__(self, message: str, origin: str):
        super().__init__(message)
        self.origin = origin


class PartlyInvalid(MappingFailed):
    """Some parts of a record (resources of a FHIR page) fail validation, the rest are
    valid. `valid` (Mapped) can still be delivered; each of `invalid` has an `origin`
    (the part, inside the record) and an `error` (why, element paths and messages, never
    values), to be reported one by one rather than failing the whole record."""

    def __init__(self, message: str, origin: str, valid: list, invalid: list):
        super().__init__(message, origin)
        self.valid = valid
        self.invalid = invalid


@dataclass(frozen=True)
class Mapped:
    """One FHIR resource made from a record, with what filtering needs."""

    # a fhir.resources.R4B model, validated; for a resource pulled from a FHIR source that
    # passed mappings/fhir/schema_check.py, a PulledResource: `id` and `meta` at once, the
    # R4B model built on first use of anything else
    resource: object
    data_class: str  # one of DATA_CLASSES
    clinical_date: date | None  # when it happened clinically, for filters and order
    # True when the record's own bytes are this resource's Binary content: the bundle
    # streams them from the blob store rather than holding them in the resource
    carries_record_bytes: bool = False
    # the resource as it travels, JSON text (UTF-8): a FHIR source's own JSON, normalized,
    # every value as served; `resource` is then the model that checked it (fhirclient's R4
    # model for types R4B lacks). None: the model's JSON travels
    json: bytes | None = None


@dataclass(frozen=True)
class MappingContext:
    patient_reference: str  # "urn:uuid:..." of the transfer's Patient entry
    default_data_class: str = "documents"


MAPPINGS = {
    "pdf": "mappings.pdf_document:map_pdf",
    "dicom": "mappings.dicom_study:map_instance",
    "dicom-study": "mappings.dicom_study:map_study",
    "fax": "mappings.fax_document:map_fax",
    "fhir-json": "mappings.fhir_r4:map_fhir_json",
    "fhir-attachment": "mappings.fhir_r4:map_fhir_attachment",
}


def map_record(record: RawRecord, context: MappingContext) -> list[Mapped]:
    try:
        target = MAPPINGS[record.kind]
    except KeyError:
        raise MappingFailed(f"no mapping for record kind {record.kind!r}", record.origin) from None
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)(record, context)
