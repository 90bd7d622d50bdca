"""The promises of docs/guarantees.md ("What a successful run guarantees", "What a run does"), from
the outside: a real `syncer` process, a simulator nasty enough to break a naive tool, and
assertions on the mirror's bytes and the database."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from syncer.config import load_settings
from syncer.errors import ExitCode
from syncer.simulator import Simulator
from syncer.simulator.server import ListingRequest
from tests.conftest import assert_byte_exact, db_rows, in_mirror, lose_database, sync, write_config
from tests.test_cli import Run, assert_no_traceback, spawn, syncer
from tests.test_daemon import daemon, daemon_config, eventually, stop
from tests.test_workers import SHARED, finish, shared_config, start_worker

# -- the window ends when the run starts -----------------------------------------------------------


async def test_photos_added_edited_or_replaced_just_before_a_run_are_in_it(
    make_sim: Any, tmp_path: Path, times: dict[str, Any]
) -> None:
    sim = await make_sim(**times)
    config = write_config(sim, tmp_path, sync={"per_page": 100, "overlap": "1m"})
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    project = min(sim.company.projects)
    existing = sorted(p.id for p in sim.company.photos.values() if p.project_id == project)
    for _ in range(40):
        sim.add_photo(project)
    for photo_id in existing[:30]:
        sim.edit_photo(photo_id, description="edited a moment before the run")
    for photo_id in existing[30:40]:
        sim.replace_photo(photo_id)
    listed = sim.stats.requests["images"]
    run = await syncer("sync", "--config", str(config))  # at once: no lag may hide them
    assert run.code == ExitCode.OK, run.out + run.err
    assert_byte_exact(sim, load_settings(config))
    sidecars = [
        p.read_text() for p in (tmp_path / "mirror").rglob("*.json") if in_mirror(p, tmp_path / "mirror")
    ]
    assert sum("edited a moment before the run" in s for s in sidecars) == 30
    assert sim.stats.requests["images"] - listed <= len(sim.company.projects) + 2, "a few list pages"


async def test_a_daemon_every_2s_mirrors_a_new_photo_within_seconds(sim: Simulator, tmp_path: Path) -> None:
    config = daemon_config(sim, tmp_path, schedule={"incremental": {"every": "2s"}})
    async with daemon(config, tmp_path) as running:
        await eventually(running.runs, what="the first runs")
        added = sim.add_photo(min(sim.company.projects))
        started = time.monotonic()

        def mirrored() -> bool:
            return any(p.name.startswith(f"{added.id}_") for p in (tmp_path / "mirror").rglob("*.jpg"))

        await eventually(mirrored, within=15, what="the new photo in the mirror")
        took = time.monotonic() - started
        assert (await stop(running))[0] == 0
    assert took < 6, f"the new photo took {took:.1f} s to reach the mirror"


# -- the proof can always be reached -----------------------------------------------------------------


async def test_a_bulk_import_tied_in_both_times_is_proven_with_pages_of_100(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=300, projects=1, tied=250, max_per_page=100)
    tied = sim.tied_photos()
    assert len(tied) == 250
    changed = False

    def edit_and_delete_during_page_2(request: ListingRequest) -> None:
        nonlocal changed
        if request.page == 2 and not changed:
            changed = True
            for photo_id in tied[:40]:
                sim.edit_photo(photo_id, description="edited while the listing ran")
            for photo_id in tied[40:60]:
                sim.delete_photo(photo_id)

    sim.listing_hooks.append(edit_and_delete_during_page_2)
    config = write_config(sim, tmp_path, sync={"per_page": 100})
    run = await syncer("sync", "--config", str(config))
    assert changed
    assert run.code == ExitCode.OK, run.out + run.err
    assert_byte_exact(sim, load_settings(config))
    assert "photos in one second, proven by" in run.out, "the cost of the tie is reported"
    assert sim.stats.requests["images"] <= 80, sim.stats.requests["images"]


# -- one retry layer ----------------------------------------------------------------------------------


async def test_a_photo_is_tried_at_most_retry_attempts_times_in_a_run(
    make_sim: Any, settings_for: Any
) -> None:
    sim = await make_sim(photos=6, projects=1)
    broken = min(sim.expected_files())
    sim.config.broken_files.add(broken)
    settings = settings_for(sim, procore={"retry_attempts": 3})
    summary = await sync(settings)
    assert summary.exit_code == ExitCode.INCOMPLETE
    assert [pid for pid, _, _ in summary.results[0].failures] == [broken]
    assert sim.stats.file_requests[broken] == 3, "one retry layer: 3 tries in all, not 3 x 3"


# -- SIGTERM keeps what is finished ---------------------------------------------------------------


async def test_sigterm_on_a_sync_records_every_installed_file_and_exits_130(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=40, projects=1, photo_size=200_000, bandwidth=1_000_000)
    config = write_config(sim, tmp_path, sync={"concurrency": 2})
    root = tmp_path / "mirror"

    def installed() -> list[Path]:
        return [p for p in root.rglob("*.jpg") if in_mirror(p, root)]

    proc = await spawn("sync", "--config", str(config))
    while len(installed()) < 5 and proc.returncode is None:
        await asyncio.sleep(0.02)
    assert proc.returncode is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    out, err = await asyncio.wait_for(proc.communicate(), timeout=15)
    took = time.monotonic() - started
    run = Run(proc.returncode or 0, out.decode(), err.decode())
    assert run.code == ExitCode.INTERRUPTED and took < 10, (run.code, took, run.err)
    assert_no_traceback(run)
    settings = load_settings(config)
    on_disk = {p.relative_to(root).as_posix() for p in installed()}
    recorded = {
        row[0] for row in db_rows(settings, "SELECT local_path FROM photos WHERE local_path IS NOT NULL")
    }
    assert on_disk and on_disk <= recorded, f"installed but not recorded: {sorted(on_disk - recorded)[:5]}"
    outcomes = [row[0] for row in db_rows(settings, "SELECT outcome FROM sync_runs ORDER BY id")]
    # a row per turn; the stop may find a turn at its end, so none need be interrupted, but none
    # is left running
    assert set(outcomes) <= {"ok", "interrupted"}, outcomes
    kept = {row[0] for row in db_rows(settings, "SELECT id FROM photos WHERE local_path IS NOT NULL")}
    asked = Counter(sim.stats.file_requests)  # counted as each request arrives: no race at the end
    rerun = await syncer("sync", "--config", str(config))
    assert rerun.code == ExitCode.OK, rerun.err
    again = Counter(sim.stats.file_requests) - asked
    assert set(again) == set(sim.expected_files()) - kept, "nothing recorded is fetched again"
    assert set(again.values()) == {1}
    assert_byte_exact(sim, settings)


# -- local faults stop the run; they are not the photos' fault --------------------------------------


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A small disk mounted at `folder`, made if missing; skips where mounting is refused."""
    folder.mkdir(exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    mounted = subprocess.run(command, check=False, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a small disk needs a tmpfs mount, refused here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB disk where the mirror goes: it fills up part-way through a first sync."""
    with tmpfs(tmp_path / "mirror", "256k") as folder:
        yield folder


def remount(folder: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)


def blamed_photos(config: Path) -> list[tuple[Any, ...]]:
    """Photos whose failure count or retry time the runs changed."""
    query = "SELECT id FROM photos WHERE attempts > 0 OR next_retry_at IS NOT NULL"
    return db_rows(load_settings(config), query)


async def test_a_full_disk_stops_the_run_and_blames_no_photo(sim: Simulator, small_disk: Path) -> None:
    config = write_config(sim, small_disk.parent)
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.INCOMPLETE
    assert_no_traceback(run)
    (line,) = run.err.strip().splitlines()
    assert "No space left on device" in line and str(small_disk) in line, line
    assert blamed_photos(config) == []
    remount(small_disk, "size=64m")  # room made: a plain sync finishes the job
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.OK, run.out + run.err
    assert_byte_exact(sim, load_settings(config))


async def test_a_read_only_mirror_stops_the_run_and_blames_no_photo(sim: Simulator, small_disk: Path) -> None:
    remount(small_disk, "size=64m")
    config = write_config(sim, small_disk.parent)
    (small_disk / ".syncer" / "tmp").mkdir(parents=True)  # as an earlier run left it
    remount(small_disk, "ro")
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.INCOMPLETE
    assert_no_traceback(run)
    assert "Read-only file system" in run.err and len(run.err.strip().splitlines()) == 1, run.err
    assert blamed_photos(config) == []
    remount(small_disk, "rw")
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK


async def test_a_mirror_root_that_is_a_file_is_one_line_and_exit_1(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path)
    (tmp_path / "mirror").write_text("not a folder")
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.INCOMPLETE
    assert_no_traceback(run)
    expected = (
        f"mirror.root {tmp_path / 'mirror'} is not a folder: point mirror.root at a folder the user running "
        "syncer can write, or let it write there"
    )
    assert run.err.strip() == f"syncer: {expected}"


async def test_a_full_database_stops_the_run_and_a_rerun_completes(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=400, projects=1, photo_size=2_000)
    with tmpfs(tmp_path / "state", "160k") as state:
        config = write_config(sim, tmp_path)
        run = await syncer("sync", "--config", str(config))
        assert run.code == ExitCode.INCOMPLETE
        assert_no_traceback(run)
        (line,) = run.err.strip().splitlines()
        assert "database or disk is full" in line and "syncer.db" in line, line
        remount(state, "size=64m")
        run = await syncer("sync", "--config", str(config))
        assert run.code == ExitCode.OK, run.out + run.err
        assert blamed_photos(config) == []
        assert_byte_exact(sim, load_settings(config))


# -- the mirror is adopted, not downloaded again --------------------------------------------------


def fetched(sim: Simulator) -> int:
    """File bodies the object store has sent in full."""
    return sum(sim.stats.downloads.values())


async def test_a_lost_database_costs_a_listing_and_a_hash_not_a_download(
    sim: Simulator, tmp_path: Path
) -> None:
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    before = fetched(sim)
    lose_database(tmp_path)
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.OK, run.out + run.err
    assert fetched(sim) == before, "no photo was downloaded again"
    assert "already in the mirror (hashed, not fetched)" in run.out
    verified = await syncer("verify", "--config", str(config))
    assert verified.code == ExitCode.OK, verified.out
    assert_byte_exact(sim, load_settings(config))


async def test_a_file_that_does_not_hash_to_its_sidecar_is_downloaded_again(
    sim: Simulator, tmp_path: Path
) -> None:
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    before = fetched(sim)
    root = tmp_path / "mirror"
    tampered = next(p for p in sorted(root.rglob("*.jpg")) if in_mirror(p, root))
    tampered.write_bytes(tampered.read_bytes()[:-1] + b"\x00")  # same size, other bytes
    lose_database(tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    assert fetched(sim) == before + 1, "only the file that failed its hash was fetched"
    assert_byte_exact(sim, load_settings(config))


async def test_a_mirror_made_with_sqlite_moves_to_postgresql_without_downloads(
    sim: Simulator, tmp_path: Path, pg_url: str
) -> None:
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    before = fetched(sim)
    moved = write_config(sim, tmp_path, database={"url": pg_url})  # only a config change
    run = await syncer("sync", "--config", str(moved))
    assert run.code == ExitCode.OK, run.out + run.err
    assert fetched(sim) == before
    assert (await syncer("verify", "--config", str(moved))).code == ExitCode.OK


async def test_a_worker_killed_between_install_and_record_costs_at_most_its_concurrency(
    make_sim: Any, tmp_path: Path, pg_url: str
) -> None:
    sim = await make_sim(**{**SHARED, "projects": 1, "photos": 120, "bandwidth": 600_000})
    config = shared_config(sim, tmp_path, pg_url)
    procs = [await start_worker(config) for _ in range(3)]
    while fetched(sim) < 40:
        await asyncio.sleep(0.01)
    victim = procs[0]
    os.kill(victim.pid, signal.SIGKILL)
    assert await victim.wait() == -signal.SIGKILL
    survivors = [await finish(p) for p in procs[1:]]
    assert all(code == ExitCode.OK for code, _ in survivors), survivors
    assert_byte_exact(sim, load_settings(config))
    concurrency = load_settings(config).sync.concurrency
    assert fetched(sim) <= 120 + concurrency, "only the downloads in flight when it died were repeated"


async def test_a_state_folder_it_cannot_write_is_one_line_naming_it_before_any_database_exists(
    sim: Simulator, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "state", "1m") as state:
        remount(state, "ro")
        run = await syncer("sync", "--config", str(write_config(sim, tmp_path)))
        remount(state, "rw")
    assert run.code == ExitCode.INCOMPLETE
    assert run.err.strip() == (
        f"syncer: database {state / 'syncer.db'}: its folder {state} is on a read-only file system (SQLite "
        "writes its journal beside the database): let the user running syncer write there, or point "
        "database.url at a folder it can write"
    )


async def test_a_read_only_database_is_one_line_and_a_rerun_completes(sim: Simulator, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "state", "64m") as state:
        config = write_config(sim, tmp_path)
        assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
        sim.add_photo(min(sim.company.projects))
        remount(state, "ro")
        run = await syncer("sync", "--config", str(config))
        assert run.code == ExitCode.INCOMPLETE
        assert_no_traceback(run)
        (line,) = run.err.strip().splitlines()
        assert "read-only" in line, line
        assert "syncer.db" in line, line
        remount(state, "rw")
        assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
        assert blamed_photos(config) == []
        assert_byte_exact(sim, load_settings(config))
