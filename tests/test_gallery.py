"""`syncer gallery`: a static gallery inside the mirror, built from the database and the mirror's
files, that changes only where the archive changed. (What it looks like in a browser is
test_gallery_browser.py.)"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from syncer.config import Settings, load_settings
from syncer.errors import ExitCode
from syncer.gallery import Gallery, GalleryReport
from syncer.gallery.pages import FIELDS
from syncer.simulator import Simulator
from syncer.store import Store
from tests.conftest import db_rows, sync, write_config
from tests.test_cli import assert_no_traceback, syncer
from tests.test_daemon import daemon, daemon_config, eventually, stop

FIELD = {name: i for i, name in enumerate(FIELDS)}


def data_of(root: Path, project_id: int) -> dict[str, Any]:
    """What a project's page is given: the JSON inside its data script."""
    text = (root / ".gallery" / "data" / f"project-{project_id}.js").read_text(encoding="utf-8")
    assert text.startswith("var GALLERY = ") and text.endswith(";\n")
    document: dict[str, Any] = json.loads(text.removeprefix("var GALLERY = ").removesuffix(";\n"))
    return document


def photo_ids(root: Path, project_id: int) -> set[int]:
    return {row[FIELD["id"]] for row in data_of(root, project_id)["photos"]}


def row_of(root: Path, project_id: int, photo_id: int) -> list[Any]:
    return next(r for r in data_of(root, project_id)["photos"] if r[FIELD["id"]] == photo_id)


def gallery_files(root: Path) -> dict[str, int]:
    """Every file the gallery keeps, with its modification time in nanoseconds."""
    found = {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in (root / ".gallery").rglob("*")}
    for name in ("index.html", "index.csv"):
        found[name] = (root / name).stat().st_mtime_ns
    return {name: mtime for name, mtime in found.items() if not (root / name).is_dir()}


def thumbnails(root: Path) -> set[str]:
    return {p.stem for p in (root / ".gallery" / "thumbs").rglob("*.jpg")}


async def build(settings: Settings, project_ids: list[int] | None = None) -> GalleryReport:
    store = await Store.open(settings.database_url)
    try:
        return await Gallery(settings.mirror.root, web_base=settings.procore.web_base).build(
            store, project_ids
        )
    finally:
        await store.close()


async def synced(make_sim: Any, settings_for: Any, **sections: Any) -> tuple[Simulator, Settings]:
    sim = await make_sim(photos=14, projects=2)
    settings = settings_for(sim, **sections)
    assert (await sync(settings)).exit_code == ExitCode.OK
    return sim, settings


async def synced_by_process(
    make_sim: Any, tmp_path: Path, photos: int = 14, **sections: Any
) -> tuple[Simulator, str]:
    """A simulated company synced by a `syncer sync` process; its config's path."""
    sim = await make_sim(photos=photos, projects=2 if photos > 6 else 1)
    config = str(write_config(sim, tmp_path, **sections))
    assert (await syncer("sync", "--config", config)).code == ExitCode.OK
    return sim, config


def mirrored_sha(settings: Settings, photo_id: int) -> str:
    [(sha,)] = db_rows(settings, f"SELECT lower(hex(sha256)) FROM photos WHERE id = {photo_id}")
    return str(sha)


async def test_gallery_builds_an_index_a_page_per_project_and_a_thumbnail_per_photo(
    make_sim: Any, tmp_path: Path
) -> None:
    sim, config = await synced_by_process(make_sim, tmp_path)
    run = await syncer("gallery", "--config", config)
    assert run.code == ExitCode.OK, run.err
    root = tmp_path / "mirror"
    assert run.out.splitlines()[-1] == f"open {(root / 'index.html').as_uri()}"
    index = (root / "index.html").read_text(encoding="utf-8")
    for project in sim.company.projects.values():
        assert f'href=".gallery/project-{project.id}.html"' in index
        assert (root / ".gallery" / f"project-{project.id}.html").is_file()
        assert photo_ids(root, project.id) == {
            p.id for p in sim.company.photos.values() if p.project_id == project.id
        }
    assert thumbnails(root) == {
        hashlib.sha256(p.content.all_bytes()).hexdigest() for p in sim.company.photos.values()
    }
    for thumb in (root / ".gallery" / "thumbs").rglob("*.jpg"):
        with Image.open(thumb) as image:
            assert image.format == "JPEG" and max(image.size) <= 320


async def test_each_photo_row_holds_what_the_photo_view_shows(make_sim: Any, settings_for: Any) -> None:
    sim, settings = await synced(make_sim, settings_for)
    await build(settings)
    photo = next(p for p in sim.company.photos.values() if p.trades and p.location)
    data = data_of(settings.mirror.root, photo.project_id)
    row = row_of(settings.mirror.root, photo.project_id, photo.id)
    [(path,)] = db_rows(settings, f"SELECT local_path FROM photos WHERE id = {photo.id}")
    assert row[FIELD["path"]] == path and row[FIELD["name"]] == photo.filename
    assert row[FIELD["description"]] == photo.description
    assert data["places"][row[FIELD["location"]]] == photo.location["node_name"]
    assert [data["trades"][t] for t in row[FIELD["trades"]]] == [t["name"] for t in photo.trades]
    assert data["people"][row[FIELD["uploader"]]] == photo.uploader["name"]
    assert row[FIELD["sha256"]] == mirrored_sha(settings, photo.id) and row[FIELD["thumb"]] == 1
    assert data["project"]["link"] == f"https://app.procore.com/{photo.project_id}/project/photos"


async def test_a_rebuild_with_nothing_changed_writes_nothing(make_sim: Any, settings_for: Any) -> None:
    _, settings = await synced(make_sim, settings_for)
    await build(settings)
    before = gallery_files(settings.mirror.root)
    report = await build(settings)
    assert (report.thumbnails, report.written, report.removed) == (0, 0, 0)
    assert gallery_files(settings.mirror.root) == before


async def test_a_metadata_edit_rewrites_its_projects_data_and_makes_no_thumbnail(
    make_sim: Any, settings_for: Any
) -> None:
    sim, settings = await synced(make_sim, settings_for)
    await build(settings)
    root = settings.mirror.root
    edited = min(sim.company.photos)
    other = next(pid for pid in sim.company.projects if pid != sim.company.photos[edited].project_id)
    untouched = (root / ".gallery" / "data" / f"project-{other}.js").stat().st_mtime_ns
    sim.edit_photo(edited, description="conduit run, level 3 corridor")
    assert (await sync(settings)).exit_code == ExitCode.OK
    report = await build(settings)
    assert report.thumbnails == 0
    row = row_of(root, sim.company.photos[edited].project_id, edited)
    assert row[FIELD["description"]] == "conduit run, level 3 corridor"
    assert (root / ".gallery" / "data" / f"project-{other}.js").stat().st_mtime_ns == untouched


async def test_a_replaced_photo_gets_a_new_thumbnail_and_its_old_one_goes(
    make_sim: Any, settings_for: Any
) -> None:
    sim, settings = await synced(make_sim, settings_for)
    await build(settings)
    replaced = min(sim.company.photos)
    old = mirrored_sha(settings, replaced)
    sim.replace_photo(replaced)
    assert (await sync(settings)).exit_code == ExitCode.OK
    report = await build(settings)
    new = mirrored_sha(settings, replaced)
    assert (report.thumbnails, report.removed) == (1, 1)
    assert new in thumbnails(settings.mirror.root) and old not in thumbnails(settings.mirror.root)
    assert (
        row_of(settings.mirror.root, sim.company.photos[replaced].project_id, replaced)[FIELD["sha256"]]
        == new
    )


async def test_a_trashed_photo_leaves_the_gallery(make_sim: Any, settings_for: Any) -> None:
    sim, settings = await synced(make_sim, settings_for, mirror={"on_delete": "trash"})
    await build(settings)
    gone = min(sim.company.photos)
    sha = mirrored_sha(settings, gone)
    sim.delete_photo(gone)
    assert (await sync(settings, full=True)).exit_code == ExitCode.OK
    await build(settings)
    assert gone not in photo_ids(settings.mirror.root, sim.company.photos[gone].project_id)
    assert sha not in thumbnails(settings.mirror.root)


async def test_a_photo_deleted_in_procore_and_kept_stays_marked_deleted(
    make_sim: Any, settings_for: Any
) -> None:
    sim, settings = await synced(make_sim, settings_for, mirror={"on_delete": "keep"})
    await build(settings)
    gone = min(sim.company.photos)
    sim.delete_photo(gone)
    assert (await sync(settings, full=True)).exit_code == ExitCode.OK
    await build(settings)
    row = row_of(settings.mirror.root, sim.company.photos[gone].project_id, gone)
    assert row[FIELD["deleted"]] and row[FIELD["thumb"]] == 1


async def test_a_renamed_project_shows_its_new_name(make_sim: Any, settings_for: Any) -> None:
    sim, settings = await synced(make_sim, settings_for)
    await build(settings)
    renamed = min(sim.company.projects)
    sim.company.projects[renamed].name = "Harbor View, Phase 3"
    assert (await sync(settings)).exit_code == ExitCode.OK
    await build(settings)
    root = settings.mirror.root
    assert data_of(root, renamed)["project"]["name"] == "Harbor View, Phase 3"
    assert "Harbor View, Phase 3" in (root / "index.html").read_text(encoding="utf-8")
    assert "Harbor View, Phase 3" in (root / "index.csv").read_text(encoding="utf-8-sig")


async def test_a_thumbnail_removed_by_hand_is_made_again(make_sim: Any, settings_for: Any) -> None:
    sim, settings = await synced(make_sim, settings_for)
    await build(settings)
    sha = mirrored_sha(settings, min(sim.company.photos))
    (settings.mirror.root / ".gallery" / "thumbs" / sha[:2] / f"{sha}.jpg").unlink()
    report = await build(settings)
    assert report.thumbnails == 1 and sha in thumbnails(settings.mirror.root)


def _card_of_wrong_type(state: dict[str, Any]) -> str:
    for built in state["projects"].values():
        built["card"]["photos"] = "many"
    return json.dumps(state)


def _entry_without_card(state: dict[str, Any]) -> str:
    for built in state["projects"].values():
        del built["card"]
    return json.dumps(state)


DAMAGE = {
    "not JSON": lambda state: "{not json",
    "a list": lambda state: "[]",
    "projects a list": lambda state: json.dumps({**state, "projects": []}),
    "a card of the wrong type": _card_of_wrong_type,
    "an entry without its card": _entry_without_card,
}


@pytest.mark.parametrize("damage", DAMAGE)
async def test_a_lost_or_damaged_state_file_costs_a_full_build_not_a_wrong_one(
    make_sim: Any, settings_for: Any, damage: str
) -> None:
    sim, settings = await synced(make_sim, settings_for)
    await build(settings)
    state = settings.mirror.root / ".gallery" / "state.json"
    state.write_text(DAMAGE[damage](json.loads(state.read_text())))
    edited = min(sim.company.photos)
    sim.edit_photo(edited, description="after the state was lost")
    assert (await sync(settings)).exit_code == ExitCode.OK
    report = await build(settings)
    assert report.thumbnails == 0
    row = row_of(settings.mirror.root, sim.company.photos[edited].project_id, edited)
    assert row[FIELD["description"]] == "after the state was lost"
    assert json.loads(state.read_text())["projects"]


async def test_a_project_with_no_photo_left_loses_its_page(make_sim: Any, settings_for: Any) -> None:
    sim, settings = await synced(make_sim, settings_for, mirror={"on_delete": "trash", "max_delete": "100%"})
    await build(settings)
    emptied = min(sim.company.projects)
    for photo in [p for p in sim.company.photos.values() if p.project_id == emptied]:
        sim.delete_photo(photo.id)
    assert (await sync(settings, full=True)).exit_code == ExitCode.OK
    await build(settings)
    root = settings.mirror.root
    assert not (root / ".gallery" / f"project-{emptied}.html").exists()
    assert not (root / ".gallery" / "data" / f"project-{emptied}.js").exists()
    assert f"project-{emptied}.html" not in (root / "index.html").read_text(encoding="utf-8")


async def test_a_file_that_cannot_be_decoded_gets_a_placeholder_and_is_not_tried_again(
    make_sim: Any, settings_for: Any
) -> None:
    sim, settings = await synced(make_sim, settings_for)
    damaged = min(sim.company.photos)
    [(path,)] = db_rows(settings, f"SELECT local_path FROM photos WHERE id = {damaged}")
    (settings.mirror.root / path).write_bytes(b"\x00\x00\x00\x18ftypheic" + os.urandom(4000))  # as a HEIC
    report = await build(settings)
    assert report.placeholders == 1
    assert row_of(settings.mirror.root, sim.company.photos[damaged].project_id, damaged)[FIELD["thumb"]] == 0
    state = json.loads((settings.mirror.root / ".gallery" / "state.json").read_text())
    assert state["undecodable"] == [mirrored_sha(settings, damaged)]
    again = await build(settings)
    assert (again.thumbnails, again.written, again.placeholders) == (0, 0, 1)


async def test_only_the_named_project_gets_a_page_with_project(make_sim: Any, tmp_path: Path) -> None:
    sim, config = await synced_by_process(make_sim, tmp_path)
    first, second = sorted(sim.company.projects)
    run = await syncer("gallery", "--config", config, "--project", str(first))
    assert run.code == ExitCode.OK, run.err
    gallery = tmp_path / "mirror" / ".gallery"
    assert (gallery / f"project-{first}.html").is_file()
    assert not (gallery / f"project-{second}.html").exists()
    assert f"project-{second}" not in (tmp_path / "mirror" / "index.html").read_text(encoding="utf-8")
    expected = {
        hashlib.sha256(p.content.all_bytes()).hexdigest()
        for p in sim.company.photos.values()
        if p.project_id == first
    }
    assert thumbnails(tmp_path / "mirror") == expected


async def test_the_csv_beside_the_gallery_is_the_export(make_sim: Any, tmp_path: Path) -> None:
    _sim, config = await synced_by_process(make_sim, tmp_path)
    assert (await syncer("gallery", "--config", config)).code == ExitCode.OK
    assert (await syncer("export", "--config", config, "--csv", str(tmp_path / "export.csv"))).code == 0
    assert (tmp_path / "mirror" / "index.csv").read_bytes() == (tmp_path / "export.csv").read_bytes()


async def test_verify_does_not_count_the_gallery_as_strays(make_sim: Any, tmp_path: Path) -> None:
    _sim, config = await synced_by_process(make_sim, tmp_path)
    assert (await syncer("gallery", "--config", config)).code == ExitCode.OK
    run = await syncer("verify", "--config", config)
    assert run.code == ExitCode.OK, run.out + run.err
    assert ", 0 unexpected" in run.out


async def test_a_link_planted_at_the_gallery_folder_is_refused_and_nothing_lands_outside(
    make_sim: Any, tmp_path: Path
) -> None:
    _sim, config = await synced_by_process(make_sim, tmp_path, photos=6)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "mirror" / ".gallery").symlink_to(outside)
    run = await syncer("gallery", "--config", config)
    assert run.code == ExitCode.INCOMPLETE
    assert_no_traceback(run)
    assert ".gallery is a link" in run.err and len(run.err.strip().splitlines()) == 1
    assert list(outside.iterdir()) == []


async def test_a_link_planted_at_a_thumbnail_folder_is_refused_and_nothing_lands_outside(
    make_sim: Any, settings_for: Any, tmp_path: Path
) -> None:
    sim, settings = await synced(make_sim, settings_for)
    await build(settings)
    sha = mirrored_sha(settings, min(sim.company.photos))
    folder = settings.mirror.root / ".gallery" / "thumbs" / sha[:2]
    for thumb in folder.iterdir():
        thumb.unlink()
    folder.rmdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    folder.symlink_to(outside)
    run = await syncer("gallery", "--config", str(tmp_path / "config.yaml"))
    assert run.code == ExitCode.INCOMPLETE and "is a link" in run.err
    assert_no_traceback(run)
    assert list(outside.iterdir()) == []


async def test_a_folder_where_the_index_page_goes_is_one_line_naming_it(
    make_sim: Any, tmp_path: Path
) -> None:
    _sim, config = await synced_by_process(make_sim, tmp_path, photos=6)
    (tmp_path / "mirror" / "index.html").mkdir()
    run = await syncer("gallery", "--config", config)
    assert run.code == ExitCode.INCOMPLETE
    assert_no_traceback(run)
    assert "index.html is a folder" in run.err and len(run.err.strip().splitlines()) == 1


async def test_a_sync_with_the_gallery_enabled_brings_it_up_to_date(make_sim: Any, tmp_path: Path) -> None:
    sim, config = await synced_by_process(make_sim, tmp_path, gallery={"enabled": True})
    project = min(sim.company.projects)
    added = sim.add_photo(project)
    run = await syncer("sync", "--config", config)
    assert run.code == ExitCode.OK, run.err
    root = tmp_path / "mirror"
    assert run.out.splitlines()[-1].endswith(f"; open {(root / 'index.html').as_uri()}")
    assert added.id in photo_ids(root, project)


UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}


def amount(text: str) -> float:
    """`17.6 MB` as bytes."""
    number, unit = text.split()
    return float(number) * UNITS[unit]


async def test_a_syncs_time_and_rate_leave_out_the_gallery_which_has_its_own_line(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=200, projects=1, photo_size=None)  # thumbnails that take a while
    config = write_config(sim, tmp_path, gallery={"enabled": True})
    started = time.monotonic()
    run = await syncer("sync", "--config", str(config))
    wall = time.monotonic() - started
    assert run.code == ExitCode.OK, run.err
    total, gallery = run.out.splitlines()[-2:]
    synced = re.fullmatch(r"complete: 1 project, 200 photos downloaded \((.+) at (.+)/s\) in (.+) s", total)
    built = re.fullmatch(
        r"gallery: 1 project page written, 200 thumbnails made in (.+) s; open file://.+", gallery
    )
    assert synced and built, run.out
    size, rate, took = amount(synced[1]), amount(synced[2]), float(synced[3])
    assert took + float(built[1]) <= wall, "the sync's time and the gallery's do not overlap"
    assert abs(size / took - rate) <= 0.1 * rate, "the rate is over the sync's time alone"


async def test_the_daemon_keeps_the_gallery_current(sim: Simulator, tmp_path: Path) -> None:
    config = daemon_config(
        sim, tmp_path, schedule={"incremental": {"every": "1s"}}, gallery={"enabled": True}
    )
    root = load_settings(config).mirror.root
    project = min(sim.company.projects)
    async with daemon(config, tmp_path) as running:
        await eventually((root / ".gallery" / f"project-{project}.html").is_file, what="the gallery")
        added = sim.add_photo(project)
        await eventually(lambda: added.id in photo_ids(root, project), what="the new photo in the gallery")
        assert (await stop(running))[0] == 0


async def test_a_project_build_after_a_lost_state_keeps_every_project_on_the_root_page(
    make_sim: Any, settings_for: Any
) -> None:
    sim, settings = await synced(make_sim, settings_for)
    await build(settings)
    (settings.mirror.root / ".gallery" / "state.json").unlink()
    first, second = sorted(sim.company.projects)
    await build(settings, [first])
    index = (settings.mirror.root / "index.html").read_text(encoding="utf-8")
    assert f"project-{first}.html" in index and f"project-{second}.html" in index


async def test_a_damaged_or_lost_data_file_is_written_again(make_sim: Any, settings_for: Any) -> None:
    sim, settings = await synced(make_sim, settings_for)
    await build(settings)
    first, second = sorted(sim.company.projects)
    data = settings.mirror.root / ".gallery" / "data"
    good = (data / f"project-{first}.js").read_bytes()
    (data / f"project-{first}.js").write_bytes(good[: len(good) // 2])
    (data / f"project-{second}.js").unlink()
    (settings.mirror.root / "index.csv").write_text("tampered")
    report = await build(settings)
    assert report.written == 3
    assert (data / f"project-{first}.js").read_bytes() == good
    assert photo_ids(settings.mirror.root, second)
    assert (settings.mirror.root / "index.csv").read_bytes().startswith(b"\xef\xbb\xbf")


async def test_a_link_planted_at_a_data_file_is_replaced_not_followed(
    make_sim: Any, settings_for: Any, tmp_path: Path
) -> None:
    sim, settings = await synced(make_sim, settings_for)
    await build(settings)
    project = min(sim.company.projects)
    outside = tmp_path / "outside.js"
    outside.write_text("var GALLERY = null;")
    data = settings.mirror.root / ".gallery" / "data" / f"project-{project}.js"
    data.unlink()
    data.symlink_to(outside)
    await build(settings)
    assert not data.is_symlink() and photo_ids(settings.mirror.root, project)
    assert outside.read_text() == "var GALLERY = null;"


FIFO_PLACES = ["index.html", "index.csv", ".gallery/state.json", ".gallery/gallery.js"]


@pytest.mark.parametrize("place", FIFO_PLACES)
async def test_a_fifo_planted_where_the_gallery_reads_does_not_hang_it(
    make_sim: Any, settings_for: Any, place: str
) -> None:
    _, settings = await synced(make_sim, settings_for)
    await build(settings)
    planted = settings.mirror.root / place
    planted.unlink()
    os.mkfifo(planted)
    await asyncio.wait_for(build(settings), 30)
    assert planted.is_file()  # replaced by the file the gallery keeps there


async def test_a_photo_that_cannot_be_opened_now_is_tried_again_next_build(
    make_sim: Any, settings_for: Any
) -> None:
    sim, settings = await synced(make_sim, settings_for)
    photo = min(sim.company.photos)
    [(path,)] = db_rows(settings, f"SELECT local_path FROM photos WHERE id = {photo}")
    original = settings.mirror.root / path
    aside = original.with_name("aside")
    original.rename(aside)
    os.mkfifo(original)  # not a photo, and must not hang the build either
    first = await asyncio.wait_for(build(settings), 30)
    assert first.placeholders == 1
    original.unlink()
    aside.rename(original)
    again = await build(settings)
    assert (again.thumbnails, again.placeholders) == (1, 0)


async def test_an_edit_that_moves_text_between_fields_is_seen(make_sim: Any, settings_for: Any) -> None:
    sim, settings = await synced(make_sim, settings_for)
    edited = min(sim.company.photos)
    sim.edit_photo(edited, description="B\x1fC", filename="A.jpg")
    assert (await sync(settings)).exit_code == ExitCode.OK
    await build(settings)
    sim.edit_photo(edited, description="C", filename="A.jpg\x1fB")
    assert (await sync(settings)).exit_code == ExitCode.OK
    await build(settings)
    row = row_of(settings.mirror.root, sim.company.photos[edited].project_id, edited)
    assert row[FIELD["description"]] == "C"


async def test_a_link_swapped_in_for_the_gallery_mid_build_receives_nothing(
    make_sim: Any, settings_for: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=60, projects=1)
    settings = settings_for(sim)
    assert (await sync(settings)).exit_code == ExitCode.OK
    gallery = settings.mirror.root / ".gallery"
    outside = tmp_path / "outside"
    outside.mkdir()
    running = asyncio.create_task(build(settings))
    while not (gallery / "thumbs").is_dir() or not any((gallery / "thumbs").iterdir()):
        await asyncio.sleep(0.005)
    gallery.rename(settings.mirror.root / ".gallery-moved")
    gallery.symlink_to(outside)
    await running
    assert list(outside.iterdir()) == []


async def test_a_reader_that_stops_early_gets_no_error(make_sim: Any, tmp_path: Path) -> None:
    _sim, config = await synced_by_process(make_sim, tmp_path)
    # `true` reads nothing and is gone long before the build ends and the report is written
    command = f"{sys.executable} -m syncer gallery --config {config} 2>{tmp_path / 'err'} | true"
    shell = await asyncio.create_subprocess_shell(command)
    await asyncio.wait_for(shell.wait(), 60)
    assert (tmp_path / "err").read_text() == ""
