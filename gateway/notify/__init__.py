"""Notifications: telling people what the gateway did, with ids, states and links only.

Owns the closed set of events and their payloads (events.py: a whitelist, no free text,
no patient data), the durable outbox written in the caller's transaction (outbox.py:
`publish`, list, replay), the channels (webhook.py: HMAC-SHA256 signed POSTs and
`verify_signature` for receivers; smtp.py: email over STARTTLS with AUTH), sending due
notifications with retries, backoff and dead-lettering (delivery.py: `deliver_due`),
the announcement of authorizations about to expire (expiring.py) and their Celery tasks
(tasks.py). May import: runtime, trust, audit, storage, `gateway.config`,
`gateway.errors`, connectors; the engine, the sending and receiving sides and the faces
call `publish`. The runtime names tasks.py by string only, never importing this room.
"""
from .outbox import publish

__all__ = ["publish"]
