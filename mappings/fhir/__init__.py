"""Pieces of the FHIR R4 mapping (mappings/fhir_r4.py): JSON that keeps every number's
text (jsontext.py, shared with the gateway's exchange format), the checks of a resource
(validate.py: fast R4B validation, R4's own definitions for the types R4B lacks;
schema_check.py: a faster first check of pulled resources that accepts only what the R4B
models accept) and the data class / clinical date of a resource (classify.py)."""
