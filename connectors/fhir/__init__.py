"""FHIR R4 REST: the "fhir-rest" connector (connector.py) and its pieces: HTTP with retries and
the base-URL guard, SMART Backend Services auth, the retrieval plan, page splitting,
attachments and the resume journal."""
