"""The completeness manifest as both sides read it: the document type that marks it in a
bundle, and the DICOM instances it lists as sent beside the bundle (per study, each
SOP Instance UID with its sha256, and one digest over a study's instances).

The sending side builds the manifest (gateway/outbound/manifest.py); the receiving side
reads it to know which instances a bundle takes and what its receipt must count.
"""
from __future__ import annotations

import hashlib

MANIFEST_TYPE = {"system": "urn:records-gateway:document-type", "code": "completeness-manifest",
                 "display": "Completeness manifest"}
MEDIA_TYPE = "application/json"


def dicom_counts(manifest: dict) -> dict[str, int]:
    """Instances per study sent beside the bundle, from a manifest."""
    return {study: len(sops) for study, sops in dicom_instances(manifest).items()}


def dicom_instances(manifest: dict) -> dict[str, dict[str, str]]:
    """Study UID -> {SOP Instance UID: sha256} of the instances sent beside the bundle."""
    out: dict[str, dict[str, str]] = {}
    for src in manifest.get("sources", {}).values():
        for d in src.get("delivered", []):
            if d.get("kind") == "dicom" and isinstance(d.get("origin"), str):
                sop = d["origin"].rsplit("/", 1)[-1]
                out.setdefault(d.get("study") or "unknown", {})[sop] = str(d.get("sha256"))
    return out


def study_digest(sha256s) -> str:
    """One hash for a study's instances: sha256 over their sorted sha256s (hex); the
    sender and the receiving gateway compute it alike."""
    return hashlib.sha256("".join(sorted(sha256s)).encode()).hexdigest()
