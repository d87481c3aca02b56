"""Runtime: what every process of the gateway runs on.

The process-wide services built once from settings (database, blob store, keys:
services.py), the Celery app (celery_app.py) and its embedded filesystem broker
(fsbroker.py) for a machine with no Redis, and what operating them needs: readiness
checks (health.py), Prometheus metrics read from the database and broker (metrics.py),
log lines in text or JSON tagged with transfer and case ids (logs.py), and the FHIR models
loaded before a serving process takes work (warmup.py). Tasks are defined
by the rooms that own them and registered here by module name. May import: storage,
trust, `gateway.config`, `gateway.errors`.
"""
