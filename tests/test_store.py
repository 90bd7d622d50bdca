"""The database: migrations build exactly the models' schema, and the app upgrades itself."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text

from syncer.store import Store
from syncer.store.models import Base


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_build_exactly_the_models_schema(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/s.db")
    try:
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await store.close()


async def test_opening_an_up_to_date_database_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/s.db"
    for _ in range(2):
        store = await Store.open(url)
        async with store.engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
        await store.close()
    assert version == "0002"


async def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/s.db")
    try:
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
    finally:
        await store.close()
