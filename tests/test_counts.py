"""A small, fast database: each project's counts kept as photos change (never drifting from the
rows), the run history pruned, and migration 0006 moving an existing database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select, text

from syncer.config import load_settings
from syncer.errors import ExitCode
from syncer.procore.models import Project
from syncer.simulator import Simulator
from syncer.store import Downloaded, Store
from syncer.store.counts import SCAN
from syncer.store.db import alembic_config
from syncer.store.models import SyncRunRow
from tests.conftest import async_url, listed_row, lose_database, project_store, write_config
from tests.test_cli import syncer

ONE_TRY = {"retry_attempts": 1}
"""A broken file fails at once, not after backing off."""


async def kept_and_counted(url: str) -> tuple[dict[int, tuple[Any, ...]], dict[int, tuple[Any, ...]]]:
    """Each project's counts as kept in `project_counts`, and as a fresh count of its photo rows."""
    store = await Store.open(async_url(url))
    try:
        async with store.engine.connect() as conn:
            columns = "project_id, known, mirrored, pending, failed, bytes, last_change_at"
            kept = await conn.execute(text(f"SELECT {columns} FROM project_counts"))
            counted = await conn.execute(text(SCAN))
            return (
                {row[0]: tuple(row[1:]) for row in kept},
                {row[0]: (*(int(n) for n in row[1:6]), row[6]) for row in counted},
            )
    finally:
        await store.close()


async def test_kept_counts_equal_a_fresh_count_through_failures_deletions_moves_and_retries(
    make_sim: Any, tmp_path: Path, database_url: str
) -> None:
    sim: Simulator = await make_sim(photos=40, projects=2)
    photos = sorted(sim.company.photos)
    sim.config.broken_files.update(photos[:3])
    sections = {"database": {"url": database_url}, "mirror": {"on_delete": "trash"}, "procore": ONE_TRY}
    config = str(write_config(sim, tmp_path, **sections))
    seen = []

    async def step(*args: str, code: ExitCode = ExitCode.OK) -> None:
        run = await syncer(*args, "--config", config)
        assert run.code == code, run.out + run.err
        kept, counted = await kept_and_counted(database_url)
        assert kept == counted, f"after `syncer {' '.join(args)}`"
        seen.append(kept)

    await step("sync", code=ExitCode.INCOMPLETE)  # three downloads fail
    sim.delete_photo(photos[5])
    sim.replace_photo(photos[6])
    sim.edit_photo(photos[7], description="after the pour")
    sim.move_file_urls()
    await step(
        "sync", "--full", code=ExitCode.INCOMPLETE
    )  # a deletion (to the trash), a new file, moved URLs
    sim.restore_photo(photos[5])
    await step("sync", code=ExitCode.INCOMPLETE)  # back from the trash
    sim.config.broken_files.clear()
    await step("retry-failed")
    await step("sync", "--new-mirror")
    failed = [sum(c[3] for c in kept.values()) for kept in seen]
    assert failed == [3, 3, 3, 0, 0], "the failures were counted, then their retry"
    assert sum(c[0] for c in seen[-1].values()) == 40


async def test_kept_counts_equal_a_fresh_count_when_a_lost_database_adopts_the_mirror(
    sim: Simulator, tmp_path: Path
) -> None:
    config = str(write_config(sim, tmp_path))
    assert (await syncer("sync", "--config", config)).code == ExitCode.OK
    lose_database(tmp_path)
    run = await syncer("sync", "--config", config)
    assert run.code == ExitCode.OK and "already in the mirror" in run.out, run.out + run.err
    kept, counted = await kept_and_counted(load_settings(Path(config)).database.url)
    assert kept == counted and sum(c[1] for c in kept.values()) == len(sim.company.photos)


async def test_a_projects_last_change_is_the_newest_update_of_its_photos(
    make_sim: Any, tmp_path: Path
) -> None:
    sim: Simulator = await make_sim(photos=10, projects=1)
    config = str(write_config(sim, tmp_path))
    assert (await syncer("sync", "--config", config)).code == ExitCode.OK
    edited = sim.edit_photo(sorted(sim.company.photos)[3], description="moved to level 2")
    assert (await syncer("sync", "--config", config)).code == ExitCode.OK
    store = await Store.open(load_settings(Path(config)).database_url)
    try:
        (status,) = await store.status()
    finally:
        await store.close()
    assert status.last_change_at == edited.updated_at.replace(microsecond=0)  # as Procore shows it


async def add_runs(url: str, project_id: int, *ages: timedelta) -> None:
    """Finished runs of the project that started these long ago."""
    store = await Store.open(async_url(url))
    try:
        for age in ages:
            at = datetime.now(UTC) - age
            run = await store.start_run(
                project_id, started_at=at, window_start=None, window_end=at, full=False
            )
            await store.finish_run(
                run,
                finished_at=at,
                outcome="ok",
                listed=0,
                new=0,
                changed=0,
                downloaded=0,
                bytes_=0,
                failed=0,
                errors=[],
            )
    finally:
        await store.close()


async def run_ages(url: str) -> dict[int, list[int]]:
    """Each project's runs, by their age in whole days, oldest first."""
    store = await Store.open(async_url(url))
    try:
        async with store.engine.connect() as conn:
            rows = await conn.execute(
                select(SyncRunRow.project_id, SyncRunRow.started_at).order_by(SyncRunRow.id)
            )
            ages: dict[int, list[int]] = {}
            for project_id, started in rows:
                ages.setdefault(project_id, []).append((datetime.now(UTC) - started).days)
            return ages
    finally:
        await store.close()


async def test_a_sync_forgets_runs_older_than_keep_runs_but_each_projects_last(
    make_sim: Any, tmp_path: Path
) -> None:
    sim: Simulator = await make_sim(photos=10, projects=2)
    synced, idle = sorted(sim.company.projects)
    url = f"sqlite:///{tmp_path}/state/syncer.db"
    config = str(write_config(sim, tmp_path, database={"url": url, "keep_runs": "30d"}))
    store = await Store.open(async_url(url))
    projects = [Project(id=i, name=f"project {i}", active=True) for i in (synced, idle)]
    await store.save_projects(sim.config.company_id, projects)
    await store.close()
    await add_runs(url, synced, timedelta(days=100), timedelta(days=40), timedelta(days=10))
    await add_runs(url, idle, timedelta(days=90), timedelta(days=60))
    assert (await syncer("sync", "--config", config, "--project", str(synced))).code == ExitCode.OK
    ages = await run_ages(url)
    assert [age for age in ages[synced] if age > 0] == [10], "this run's turns are today's"
    assert ages[idle] == [60]


async def test_keep_runs_below_an_hour_is_refused_naming_the_key(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path, database={"keep_runs": "10m"})
    run = await syncer("status", "--config", str(config))
    assert run.code == ExitCode.USAGE
    assert "database.keep_runs: expected a duration of an hour or more" in run.err


def back_to_0005(connection: Connection) -> None:
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.downgrade(cfg, "0005")


async def test_upgrading_a_0005_database_keeps_every_record_and_starts_the_counts(
    make_sim: Any, tmp_path: Path, database_url: str
) -> None:
    sim: Simulator = await make_sim(photos=30, projects=2)
    sim.config.broken_files.add(sorted(sim.company.photos)[0])
    config = str(write_config(sim, tmp_path, database={"url": database_url}, procore=ONE_TRY))
    assert (await syncer("sync", "--config", config)).code == ExitCode.INCOMPLETE
    store = await Store.open(async_url(database_url))
    try:
        before = (await store.mirrored_files(), await store.archived(), await store.status())
        async with store.engine.begin() as conn:
            await conn.run_sync(back_to_0005)
        async with store.engine.connect() as conn:
            (record, sha) = (
                await conn.execute(
                    text("SELECT raw_json, sha256 FROM photos WHERE sha256 IS NOT NULL LIMIT 1")
                )
            ).one()
    finally:
        await store.close()
    assert isinstance(record, str) and isinstance(sha, str) and len(sha) == 64, "rows as 0005 kept them"

    store = await Store.open(async_url(database_url))  # upgrades to the head again
    try:
        after = (await store.mirrored_files(), await store.archived(), await store.status())
    finally:
        await store.close()
    assert after == before
    kept, counted = await kept_and_counted(database_url)
    assert kept == counted and sum(c[3] for c in kept.values()) == 1
    assert (await syncer("verify", "--config", config)).code == ExitCode.OK


async def test_a_listing_page_and_downloads_of_one_project_never_deadlock_on_postgresql(pg_url: str) -> None:
    """On PostgreSQL a listing worker saves a page of a project's photos while another worker
    records downloads of some of the same photos: both change the project's counts."""
    async with project_store(pg_url, 7, "Depot") as lister, project_store(pg_url, 7, "Depot") as downloader:
        rows = [listed_row(i, 7) for i in range(1, 301)]
        await lister.save_photos(rows)
        stored = await lister.stored_photos([row["id"] for row in rows])
        for attempt in range(20):
            at = datetime.now(UTC)
            done = [
                Downloaded(i, f"{i}.{attempt}.jpg", s.file_key, 10, "0" * 64, None, at)
                for i, s in stored.items()
            ]
            results = await asyncio.gather(
                lister.save_photos(rows), downloader.record(downloaded=done[::-1]), return_exceptions=True
            )
            assert [r for r in results if r is not None] == []
            await lister.record_removed(list(stored))
        kept, counted = await kept_and_counted(pg_url)
        assert kept == counted
