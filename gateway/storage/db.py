"""Engine, sessions and schema migrations (Alembic) for SQLite or PostgreSQL."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from .sealed import ColumnKeys, bind_keys

MIGRATIONS = Path(__file__).with_name("migrations")


class _NoRows(logging.Filter):
    """SQLAlchemy logs every row a query returns at DEBUG, after the sealed columns are
    opened: records never reach a log, whatever level an operator sets."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


logging.getLogger("sqlalchemy.engine.Engine").addFilter(_NoRows())


def _sqlite_pragmas(dbapi_conn, _record):
    # WAL lets the API read while a worker writes; busy_timeout waits instead of failing
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _private_sqlite_file(url: str) -> None:
    """The SQLite file holds authorizations and Consents: readable by this user only
    (0600; SQLite gives its -wal and -shm files the database file's permissions)."""
    path = url.split(":///", 1)[1].split("?", 1)[0] if ":///" in url else ""
    if path and path != ":memory:":
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)


class Database:
    """The database of one deployment. `master_key` is its at-rest key (the blob store's):
    patient-bearing columns are sealed with keys derived from it (sealed.py)."""

    def __init__(self, url: str, master_key: bytes):
        self.url = url
        # hide_parameters: a statement's values (sealed or not) stay out of logs and errors
        if url.startswith("sqlite"):
            _private_sqlite_file(url)
            self.engine: Engine = create_engine(url, connect_args={"timeout": 30},
                                                hide_parameters=True)
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                                        hide_parameters=True)
        bind_keys(self.engine, ColumnKeys(master_key))
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def upgrade(self, revision: str = "head") -> None:
        """Bring the schema to the newest migration, or to `revision` (idempotent)."""
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        sqlite = self.engine.dialect.name == "sqlite"
        with self.engine.connect() as conn:
            if sqlite:  # batch mode copies tables other tables refer to (outside a transaction)
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                conn.commit()
            try:
                with conn.begin():
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, revision)
            finally:
                if sqlite:
                    conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                    conn.commit()

    def revisions(self) -> tuple[str | None, str | None]:
        """The schema's migration now and the newest there is (equal when up to date)."""
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        return current, ScriptDirectory.from_config(cfg).get_current_head()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()


def lock_for_update(session: Session) -> None:
    """Call before reading rows this transaction will write back (and read them with FOR
    UPDATE): nothing another process commits can then slip between the read and the
    write. PostgreSQL locks the rows read FOR UPDATE. SQLite has no row locks, and its
    driver starts a transaction only at the first write, so the reads before it see a
    state that may be gone by the write; the database's write lock, taken first (BEGIN
    IMMEDIATE, waiting as long as any write would), closes that gap."""
    conn = session.connection()
    if conn.dialect.name == "sqlite" and not conn.connection.driver_connection.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def get_for_update(session: Session, model, key):
    """The row (or None), held until the transaction ends (lock_for_update) and read
    afresh under that hold even if this session had loaded it before."""
    lock_for_update(session)
    return session.get(model, key, with_for_update=True, populate_existing=True)
