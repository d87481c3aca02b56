"""The entries a bundle carries about itself rather than as records, and how both sides
mark them: the SubmissionSet List, the patient-summary Composition and its PDF, the
completeness manifest (manifest.py). The sender writes them into every transfer
whatever the authorization's classes and dates; the receiver tells them from records by
these codes, so it can check every record against the Consent and pass these.
"""
from __future__ import annotations

from .ids import MHD
from .manifest import MANIFEST_TYPE

SUBMISSION_SET = {"system": f"{MHD}/CodeSystem/MHDlistTypes", "code": "submissionset"}
SUMMARY_TYPE = {"system": "http://loinc.org", "code": "60591-5", "display": "Patient summary Document"}

# resource type -> the codings (in `type` or `code`) that mark the bundle's own entries
OWN_ENTRIES = {"List": (SUBMISSION_SET,), "Composition": (SUMMARY_TYPE,),
               "DocumentReference": (SUMMARY_TYPE, MANIFEST_TYPE)}


def own_kind(resource: dict) -> str | None:
    """"submissionset", "60591-5" (the summary) or "completeness-manifest" when the resource
    is one of the bundle's own entries, else None."""
    marks = OWN_ENTRIES.get(resource.get("resourceType"), ())
    concept = resource.get("code" if resource.get("resourceType") == "List" else "type")
    codings = concept.get("coding") if isinstance(concept, dict) else None
    for coding in codings if isinstance(codings, list) else ():
        for mark in marks:
            if isinstance(coding, dict) and coding.get("system") == mark["system"] \
                    and coding.get("code") == mark["code"]:
                return mark["code"]
    return None
