"""Load the FHIR models a long-running process validates with before it takes work.

fhir.resources builds each model class (and each element type it uses) on first use, and
building a pydantic model class costs more than validating hundreds of resources with it:
a Synthea record's ~25 types took 1-2 s of the first transfer's mapping after a start, and
as long of the first bundle a receiving gateway checked. `serve` and `worker` load them
before they answer requests or take tasks, so no transfer waits for it.
"""
from __future__ import annotations

import gc
import logging
import time

from connectors.data_classes import TABLE

log = logging.getLogger(__name__)

# what the gateway builds itself, beside the types the data classes name
BUILT = ("Binary", "Bundle", "Composition", "Consent", "DocumentReference", "ImagingStudy",
         "List", "OperationOutcome", "Patient", "Provenance")
# element types resources use (fhir.resources loads them when a resource first holds one)
ELEMENTS = ("Address", "Age", "Annotation", "Attachment", "BackboneElement",
            "CodeableConcept", "CodeableReference", "Coding", "ContactDetail", "ContactPoint",
            "Count", "Distance", "Dosage", "Duration", "Expression", "Extension", "HumanName",
            "Identifier", "Meta", "Money", "Narrative", "Period", "Quantity", "Range", "Ratio",
            "Reference", "RelatedArtifact", "SampledData", "Signature", "Timing", "UsageContext")


def resource_types() -> list[str]:
    return sorted({t for c in TABLE for t in (*c.fhir_types, *c.fhir_also)} | set(BUILT))


def fhir_models(schema_check: bool = False) -> float:
    """Load the R4B model classes of every resource type the gateway handles and of the
    common element types, and with `schema_check` (a process that maps what sources send,
    or checks bundles it receives) the schema check's validators for them
    (mappings/fhir/schema_check.py: ~3 s, once);
    then moves everything loaded so far out of the garbage collector's way (`gc.freeze`);
    returns the seconds it took."""
    from fhir.resources.R4B import get_fhir_model_class

    started = time.monotonic()
    for name in (*ELEMENTS, *resource_types()):
        get_fhir_model_class(name)
    if schema_check:
        from mappings.fhir import schema_check as check

        check.schema_check().warm(resource_types())
    # what was loaded stays for the process's life: out of the collector's way. Each full
    # collection traversed it all again, and a transfer's steps allocate enough to run
    # several (~0.2 s of receiving the standard case's bundle, as much of assembling it)
    gc.collect()
    gc.freeze()
    took = time.monotonic() - started
    log.info("FHIR models loaded in %.1f s", took)
    return took


def connector_modules(kinds) -> None:
    """Import the connectors of these kinds (the DICOM one imports pynetdicom: ~0.1 s of
    the first pull otherwise)."""
    from connectors import connector_class

    for kind in sorted(set(kinds)):
        try:
            connector_class(kind)
        except KeyError:  # an unknown kind: the pull reports it
            pass


def document_sandbox() -> None:
    """Start this process's document sandbox (connectors/fax/sandbox.py: a fork server
    that imports the PDF, TIFF and QR libraries, about a second of CPU), so the first
    document a task reads (a fax, a PDF, the fingerprint of a document several sources
    sent) does not pay for it in the middle of a transfer."""
    from connectors.fax import sandbox

    started = time.monotonic()
    try:
        sandbox.start()
    except OSError as exc:  # each document's read tries again, and reports it
        log.warning("document sandbox not started yet: %s", exc)
        return
    log.info("document sandbox started in %.1f s", time.monotonic() - started)
