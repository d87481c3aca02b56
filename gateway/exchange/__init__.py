"""The exchange format: what a sending and a receiving gateway must agree on, byte for byte.

Owns the ids both sides derive (bundle ids, `urn:uuid` full URLs, upload ids and their
ETags), the canonical JSON and entry hashes a receipt names, the bundle's grouping
extensions, the marks of the entries a bundle carries about itself (the SubmissionSet,
the patient summary, the manifest), how a DocumentReference points at an uploaded
Binary, and how the completeness manifest lists the DICOM instances sent beside a bundle
(with each study's digest). Pure functions and constants: it imports nothing of the gateway, so the sending
side (`gateway.outbound`) and the receiving side (`gateway.inbound`) both import it and
never each other.
"""
