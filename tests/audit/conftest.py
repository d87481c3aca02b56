"""Fixtures for the audit log tests: SQLite files, throwaway PostgreSQL databases, keys."""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, event, text

from gateway.storage.models import Base
from gateway.storage.sealed import ColumnKeys, bind_keys

sys.path.insert(0, str(Path(__file__).parent))  # audit_tamper, shared with bench/

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


class PgDatabases:
    """Creates empty databases on the local PostgreSQL and drops them all at teardown."""

    def __init__(self):
        self.admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        self.created: list[tuple[str, object]] = []

    def new(self, **engine_kw):
        name = f"audit_test_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", **engine_kw)
        bind_keys(engine, ColumnKeys(os.urandom(32)))  # the deployment's at-rest key (sealed columns)
        self.created.append((name, engine))
        return engine

    def close(self):
        for name, engine in self.created:
            engine.dispose()
            with self.admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(scope="session")
def pg_databases():
    dbs = PgDatabases()
    try:
        with dbs.admin.connect() as c:
            c.execute(text("SELECT 1"))
    except Exception as exc:  # the suite's runner starts PostgreSQL; say so if it is not up
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is not reachable: {exc}")
    yield dbs
    dbs.close()


def _sqlite_pragmas(dbapi_conn, _record):
    """As the gateway opens SQLite: WAL, and wait for the write lock instead of failing."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


@pytest.fixture
def sqlite_engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'gateway.db'}",
                           connect_args={"timeout": 30})
    event.listen(engine, "connect", _sqlite_pragmas)
    bind_keys(engine, ColumnKeys(os.urandom(32)))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(pg_databases):
    engine = pg_databases.new(pool_size=8)
    Base.metadata.create_all(engine)
    return engine


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request):
    """The same test on SQLite and on PostgreSQL."""
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    return request.getfixturevalue(name)


@pytest.fixture(scope="session")
def log_key():
    return Ed25519PrivateKey.generate()
