"""The database on both back ends: migrations build the models' schema, the app upgrades itself,
and a whole sync works the same on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from syncer.errors import ExitCode
from syncer.simulator import Simulator
from syncer.store import Store
from syncer.store.db import alembic_config
from syncer.store.models import Base
from tests.conftest import assert_byte_exact, async_url, sync


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_build_exactly_the_models_schema(database_url: str) -> None:
    store = await Store.open(async_url(database_url))
    try:
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await store.close()


async def test_opening_an_up_to_date_database_is_idempotent(database_url: str) -> None:
    for _ in range(2):
        store = await Store.open(async_url(database_url))
        async with store.engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
        await store.close()
    assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()


async def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/s.db")
    try:
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
    finally:
        await store.close()


async def test_a_full_sync_edit_and_reconcile_work_on_both_back_ends(
    sim: Simulator, settings_for: Any, database_url: str
) -> None:
    settings = settings_for(sim, database={"url": database_url}, mirror={"on_delete": "trash"})
    assert (await sync(settings)).exit_code == ExitCode.OK
    first, second = list(sim.company.photos)[:2]
    sim.edit_photo(first, description="edited")
    sim.delete_photo(second)
    summary = await sync(settings, full=True)
    assert summary.exit_code == ExitCode.OK
    assert sum(r.deleted_upstream for r in summary.results) == 1
    assert_byte_exact(sim, settings)
    store = await Store.open(settings.database_url)
    try:
        status = await store.status()
    finally:
        await store.close()
    assert sum(p.mirrored for p in status) == len(sim.company.photos) - 1
