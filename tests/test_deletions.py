"""Deletions: found only by a proven full listing, applied per `on_delete`, capped, reversible."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
from aiohttp import web

from syncer.config import Settings
from syncer.errors import ExitCode
from syncer.plan import Change
from syncer.report import render_summary
from syncer.simulator import Simulator
from syncer.simulator.server import ListingRequest
from syncer.words import plural
from tests.conftest import assert_byte_exact, db_rows, mirror_photos, sync

FEW_RETRIES = {"retry_attempts": 2}


def delete_some(sim: Simulator, count: int) -> list[int]:
    victims = sorted(sim.company.photos)[:count]
    for photo_id in victims:
        sim.delete_photo(photo_id)
    return victims


def marked_deleted(settings: Settings) -> set[int]:
    return {i for (i,) in db_rows(settings, "SELECT id FROM photos WHERE deleted_at IS NOT NULL")}


def trash_files(settings: Settings) -> list[str]:
    trash = settings.mirror.root / ".trash"
    return sorted(str(p.relative_to(trash)) for p in trash.rglob("*") if p.is_file())


async def test_full_run_marks_photos_gone_upstream_and_keeps_their_files(
    sim: Simulator, settings_for: Any
) -> None:
    settings = settings_for(sim)
    await sync(settings)
    gone = delete_some(sim, 4)
    summary = await sync(settings, full=True)
    assert summary.exit_code == ExitCode.OK
    assert sum(r.deleted_upstream for r in summary.results) == 4
    assert marked_deleted(settings) == set(gone)
    assert set(gone) <= set(mirror_photos(settings.mirror.root)), "on_delete: keep leaves the files"


async def test_a_full_dry_run_counts_the_photos_gone_upstream_and_touches_nothing(
    sim: Simulator, settings_for: Any
) -> None:
    settings = settings_for(sim, mirror={"on_delete": "trash"})
    await sync(settings)
    delete_some(sim, 2)
    summary = await sync(settings, full=True, dry_run=True)
    assert sum(r.would_delete for r in summary.results) == 2
    assert "a sync would download 0 photos, mark 2 photos gone from Procore deleted" in render_summary(
        summary
    )
    assert marked_deleted(settings) == set() and trash_files(settings) == []


async def test_a_full_dry_run_promises_no_deletions_that_max_delete_would_stop(
    sim: Simulator, settings_for: Any
) -> None:
    settings = settings_for(sim, mirror={"max_delete": 1})
    await sync(settings)
    project = min(sim.company.projects)
    for photo_id in sorted(i for i, p in sim.company.photos.items() if p.project_id == project)[:3]:
        sim.delete_photo(photo_id)  # three of one project: over its cap of one
    summary = await sync(settings, full=True, dry_run=True)
    assert sum(r.would_delete for r in summary.results) == 0
    assert "mark" not in render_summary(summary).splitlines()[-1]
    assert any(r.deletions_blocked for r in summary.results)


async def test_incremental_runs_never_delete(sim: Simulator, settings_for: Any) -> None:
    settings = settings_for(sim, mirror={"on_delete": "delete"})
    await sync(settings)
    gone = delete_some(sim, 4)
    await sync(settings)
    assert marked_deleted(settings) == set()
    assert set(gone) <= set(mirror_photos(settings.mirror.root))


async def test_trash_moves_files_under_a_dated_folder_keeping_their_path(
    sim: Simulator, settings_for: Any
) -> None:
    settings = settings_for(sim, mirror={"on_delete": "trash"})
    await sync(settings)
    gone = delete_some(sim, 3)
    paths = dict(
        db_rows(settings, f"SELECT id, local_path FROM photos WHERE id IN ({','.join(map(str, gone))})")
    )
    summary = await sync(settings, full=True)
    assert sum(r.trashed for r in summary.results) == 3
    day = summary.results[0].window_end.strftime("%Y-%m-%d")
    expected = sorted([f"{day}/{p}" for p in paths.values()] + [f"{day}/{p}.json" for p in paths.values()])
    assert trash_files(settings) == expected
    assert not set(gone) & set(mirror_photos(settings.mirror.root))
    assert_byte_exact(sim, settings)


@pytest.mark.parametrize(("on_delete", "done"), [("trash", "moved to the trash"), ("delete", "removed")])
async def test_what_was_done_with_the_files_of_deleted_photos_is_logged(
    sim: Simulator, settings_for: Any, log_lines: Any, on_delete: str, done: str
) -> None:
    settings = settings_for(sim, mirror={"on_delete": on_delete})
    await sync(settings)
    per_project = Counter(sim.company.photos[i].project_id for i in delete_some(sim, 3))
    await sync(settings, full=True)
    messages = [r.getMessage() for r in log_lines.records]
    for project, count in per_project.items():
        assert f"project {project}: {done} {plural(count, 'file')} of photos deleted in Procore" in messages


async def test_a_deleted_photo_whose_file_is_already_gone_still_has_its_sidecar_trashed(
    sim: Simulator, settings_for: Any
) -> None:
    settings = settings_for(sim, mirror={"on_delete": "trash"})
    await sync(settings)
    (gone,) = delete_some(sim, 1)
    ((path,),) = db_rows(settings, f"SELECT local_path FROM photos WHERE id = {gone}")
    (settings.mirror.root / path).unlink()  # the user removed it by hand
    summary = await sync(settings, full=True)
    assert summary.exit_code == ExitCode.OK
    assert sum(r.trashed for r in summary.results) == 1
    assert [p.rsplit("/", 1)[-1] for p in trash_files(settings)] == [path.rsplit("/", 1)[-1] + ".json"]


async def test_delete_removes_files_and_sidecars(sim: Simulator, settings_for: Any) -> None:
    settings = settings_for(sim, mirror={"on_delete": "delete"})
    await sync(settings)
    gone = delete_some(sim, 3)
    summary = await sync(settings, full=True)
    assert sum(r.removed for r in summary.results) == 3
    assert not set(gone) & set(mirror_photos(settings.mirror.root))
    assert trash_files(settings) == []
    assert_byte_exact(sim, settings)


async def test_more_than_max_delete_stops_that_step_until_forced(sim: Simulator, settings_for: Any) -> None:
    settings = settings_for(sim, mirror={"on_delete": "delete", "max_delete": "10%"})
    await sync(settings)
    gone = delete_some(sim, 15)  # a quarter of the 60 photos
    summary = await sync(settings, full=True)
    assert summary.exit_code == ExitCode.INCOMPLETE
    blocked = [r.deletions_blocked for r in summary.results if r.deletions_blocked]
    assert blocked and all(
        re.fullmatch(
            r"(\d+) of (\d+) photos are gone from Procore, more than mirror\.max_delete \(10%, \d+ photos\) "
            r"allows; none was marked deleted\. If that is right, run again with --force",
            text,
        )
        for text in blocked
    ), blocked
    assert marked_deleted(settings) == set()
    assert set(gone) <= set(mirror_photos(settings.mirror.root))
    summary = await sync(settings, full=True, force=True)
    assert summary.exit_code == ExitCode.OK
    assert marked_deleted(settings) == set(gone)
    assert not set(gone) & set(mirror_photos(settings.mirror.root))


async def test_nothing_is_deleted_after_a_listing_that_failed(make_sim: Any, settings_for: Any) -> None:
    sim = await make_sim(projects=1)
    settings = settings_for(sim, mirror={"on_delete": "delete"}, procore=FEW_RETRIES)
    await sync(settings)
    gone = delete_some(sim, 2)

    def fail_records(request: ListingRequest) -> None:
        if request.view == "normal":
            raise web.HTTPInternalServerError()

    sim.listing_hooks.append(fail_records)
    summary = await sync(settings, full=True)
    assert summary.exit_code == ExitCode.INCOMPLETE
    assert any(r.listing_error for r in summary.results)
    assert marked_deleted(settings) == set()
    assert set(gone) <= set(mirror_photos(settings.mirror.root))


async def test_nothing_is_deleted_when_the_id_listing_cannot_be_proven(
    make_sim: Any, settings_for: Any
) -> None:
    sim = await make_sim(photos=120, projects=1, max_per_page=20)
    settings = settings_for(sim, mirror={"on_delete": "delete"}, sync={"per_page": 10})  # ids go by 20
    await sync(settings)
    delete_some(sim, 2)

    def bulk_upload(request: ListingRequest) -> None:  # the newest piece grows between its pages
        if request.view == "ids_only":
            for _ in range(25):
                sim.add_photo(request.project_id)

    sim.listing_hooks.append(bulk_upload)
    summary = await sync(settings, full=True)
    assert summary.results[0].deletions_unchecked
    assert marked_deleted(settings) == set()


async def test_photos_edited_during_the_id_listing_are_not_taken_for_deleted(
    make_sim: Any, settings_for: Any
) -> None:
    sim = await make_sim(photos=200, projects=1, max_per_page=25)
    settings = settings_for(sim, mirror={"on_delete": "delete"})
    await sync(settings)
    oldest = sorted(sim.company.photos.values(), key=lambda p: p.updated_at)[:10]

    def edit_old_photos(request: ListingRequest) -> None:
        if request.view == "ids_only" and oldest:
            sim.edit_photo(oldest.pop().id, description="edited while ids were listed")

    sim.listing_hooks.append(edit_old_photos)
    summary = await sync(settings, full=True)
    assert summary.exit_code == ExitCode.OK
    assert marked_deleted(settings) == set()
    assert_byte_exact(sim, settings)


async def photo_in_the_trash(sim: Simulator, settings_for: Any) -> tuple[Settings, int, int]:
    """A mirror with `on_delete: trash`, one photo deleted in Procore and moved to the trash by a
    full run: the settings, that photo, and the bodies downloaded so far."""
    settings = settings_for(sim, mirror={"on_delete": "trash"})
    await sync(settings)
    (photo_id,) = delete_some(sim, 1)
    await sync(settings, full=True)
    return settings, photo_id, sum(sim.stats.downloads.values())


async def test_a_photo_that_returns_is_restored_from_the_trash_without_download(
    sim: Simulator, settings_for: Any
) -> None:
    settings, photo_id, downloads = await photo_in_the_trash(sim, settings_for)
    sim.restore_photo(photo_id)
    summary = await sync(settings)
    assert sum(r.changes[Change.RESTORED] for r in summary.results) == 1
    assert sum(sim.stats.downloads.values()) == downloads
    assert trash_files(settings) == []
    assert marked_deleted(settings) == set()
    assert_byte_exact(sim, settings)


async def test_a_photo_restored_with_its_old_time_comes_back_from_the_trash_on_a_full_run(
    sim: Simulator, settings_for: Any
) -> None:
    settings, photo_id, downloads = await photo_in_the_trash(sim, settings_for)
    sim.restore_photo(photo_id, keep_time=True)  # no incremental window will ever see it
    summary = await sync(settings, full=True)
    assert sum(r.changes[Change.RESTORED] for r in summary.results) == 1
    assert sum(sim.stats.downloads.values()) == downloads
    assert trash_files(settings) == []
    assert_byte_exact(sim, settings)


async def test_a_photo_that_returns_after_delete_is_downloaded_again(
    sim: Simulator, settings_for: Any
) -> None:
    settings = settings_for(sim, mirror={"on_delete": "delete"})
    await sync(settings)
    (photo_id,) = delete_some(sim, 1)
    await sync(settings, full=True)
    sim.restore_photo(photo_id)
    summary = await sync(settings)
    assert sum(r.downloaded for r in summary.results) == 1
    assert_byte_exact(sim, settings)


async def test_a_photo_that_leaves_the_filters_is_not_taken_for_deleted(
    sim: Simulator, settings_for: Any
) -> None:
    settings = settings_for(sim, mirror={"on_delete": "delete"}, sync={"filters": {"starred": True}})
    await sync(settings)
    starred = [p for p in sim.company.photos.values() if p.starred]
    sim.edit_photo(starred[0].id, starred=False)  # still in Procore, just no longer starred
    summary = await sync(settings, full=True)
    assert summary.exit_code == ExitCode.OK
    assert marked_deleted(settings) == set()
    assert starred[0].id in mirror_photos(settings.mirror.root)


async def test_max_delete_allows_exactly_its_cap_and_stops_one_more(
    sim: Simulator, settings_for: Any
) -> None:
    settings = settings_for(sim, mirror={"max_delete": "3"}, sync={"projects": [min(sim.company.projects)]})
    await sync(settings)
    ours = sorted(p.id for p in sim.company.live_photos(min(sim.company.projects)))
    for photo_id in ours[:3]:
        sim.delete_photo(photo_id)
    assert (await sync(settings, full=True)).exit_code == ExitCode.OK, "three gone, three allowed"
    assert marked_deleted(settings) == set(ours[:3])
    for photo_id in ours[3:7]:
        sim.delete_photo(photo_id)
    summary = await sync(settings, full=True)
    assert summary.exit_code == ExitCode.INCOMPLETE, "four gone is one more than allowed"
    assert marked_deleted(settings) == set(ours[:3])
