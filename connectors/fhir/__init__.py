"""Pieces of the FHIR R4 REST connector (connectors/fhir_rest.py): HTTP with retries and
the base-URL guard, SMART Backend Services auth, the retrieval plan, page splitting,
attachments and the resume journal."""
