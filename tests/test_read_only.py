"""Commands that only read create nothing: `status`, `verify`, `export`, `gallery` before the first
sync, and `sync --dry-run` at any time, leave the folders as they found them, and say plainly when
there is nothing yet."""

from __future__ import annotations

import json
from pathlib import Path

from syncer.config import load_settings
from syncer.errors import ExitCode
from syncer.simulator import Simulator
from tests.conftest import db_rows, write_config
from tests.test_cli import assert_no_traceback, syncer

NOTHING_YET = "syncer: nothing synced yet: there is no database at "
SQLITE_SIDE_FILES = ("-wal", "-shm")


def tree(folder: Path) -> set[str]:
    """Every path under `folder` (SQLite's own side files of an open database aside)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if not p.name.endswith(SQLITE_SIDE_FILES)}


async def test_status_before_the_first_sync_says_so_and_creates_nothing(
    sim: Simulator, tmp_path: Path
) -> None:
    config = write_config(sim, tmp_path)
    run = await syncer("status", "--config", str(config))
    assert run.code == ExitCode.OK, run.err
    assert run.err.startswith(NOTHING_YET), run.err
    assert f"{tmp_path}/state/syncer.db (the first `syncer sync` makes it" in run.err
    assert tree(tmp_path) == {"config.yaml"}
    assert_no_traceback(run)


async def test_status_json_before_the_first_sync_is_a_document_without_projects(
    sim: Simulator, tmp_path: Path
) -> None:
    run = await syncer("status", "--json", "--config", str(write_config(sim, tmp_path)))
    assert run.code == ExitCode.OK, run.err
    assert json.loads(run.out)["projects"] == []
    assert tree(tmp_path) == {"config.yaml"}


async def test_verify_before_the_first_sync_exits_1_and_creates_nothing(
    sim: Simulator, tmp_path: Path
) -> None:
    (tmp_path / "mirror").mkdir()
    run = await syncer("verify", "--config", str(write_config(sim, tmp_path)))
    assert run.code == ExitCode.INCOMPLETE
    assert run.err.startswith(NOTHING_YET) and run.err.rstrip().endswith(": nothing to verify"), run.err
    assert tree(tmp_path) == {"config.yaml", "mirror"}


async def test_export_before_the_first_sync_writes_no_file(sim: Simulator, tmp_path: Path) -> None:
    run = await syncer(
        "export", "--csv", str(tmp_path / "photos.csv"), "--config", str(write_config(sim, tmp_path))
    )
    assert run.code == ExitCode.OK, run.err
    assert run.err.startswith(NOTHING_YET)
    assert tree(tmp_path) == {"config.yaml"}


async def test_gallery_before_the_first_sync_says_so_and_creates_nothing(
    sim: Simulator, tmp_path: Path
) -> None:
    run = await syncer("gallery", "--config", str(write_config(sim, tmp_path)))
    assert run.code == ExitCode.OK, run.err
    assert run.err.startswith(NOTHING_YET)
    assert tree(tmp_path) == {"config.yaml"}


async def test_a_dry_run_before_the_first_sync_counts_every_photo_and_creates_nothing(
    sim: Simulator, tmp_path: Path
) -> None:
    run = await syncer("sync", "--dry-run", "--config", str(write_config(sim, tmp_path)))
    assert run.code == ExitCode.OK, run.err
    assert "dry run, nothing written: 2 projects; a sync would download 60 photos" in run.out, run.out
    assert tree(tmp_path) == {"config.yaml"}


async def test_a_dry_run_after_a_sync_changes_no_file_and_no_row(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    settings = load_settings(config)
    first = sorted(sim.company.photos)[0]
    sim.edit_photo(first, description="edited since")
    before = tree(tmp_path), db_rows(settings, "SELECT id, updated_at, sha256 FROM photos ORDER BY id")
    runs = db_rows(settings, "SELECT count(*) FROM sync_runs")
    run = await syncer("sync", "--dry-run", "--config", str(config))
    assert run.code == ExitCode.OK, run.err
    assert "a sync would download 0 photos, update the metadata of 1 photo," in run.out, run.out
    assert (
        tree(tmp_path),
        db_rows(settings, "SELECT id, updated_at, sha256 FROM photos ORDER BY id"),
    ) == before
    assert db_rows(settings, "SELECT count(*) FROM sync_runs") == runs
