"""Runtime: what every process of the gateway runs on.

The process-wide services built once from settings (database, blob store, keys:
services.py), the Celery app (celery_app.py) and its embedded filesystem broker
(fsbroker.py) for a machine with no Redis. Tasks are defined by the rooms that own them
and registered here by module name. May import: storage, trust, `gateway.config`,
`gateway.errors`.
"""
