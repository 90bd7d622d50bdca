"""Crash safety: interrupted and killed runs leave no torn file, and the next run finishes the job."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

from syncer.config import Settings, load_settings
from syncer.errors import ExitCode
from syncer.simulator import Simulator
from tests.conftest import assert_byte_exact, db_rows, stored_time, sync, write_config
from tests.test_cli import spawn, syncer

BIG = {"photos": 12, "projects": 1, "photo_size": 3_000_000, "bandwidth": 4_000_000}


def assert_no_torn_files(sim: Simulator, root: Path) -> None:
    """Every file at a final path is a complete photo or a complete sidecar; partial data lives
    only under .syncer/."""
    for path in root.rglob("*"):
        if not path.is_file() or ".syncer" in path.relative_to(root).parts:
            continue
        if path.name.endswith(".json"):
            json.loads(path.read_text(encoding="utf-8"))
            continue
        photo = sim.company.photos[int(path.name.split("_", 1)[0])]
        assert path.read_bytes() == photo.content.all_bytes(), f"torn or foreign file at {path}"


def durable_marks(settings: Settings) -> list[Path]:
    """The records of parts with a durable prefix, which a later run may resume."""
    return list((settings.mirror.root / ".syncer" / "tmp").glob("*.part.json"))


async def interrupt_after(sim: Simulator, settings: Settings, sent: int) -> None:
    """Start a sync and cancel it once the object store has sent `sent` bytes and at least one part
    has a durable mark. (Bytes sent can sit in socket buffers on a loaded machine; waiting for the
    mark keeps "there is something to resume" true however slowly the client reads.)"""
    task = asyncio.create_task(sync(settings))
    while (sim.stats.bytes_sent < sent or not durable_marks(settings)) and not task.done():
        await asyncio.sleep(0.02)
    assert not task.done(), "the sync finished before it could be interrupted"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def interrupted_sync(make_sim: Any, settings_for: Any) -> tuple[Simulator, Settings]:
    """Twelve 3 MB photos whose first sync was interrupted after 5 MB had been sent."""
    sim = await make_sim(**BIG)
    settings = settings_for(sim, sync={"concurrency": 2})
    await interrupt_after(sim, settings, 5_000_000)
    return sim, settings


def assert_recorded_hashes_match(settings: Settings) -> None:
    """The SHA-256 the database holds for each file is that of the bytes in the mirror."""
    rows = db_rows(settings, "SELECT local_path, lower(hex(sha256)) FROM photos WHERE local_path IS NOT NULL")
    assert rows
    for path, recorded in rows:
        actual = hashlib.sha256((settings.mirror.root / path).read_bytes()).hexdigest()
        assert actual == recorded, f"{path}: recorded {recorded[:12]}…, the file hashes to {actual[:12]}…"


def parts(settings: Settings) -> list[Path]:
    return sorted((settings.mirror.root / ".syncer" / "tmp").glob("*.part"))


async def test_an_interrupted_download_resumes_with_range(make_sim: Any, settings_for: Any) -> None:
    sim, settings = await interrupted_sync(make_sim, settings_for)
    assert parts(settings), "the interrupted run left partial downloads"
    assert_no_torn_files(sim, settings.mirror.root)
    sent_before = sim.stats.bytes_sent
    summary = await sync(settings)
    assert summary.exit_code == ExitCode.OK
    assert sim.stats.resumed > 0
    assert sim.stats.bytes_sent - sent_before < 12 * 3_000_000, "resumed parts were not fetched again"
    assert_recorded_hashes_match(settings)
    assert_byte_exact(sim, settings)
    assert parts(settings) == []


async def test_a_server_that_ignores_range_gets_a_fresh_download(make_sim: Any, settings_for: Any) -> None:
    sim, settings = await interrupted_sync(make_sim, settings_for)
    sim.config.range_support = False
    assert (await sync(settings)).exit_code == ExitCode.OK
    assert sim.stats.resumed == 0
    assert_byte_exact(sim, settings)


async def test_a_part_of_a_file_replaced_since_is_not_resumed(make_sim: Any, settings_for: Any) -> None:
    sim, settings = await interrupted_sync(make_sim, settings_for)
    for part in parts(settings):
        sim.replace_photo(int(part.name.split(".")[0]))
    assert (await sync(settings)).exit_code == ExitCode.OK
    assert sim.stats.resumed == 0
    assert_byte_exact(sim, settings)


async def test_bytes_past_the_durable_mark_are_discarded(make_sim: Any, settings_for: Any) -> None:
    sim, settings = await interrupted_sync(make_sim, settings_for)
    for part in parts(settings):
        with part.open("ab") as fh:
            fh.write(b"\0" * 70_000)  # as after a power cut: a tail the disk never confirmed
    assert (await sync(settings)).exit_code == ExitCode.OK
    assert sim.stats.resumed > 0
    assert_byte_exact(sim, settings)
    assert_recorded_hashes_match(settings)


def assert_proven_is_recorded(sim: Simulator, settings: Settings) -> None:
    """What the database says is listed (from `backfill_until` to the checkpoint) is recorded,
    each photo as mirrored or as due: the marks never run ahead of the rows."""
    known = {row[0] for row in db_rows(settings, "SELECT id FROM photos")}
    for checkpoint, until in db_rows(settings, "SELECT checkpoint, backfill_until FROM projects"):
        if checkpoint is None:
            continue
        high = stored_time(checkpoint) - timedelta(seconds=1)
        low = stored_time(until) + timedelta(seconds=1) if until else None
        vouched = {
            p.id
            for p in sim.company.photos.values()
            if not p.deleted and p.updated_at < high and (low is None or p.updated_at > low)
        }
        assert vouched <= known, f"proven but not recorded: {sorted(vouched - known)[:5]}"


async def test_kill_9_at_any_moment_then_rerun_ends_byte_exact(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(**{**BIG, "photos": 16})
    config = write_config(sim, tmp_path, sync={"concurrency": 3})
    root = tmp_path / "mirror"
    states = root / ".syncer" / "tmp"

    def durable_part_exists() -> bool:
        return states.is_dir() and any(states.glob("*.part.json"))

    # First while the first bytes arrive, then once a partial file has a durable megabyte.
    for ready in (lambda: sim.stats.bytes_sent > 500_000, durable_part_exists):
        proc = await spawn("sync", "--config", str(config), output=asyncio.subprocess.DEVNULL)
        while not ready() and proc.returncode is None:
            await asyncio.sleep(0.005)
        assert proc.returncode is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
        assert_no_torn_files(sim, root)
        assert_proven_is_recorded(sim, load_settings(config))
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.OK, run.err
    assert sim.stats.resumed > 0, "the killed run's durable parts were resumed with Range"
    assert_byte_exact(sim, load_settings(config))
