"""Storage: the database (engine, sessions, Alembic migrations), its tables, and the
encrypted blob store for records in flight.

The database is the source of truth for every transfer and everything received; the
blob store holds bytes, AES-256-GCM encrypted, named by key. Columns that can hold patient
data are sealed with keys derived from the same at-rest master key (`sealed.py`). May import:
`gateway.errors` and `gateway.config` only; every other room builds on it.
"""
