"""Pieces of the FHIR R4 mapping (mappings/fhir_r4.py): fast R4B validation and the
data class / clinical date of a resource."""
