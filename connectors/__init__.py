"""Connectors by configured kind, imported lazily so a missing optional dependency of
one protocol never breaks the others."""
from __future__ import annotations

from importlib import import_module

from .base import Connector

CONNECTORS = {
    "pdf-folder": "connectors.pdf_folder:PdfFolderConnector",
    "dicom": "connectors.dicom.connector:DicomConnector",
    "dicomweb": "connectors.dicom.connector:DicomWebConnector",
    "fax-drop": "connectors.fax.connector:FaxDropConnector",
    "fhir-rest": "connectors.fhir.connector:FhirRestConnector",
}


def connector_class(kind: str) -> type[Connector]:
    try:
        target = CONNECTORS[kind]
    except KeyError:
        raise KeyError(f"unknown connector kind {kind!r}; known: {', '.join(sorted(CONNECTORS))}") from None
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)
