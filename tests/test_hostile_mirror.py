"""A hostile mirror: links planted inside it by someone else sharing the mount. Nothing is written
outside the mirror, a linked state folder is refused in one line, and `verify` names a link where a
photo should be. Each test runs a real `syncer` process."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from syncer.errors import ExitCode, LocalFault
from syncer.report import LogProgress
from syncer.runner import open_syncer
from tests.conftest import mirror_photos, sync, write_config
from tests.test_cli import assert_no_traceback, syncer

BAIT = b"the outside file, not the syncer's to touch\n"


def outside_files(tmp_path: Path) -> Path:
    """A folder next to the mirror holding one file, as a target for planted links."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "bait").write_bytes(BAIT)
    return folder


def assert_untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["bait"], "something was written outside the mirror"
    assert (outside / "bait").read_bytes() == BAIT


@pytest.mark.parametrize("size", [6_000, 3_500_000], ids=["in-memory", "streamed-with-resume-state"])
async def test_a_link_planted_as_a_part_file_is_replaced_not_followed(
    make_sim: Any, tmp_path: Path, size: int
) -> None:
    sim = await make_sim(photos=4, projects=1, photo_size=size)
    outside = outside_files(tmp_path)
    tmp = tmp_path / "mirror" / ".syncer" / "tmp"
    tmp.mkdir(parents=True)
    for photo_id in sim.expected_files():
        for name in (f"{photo_id}.part", f"{photo_id}.part.json", f"{photo_id}.part.json.new"):
            (tmp / name).symlink_to(outside / "bait")
    run = await syncer("sync", "--config", str(write_config(sim, tmp_path)))
    assert run.code == ExitCode.OK, run.err
    assert_untouched(outside)
    assert mirror_photos(tmp_path / "mirror") == sim.expected_files()
    linked = [p for p in (tmp_path / "mirror").rglob("*") if p.is_symlink() and ".syncer" not in p.parts]
    assert not linked, f"links installed as photos: {linked}"


@pytest.mark.parametrize("folder", [".syncer", ".syncer/tmp", ".syncer/locks"])
async def test_a_linked_state_folder_is_refused_in_one_line(
    make_sim: Any, tmp_path: Path, folder: str
) -> None:
    sim = await make_sim(photos=4, projects=1)
    outside = outside_files(tmp_path)
    planted = tmp_path / "mirror" / folder
    planted.parent.mkdir(parents=True)
    planted.symlink_to(outside, target_is_directory=True)
    run = await syncer("sync", "--config", str(write_config(sim, tmp_path)))
    assert run.code == ExitCode.INCOMPLETE
    assert_no_traceback(run)
    assert f"{planted} is a link or not a folder" in run.err
    assert_untouched(outside)
    assert not mirror_photos(tmp_path / "mirror"), "a run that refused its state folder still synced"


async def test_verify_names_a_link_where_a_photo_should_be(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=4, projects=1)
    config = str(write_config(sim, tmp_path))
    assert (await syncer("sync", "--config", config)).code == ExitCode.OK
    photo = next(p for p in (tmp_path / "mirror").rglob("*.jpg"))
    copy = tmp_path / "copy.jpg"
    os.replace(photo, copy)
    photo.symlink_to(copy)  # the same bytes, through a link
    run = await syncer("verify", "--config", config)
    assert run.code == ExitCode.INCOMPLETE
    relative = photo.relative_to(tmp_path / "mirror").as_posix()
    assert f"changed: {relative}: a link, not a file" in run.out


async def test_a_linked_trash_leaves_deleted_photos_in_place_and_the_other_projects_sync(
    make_sim: Any, settings_for: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=20, projects=2)
    settings = settings_for(sim, mirror={"on_delete": "trash"})
    await sync(settings)
    outside = outside_files(tmp_path)
    (settings.mirror.root / ".trash").symlink_to(outside, target_is_directory=True)
    first, other = sorted({p.project_id for p in sim.company.photos.values()})
    gone = next(i for i, p in sorted(sim.company.photos.items()) if p.project_id == first)
    sim.delete_photo(gone)
    added = [sim.add_photo(other).id for _ in range(2)]
    summary = await sync(settings, full=True)
    assert summary.exit_code == ExitCode.INCOMPLETE
    blocked = [r.deletions_blocked for r in summary.results if r.deletions_blocked]
    assert blocked and all("leaves the mirror root through a link" in b for b in blocked)
    assert_untouched(outside)
    assert gone in mirror_photos(settings.mirror.root), "a deleted photo stays until the link goes"
    assert set(added) <= set(mirror_photos(settings.mirror.root)), "the other project still synced"


async def test_a_link_planted_as_a_lock_file_is_replaced_not_followed(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=4, projects=1)
    outside = outside_files(tmp_path)
    locks = tmp_path / "mirror" / ".syncer" / "locks"
    locks.mkdir(parents=True)
    (locks / f"project-{next(iter(sim.company.projects))}.lock").symlink_to(outside / "bait")
    run = await syncer("sync", "--config", str(write_config(sim, tmp_path)))
    assert run.code == ExitCode.OK, run.err
    assert_untouched(outside)


async def test_a_state_folder_swapped_for_a_link_while_a_daemon_runs_is_refused(
    make_sim: Any, settings_for: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=4, projects=1)
    settings = settings_for(sim)
    outside = outside_files(tmp_path)
    async with open_syncer(settings, progress=LogProgress()) as running:
        projects, _ = await running.projects()
        await running.store.save_projects(settings.procore.company_id, projects)
        project = projects[0]
        await running.engine.sync_project(project)
        tmp = settings.mirror.root / ".syncer" / "tmp"
        shutil.rmtree(tmp)
        tmp.symlink_to(outside, target_is_directory=True)
        sim.add_photo(project.id)
        with pytest.raises(LocalFault, match="is a link or not a folder"):
            await running.engine.sync_project(project)
    assert_untouched(outside)
