"""The database on both back ends: migrations build the models' schema, the app upgrades itself,
and a whole sync works the same on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from syncer.errors import ExitCode
from syncer.simulator import Simulator
from syncer.store import Downloaded, Failed, Store
from syncer.store.db import SCHEMA_HEAD, alembic_config, create_engine
from syncer.store.models import Base
from tests.conftest import assert_byte_exact, async_url, listed_row, project_store, sync
from tests.postgres import new_database


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def _migrate(connection: Connection) -> None:
    """Run every migration, as an existing database is upgraded (a new one is created at once)."""
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def _schema(connection: Connection) -> dict[str, Any]:
    """What a database's schema holds, in an order that does not depend on how it was built
    (columns added by a migration come last in their table)."""
    look = inspect(connection)
    tables: dict[str, Any] = {
        name: {
            "columns": sorted(
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                for c in look.get_columns(name)
            ),
            "primary key": look.get_pk_constraint(name)["constrained_columns"],
            "foreign keys": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                for f in look.get_foreign_keys(name)
            ),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in look.get_indexes(name)
            ),
            "unique": sorted(tuple(u["column_names"]) for u in look.get_unique_constraints(name)),
        }
        for name in look.get_table_names()
    }
    query = (
        "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        if connection.dialect.name == "sqlite"
        else "SELECT DISTINCT trigger_name FROM information_schema.triggers"
    )
    tables["triggers"] = sorted(connection.execute(text(query)).scalars())
    version = "SELECT version_num FROM alembic_version"
    tables["revision"] = connection.execute(text(version)).scalar_one()
    return tables


async def test_migrations_build_exactly_the_models_schema(database_url: str) -> None:
    engine = create_engine(async_url(database_url))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate)
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


@pytest.fixture
def second_database_url(database_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Another empty database on the same back end as `database_url`."""
    if database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path}/second.db"
    return new_database(request.getfixturevalue("postgres_server"))


async def test_a_new_database_is_created_as_the_migrations_build_it(
    database_url: str, second_database_url: str
) -> None:
    """A new database gets the schema at once, not through every migration: the same schema."""
    store = await Store.open(async_url(database_url))
    try:
        async with store.engine.connect() as conn:
            created = await conn.run_sync(_schema)
    finally:
        await store.close()
    engine = create_engine(async_url(second_database_url))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate)
        async with engine.connect() as conn:
            migrated = await conn.run_sync(_schema)
    finally:
        await engine.dispose()
    assert created == migrated
    assert "photos" in created and created["triggers"]


async def test_opening_an_up_to_date_database_is_idempotent(database_url: str) -> None:
    for _ in range(2):
        store = await Store.open(async_url(database_url))
        async with store.engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
        await store.close()
    assert version == SCHEMA_HEAD


def test_the_schema_head_the_app_checks_is_the_newest_migration() -> None:
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == SCHEMA_HEAD


async def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/s.db")
    try:
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
    finally:
        await store.close()


async def test_a_write_cancelled_mid_statement_frees_sqlite_as_it_ends(tmp_path: Path) -> None:
    """A stop cancels a task wherever it waits, often on a statement inside a write. Once the
    cancelled write has ended, SQLite's write lock is free: the next writer need not wait out the
    busy timeout (10 s) while the cancelled statement's cursor awaits garbage collection."""
    path = tmp_path / "s.db"
    async with project_store(f"sqlite:///{path}", PROJECT, "Depot") as store:
        write = asyncio.create_task(store.save_photos([listed(i) for i in range(1, 20_001)]))
        deadline = time.monotonic() + 30
        while not _write_locked(path):
            assert time.monotonic() < deadline and not write.done(), "the write never took the lock"
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)  # into the insert of the rows
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        assert not _write_locked(path)


def _write_locked(path: Path) -> bool:
    """Whether another connection holds the database's write lock now."""
    with closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as probe:
        try:
            probe.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return True
        probe.execute("ROLLBACK")
        return False


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


# -- the engine's queries, the same on both back ends ---------------------------------------------

PROJECT = 3


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    async with project_store(database_url, PROJECT, "Depot") as opened:
        yield opened


def listed(photo_id: int, **fields: Any) -> dict[str, Any]:
    return listed_row(photo_id, PROJECT, **fields)


async def mirror(store: Store, photo_id: int) -> None:
    """Record the photo's current file as downloaded."""
    stored = (await store.stored_photos([photo_id]))[photo_id]
    at = datetime.now(UTC)
    await store.record(
        downloaded=[Downloaded(photo_id, stored.rel_path, stored.file_key, 10, "0" * 64, None, at)]
    )


async def due(store: Store, now: datetime | None = None) -> list[int]:
    return [d.id for d in await store.due_downloads(PROJECT, now or datetime.now(UTC))]


async def test_a_listed_photo_is_due_until_its_file_is_recorded(store: Store) -> None:
    await store.save_photos([listed(1), listed(2)])
    assert await due(store) == [1, 2]
    await mirror(store, 1)
    assert await due(store) == [2]


async def test_relisting_updates_metadata_and_keeps_the_local_file(store: Store) -> None:
    await store.save_photos([listed(1)])
    await mirror(store, 1)
    await store.save_photos([listed(1, description="north wall")])
    stored = (await store.stored_photos([1]))[1]
    assert stored.local_path == f"project-{PROJECT}/1.jpg" and stored.local_file_key == stored.file_key
    assert await due(store) == []


async def test_a_replaced_file_is_due_again(store: Store) -> None:
    await store.save_photos([listed(1)])
    await mirror(store, 1)
    await store.save_photos([listed(1, key="k2", size=11)])
    assert await due(store) == [1]


async def test_a_moved_url_keeps_the_file_and_leaves_its_sidecar_due(store: Store) -> None:
    await store.save_photos([listed(1)])
    first, written = (await store.stored_photos([1]))[1], datetime.now(UTC)
    await store.record(
        downloaded=[Downloaded(1, first.rel_path, first.file_key, 10, "0" * 64, written, written)]
    )
    await store.save_photos([listed(1, key="v5")], moved_urls=[1])
    stored = (await store.stored_photos([1]))[1]
    assert stored.local_file_key == stored.file_key and await due(store) == []
    assert stored.sidecar_of is None, "the sidecar still names the old URL"


async def test_a_failed_photo_waits_for_its_retry_time_unless_retried_now(store: Store) -> None:
    await store.save_photos([listed(1)])
    now = datetime.now(UTC)
    await store.record(failed=[Failed(1, "HTTP 500", now + timedelta(minutes=5))])
    assert await due(store, now) == []
    assert await due(store, now + timedelta(minutes=6)) == [1]
    assert await store.failing_count(PROJECT) == 1
    assert await store.retry_now([PROJECT]) == 1
    assert await due(store, now) == [1]


async def test_a_photo_marked_deleted_is_not_due_and_returns_when_listed_again(store: Store) -> None:
    await store.save_photos([listed(1), listed(2)])
    await store.mark_deleted([2], datetime.now(UTC))
    assert await due(store) == [1]
    assert await store.live_ids(PROJECT) == {1}
    await store.save_photos([listed(2)])
    assert await store.live_ids(PROJECT) == {1, 2}


async def test_the_checkpoint_and_the_last_full_run_are_kept_per_project(store: Store) -> None:
    first, second = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    await store.set_checkpoint(PROJECT, first, full=True)
    await store.set_checkpoint(PROJECT, second, full=False)
    assert await store.checkpoint(PROJECT) == second
    assert await store.marks(PROJECT) == (second, first)


async def test_status_counts_known_mirrored_pending_and_failed_photos(store: Store) -> None:
    await store.save_photos([listed(1), listed(2), listed(3)])
    await mirror(store, 1)
    await store.record(failed=[Failed(2, "HTTP 500", datetime.now(UTC) + timedelta(hours=1))])
    (status,) = await store.status()
    assert (status.known, status.mirrored, status.pending, status.failed, status.bytes) == (3, 1, 2, 1, 10)
    assert [f["id"] for f in status.failures] == [2]


async def test_upgrading_fills_the_trades_column_from_each_record(
    sim: Simulator, settings_for: Any, database_url: str
) -> None:
    settings = settings_for(sim, database={"url": database_url})
    assert (await sync(settings)).exit_code == ExitCode.OK

    def back_to_0003(connection: Connection) -> None:
        from alembic import command

        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0003")

    store = await Store.open(settings.database_url)
    async with store.engine.begin() as conn:
        await conn.run_sync(back_to_0003)
    await store.close()
    store = await Store.open(settings.database_url)  # upgrades to the head again
    try:
        archived = await store.archived()
    finally:
        await store.close()
    expected = {p.id: tuple(t["name"] for t in p.trades) for p in sim.company.photos.values()}
    assert any(expected.values())
    assert {a.id: a.trades for a in archived} == expected


async def test_an_archive_digest_names_the_sha256_of_each_file_in_hex(store: Store) -> None:
    await store.save_photos([listed(1), listed(2)])
    sha = "ab" * 32
    for photo_id in (1, 2):
        stored = (await store.stored_photos([photo_id]))[photo_id]
        at = datetime.now(UTC)
        await store.record(
            downloaded=[Downloaded(photo_id, f"{photo_id}.jpg", stored.file_key, 10, sha, None, at)]
        )
    (digest,) = (await store.archive_digests()).values()
    assert (digest.photos, digest.hashes) == (2, {sha})
    assert [a.sha256 for a in await store.archived()] == [sha, sha]
