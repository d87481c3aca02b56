"""The second-opinion center's requests: take the patient's request once, ask every
provider, track each answer, and tell the patient where things stand.

Owns the request form and its checks (form.py), the filled form as a PDF (pdf.py), the
intake issuer key that signs the authorizations and their revocations (keys.py), the
requests and each provider's status (requests.py), asking a peer gateway or a fax-only
records office (sending.py), faxed replies (faxes.py), what arrived and what is late
(progress.py), one-time form tokens and status links (tokens.py), the patient's status
view (status.py) and the Celery tasks (tasks.py). This is the receiving side: it reads
what the receive mode stored (received bundles) but never imports `inbound` or
`outbound`. May import: engine (fax cover keys), runtime, notify, trust, audit, storage,
exchange, connectors and mappings; never the faces.
"""
