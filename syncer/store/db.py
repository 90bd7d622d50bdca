"""Engine setup and schema upgrades.

SQLite runs in WAL mode. A transaction that writes begins `BEGIN IMMEDIATE`, so the writer takes
the lock when its transaction starts and `busy_timeout` applies (a deferred transaction that reads
and then writes gets SQLITE_BUSY at once in WAL mode, whatever the timeout). A transaction that
only reads (one from `reader(engine)`) begins deferred: WAL lets it read its snapshot beside a
writer. Had reads taken the write lock too, `syncer status` beside a sync that was writing a page
waited for it through SQLite's sleeping busy handler, or failed after `busy_timeout`, and a
daemon's concurrent turns queued behind each other's reads.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

import syncer
from syncer.errors import NothingYet
from syncer.store.counts import create_triggers
from syncer.store.models import Base

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

READS_ONLY = "syncer_reads_only"
"""The execution option that marks an engine's transactions as read-only (see `reader`)."""
MIGRATION_LOCK = 0x5359_4E43  # "SYNC": the advisory lock key that serialises schema upgrades
SCHEMA_HEAD = "0007"
"""The newest migration in `migrations/` (a test checks). Knowing it here spares every start the
import of Alembic, which is needed only when there is something to migrate."""


def migrations_dir() -> Path:
    """The Alembic scripts: packaged inside a wheel, or the repository's `migrations/`."""
    here = Path(syncer.__file__).resolve().parent
    packaged = here / "_migrations"
    return packaged if packaged.is_dir() else here.parent / "migrations"


def alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


class ReleasingConnection(sqlite3.Connection):
    """A SQLite connection whose close ends its transaction first, as SQLite's own close would.

    A stop (SIGTERM, Ctrl-C, `sync.max_duration`) cancels a task wherever it waits, often on a
    statement in a transaction. SQLAlchemy then invalidates the connection and closes it, but the
    cursor that ran the statement is left open, alive until garbage collection. Python's `close()`
    then leaves SQLite holding the connection, with its transaction and the write lock, as long
    as that cursor lives. Every other statement waited `busy_timeout` and failed: a stopping daemon
    spent 10 s on each write it still had to make (its runs' last results, their end) and could
    hang after 'syncer daemon stopped'. Rolling back first releases the lock at once; `close()`
    runs on the connection's own thread, after the statement it interrupted."""

    def close(self) -> None:
        try:
            if self.in_transaction:
                self.rollback()
        finally:
            super().close()


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for another database)."""
    return Path(url.split("///", 1)[1]) if url.startswith("sqlite") else None


def create_engine(url: str, *, create: bool = True) -> AsyncEngine:
    """An engine on `url`; with `create`, the folder of a SQLite file is made if need be."""
    if (path := sqlite_path(url)) is not None:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"factory": ReleasingConnection})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (see "begin")
            cursor = dbapi_conn.cursor()
            for pragma in (
                "journal_mode=WAL",
                "busy_timeout=10000",
                "synchronous=NORMAL",
                "foreign_keys=ON",
            ):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Connection) -> None:
            deferred = conn.get_execution_options().get(READS_ONLY, False)
            conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")

        return engine
    return create_async_engine(url, pool_pre_ping=True)


def reader(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (pool, dialect, events) for transactions that never write: on SQLite they
    begin deferred and so never wait for the write lock. A write in one fails at once."""
    return engine.execution_options(**{READS_ONLY: True})


def _has_tables(connection: Connection) -> bool:
    return bool(inspect(connection).get_table_names())


def _shown(engine: AsyncEngine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _create(connection: Connection) -> bool:
    """Give an empty database the newest schema at once, stamped with its revision; False (and
    nothing done) if it holds tables already. Running every migration on an empty file cost 0.3 s
    of each first start, a third of a small first sync's (Alembic's import, SQLite's table
    rebuilds); the migrations build the same schema (a test compares the two)."""
    if _has_tables(connection):
        return False
    Base.metadata.create_all(connection)
    create_triggers(connection)
    connection.execute(  # as Alembic makes it, so that a later upgrade reads it
        text(
            "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
            "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
        )
    )
    connection.execute(
        text("INSERT INTO alembic_version (version_num) VALUES (:head)"), {"head": SCHEMA_HEAD}
    )
    return True


def _upgrade(connection: Connection) -> None:
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def _current(conn: AsyncConnection) -> str | None:
    """The schema's revision, or None for a database Alembic has not touched yet."""
    try:
        async with conn.begin_nested() if conn.in_transaction() else conn.begin():
            version: str | None = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            return version
    except SQLAlchemyError:
        return None


async def upgrade(engine: AsyncEngine, *, create: bool = True) -> None:
    """Bring the schema to the newest revision; cheap when it is already there. Without
    `create`, a database with no schema at all is left so (`NothingYet`).

    Workers sharing a PostgreSQL database may start together: one migrates under an advisory
    lock while the others wait, then find the schema current. (SQLite's BEGIN IMMEDIATE
    serialises the same way.)"""
    async with reader(engine).connect() as conn:  # a current schema waits for no writer
        if await _current(conn) == SCHEMA_HEAD:
            return
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        if (current := await _current(conn)) != SCHEMA_HEAD:
            if current is None and not create and not await conn.run_sync(_has_tables):
                raise NothingYet(f"nothing synced yet: the database {_shown(engine)} holds no tables")
            if current is None and await conn.run_sync(_create):
                return
            if current is not None:
                log.warning(
                    "upgrading the database from schema %s to %s: a large one takes minutes (0006 "
                    "rewrites every photo, about 3 minutes a million); stopped, it is left as it was",
                    current,
                    SCHEMA_HEAD,
                )
            await conn.run_sync(_upgrade)
