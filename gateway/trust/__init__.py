"""Trust: who may sign what, and checking it.

Owns the issuer trust store (issuers.py), signed release authorizations (authorizations/:
schema, verification, storage, revocation, and the issuing side for the demo and tests),
the gateway's own keys (keys.py), bearer API tokens (tokens.py), and the signatures over
bundles and the delivery and "opened" receipts both sides verify (receipts.py).
May import: storage, audit, `gateway.errors`, `gateway.config`, mappings (the Consent).
"""
