"""What real companies meet in their first month, from the outside: closed projects that Procore
lists only when asked, a mirror disk that did not mount, file URLs that move, and one record that
cannot be read. A real `syncer` process, the simulator as Procore behaves, the mirror's bytes."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from syncer.config import load_settings
from syncer.errors import ExitCode
from syncer.mirror.files import MARKER
from syncer.simulator import Simulator
from syncer.simulator.server import ListingRequest
from tests.conftest import assert_byte_exact, lose_database, mirror_photos, sidecars, write_config
from tests.test_cli import Run, assert_no_traceback, syncer
from tests.test_daemon import daemon, daemon_config, eventually, healthz_is, stop
from tests.test_guarantees import fetched

# -- closed projects ---------------------------------------------------------------------------------


def close_a_project(sim: Simulator) -> int:
    """Close out the simulated company's first project, as a finished job is in Procore."""
    closed = min(sim.company.projects)
    sim.company.projects[closed].active = False
    return closed


def photos_of(sim: Simulator, project_id: int) -> set[int]:
    return {p.id for p in sim.company.photos.values() if p.project_id == project_id}


async def test_projects_all_mirrors_closed_projects_too(sim: Simulator, tmp_path: Path) -> None:
    closed = close_a_project(sim)
    config = write_config(sim, tmp_path)
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.OK, run.err
    assert photos_of(sim, closed) <= set(mirror_photos(tmp_path / "mirror"))
    assert_byte_exact(sim, load_settings(config))


async def test_project_status_active_leaves_closed_projects_out(sim: Simulator, tmp_path: Path) -> None:
    closed = close_a_project(sim)
    config = write_config(sim, tmp_path, sync={"project_status": "active"})
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.OK, run.err
    mirrored = set(mirror_photos(tmp_path / "mirror"))
    assert mirrored and not photos_of(sim, closed) & mirrored


async def test_a_closed_project_named_by_id_is_synced(sim: Simulator, tmp_path: Path) -> None:
    closed = close_a_project(sim)
    config = write_config(sim, tmp_path, sync={"projects": [closed], "project_status": "active"})
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.OK, run.err
    assert set(mirror_photos(tmp_path / "mirror")) == photos_of(sim, closed)


async def test_status_says_which_projects_are_closed(sim: Simulator, tmp_path: Path) -> None:
    closed = close_a_project(sim)
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    document = json.loads((await syncer("status", "--config", str(config), "--json")).out)
    assert {p["id"]: p["active"] for p in document["projects"]} == {
        pid: pid != closed for pid in sim.company.projects
    }
    table = (await syncer("status", "--config", str(config))).out
    assert f"({closed}, closed)" in table
    assert sum(", closed)" in line for line in table.splitlines()) == 1


# -- a URL is not an identity --------------------------------------------------------------------------


def file_paths(root: Path) -> set[str]:
    """The file URL paths the mirror's sidecars hold."""
    return {URL(record["url"]).path for record in sidecars(root)}


async def test_a_moved_file_url_costs_no_download(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    before, downloads = file_paths(tmp_path / "mirror"), fetched(sim)
    sim.move_file_urls("v4")
    run = await syncer("sync", "--config", str(config), "--full")
    assert run.code == ExitCode.OK, run.out + run.err
    assert fetched(sim) == downloads, "nothing downloaded again"
    assert_byte_exact(sim, load_settings(config))
    after = file_paths(tmp_path / "mirror")
    assert len(after) == len(sim.company.photos) and not after & before, "the sidecars hold the new URLs"
    edited = min(sim.company.photos)
    sim.edit_photo(edited, description="edited after the move")
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    assert fetched(sim) == downloads, "the new URL was recorded: an edit is an edit"


async def test_a_file_replaced_with_its_url_moved_is_fetched(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    downloads = fetched(sim)
    sim.move_file_urls("v4")
    replaced = sim.replace_photo(
        min(sim.company.photos), size=sim.company.photos[min(sim.company.photos)].content.size
    )
    run = await syncer("sync", "--config", str(config), "--full")
    assert run.code == ExitCode.OK, run.out + run.err
    assert fetched(sim) - downloads == 1
    assert mirror_photos(tmp_path / "mirror")[replaced.id] == replaced.content.all_bytes()


async def test_a_lost_database_after_a_url_move_downloads_nothing(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    downloads = fetched(sim)
    sim.move_file_urls("v4")
    lose_database(tmp_path)
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.OK, run.out + run.err
    assert fetched(sim) == downloads, "every file adopted from the mirror"
    assert_byte_exact(sim, load_settings(config))


# -- the mirror knows it is itself ---------------------------------------------------------------------


class Share:
    """A network share at the mirror's path: a folder elsewhere, bind-mounted there, that can fail
    to mount (`unmount`) and come back (`mount`) with everything on it."""

    def __init__(self, folder: Path) -> None:
        self.point, self.disk = folder / "mirror", folder / "nas"
        self.point.mkdir(exist_ok=True)
        self.disk.mkdir(exist_ok=True)

    def mount(self) -> None:
        done = subprocess.run(
            ["mount", "--bind", str(self.disk), str(self.point)], check=False, capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"a share needs a bind mount, refused here: {done.stderr.strip()}")

    def unmount(self) -> None:
        """Gone from the path at once, even while a process holds a file open on it (as a share
        that drops is)."""
        subprocess.run(["umount", "-l", str(self.point)], check=True)


@pytest.fixture
def share(tmp_path: Path) -> Iterator[Share]:
    mounted = Share(tmp_path)
    mounted.mount()
    try:
        yield mounted
    finally:
        subprocess.run(["umount", "-l", str(mounted.point)], check=False, capture_output=True)


def assert_refused(run: Run, path: Path) -> None:
    assert run.code == ExitCode.NO_MIRROR, run.out + run.err
    assert_no_traceback(run)
    (line,) = run.err.strip().splitlines()
    assert str(path) in line and "not mounted" in line, line


async def test_a_share_that_did_not_mount_is_refused_and_nothing_is_written(
    sim: Simulator, share: Share
) -> None:
    config = write_config(sim, share.point.parent)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    share.unmount()
    for args in ([], ["--full"]):
        run = await syncer("sync", "--config", str(config), *args)
        assert_refused(run, share.point)
        assert list(share.point.iterdir()) == [], "nothing written under the mount point"
    share.mount()
    downloads = fetched(sim)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    assert fetched(sim) == downloads, "the share came back whole"


async def test_the_daemon_is_unhealthy_while_its_share_is_gone_and_goes_on_when_it_is_back(
    sim: Simulator, share: Share
) -> None:
    config = daemon_config(sim, share.point.parent)
    async with daemon(config, share.point.parent) as running:
        await eventually(running.runs, what="the first runs")
        share.unmount()
        await eventually(lambda: healthz_is(running, 503), what="/healthz to turn unhealthy")
        (problem,) = json.loads((await running.get("/healthz"))[1])["problems"]
        assert str(share.point) in problem and "mounted" in problem, problem
        added = sim.add_photo(min(sim.company.projects))
        await asyncio.sleep(2)  # runs come due every second meanwhile
        assert list(share.point.iterdir()) == [], "nothing written under the mount point"
        share.mount()
        await eventually(lambda: healthz_is(running, 200), what="/healthz to turn healthy again")
        await eventually(lambda: added.id in mirror_photos(share.point), what="the new photo in the mirror")
        assert (await stop(running))[0] == 0


async def test_a_daemon_started_on_a_share_that_did_not_mount_exits_5(sim: Simulator, share: Share) -> None:
    config = daemon_config(sim, share.point.parent)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    share.unmount()
    run = await syncer("run", "--config", str(config))
    assert_refused(run, share.point)
    assert list(share.point.iterdir()) == []


async def test_new_mirror_starts_over_on_a_new_empty_disk(sim: Simulator, share: Share) -> None:
    config = write_config(sim, share.point.parent)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    share.unmount()  # the new disk: empty
    run = await syncer("sync", "--config", str(config), "--new-mirror")
    assert run.code == ExitCode.OK, run.out + run.err
    assert_byte_exact(sim, load_settings(config))
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK


async def test_another_mirror_mounted_in_its_place_is_refused(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=12, projects=1)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for folder in (ours, theirs):
        folder.mkdir()
        assert (await syncer("sync", "--config", str(write_config(sim, folder)))).code == ExitCode.OK
    shutil.rmtree(ours / "mirror")
    (theirs / "mirror").rename(ours / "mirror")
    run = await syncer("sync", "--config", str(ours / "config.yaml"))
    assert run.code == ExitCode.NO_MIRROR, run.out + run.err
    assert "holds another mirror" in run.err and "--new-mirror" in run.err


async def test_two_runs_starting_a_new_mirror_at_once_agree_on_its_id(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path)
    first, second = sorted(sim.company.projects)
    runs = await asyncio.gather(
        *(syncer("sync", "--config", str(config), "--project", str(pid)) for pid in (first, second) * 2)
    )
    assert {run.code for run in runs} <= {ExitCode.OK, ExitCode.LOCKED}, "\n\n".join(
        r.out + r.err for r in runs
    )
    assert sum(run.code == ExitCode.OK for run in runs) >= 2
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    assert_byte_exact(sim, load_settings(config))


async def test_a_mirror_made_before_mirror_ids_gets_one(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    (tmp_path / "mirror" / MARKER).unlink()
    with sqlite3.connect(tmp_path / "state" / "syncer.db") as db:
        db.execute("DELETE FROM mirrors")
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.OK, run.out + run.err
    assert (tmp_path / "mirror" / MARKER).is_file()


async def test_full_fetches_every_recorded_file_missing_from_the_mirror(
    sim: Simulator, tmp_path: Path
) -> None:
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    photos = sorted(p for p in (tmp_path / "mirror").rglob("*.jpg") if ".syncer" not in p.parts)
    for photo in photos[::7]:
        photo.unlink()
    downloads = fetched(sim)
    run = await syncer("sync", "--config", str(config), "--full")
    assert run.code == ExitCode.OK, run.out + run.err
    assert fetched(sim) - downloads == len(photos[::7])
    assert_byte_exact(sim, load_settings(config))


async def test_verify_of_a_mirror_that_does_not_exist_is_an_error(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path)
    run = await syncer("verify", "--config", str(config))
    assert run.code == ExitCode.NO_MIRROR, run.out + run.err
    assert "does not exist" in run.err and "0 files" not in run.out


async def test_a_gallery_is_never_built_into_a_share_that_did_not_mount(sim: Simulator, share: Share) -> None:
    config = write_config(sim, share.point.parent)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    share.unmount()
    assert_refused(await syncer("gallery", "--config", str(config)), share.point)
    assert list(share.point.iterdir()) == []


# -- page size -----------------------------------------------------------------------------------------


async def listing_requests(make_sim: Any, tmp_path: Path, **server: Any) -> int:
    """Requests a full sync of 1,200 photos spends on listing them, asking 1,000 a page (a full
    one, all in one window, where a first backfill lists newest first in slices; its pages of
    ids, for deletions, are not counted)."""
    sim = await make_sim(photos=1200, projects=1, photo_size=500, **server)
    pages: list[ListingRequest] = []
    sim.listing_hooks.append(lambda r: pages.append(r) if r.view != "ids_only" else None)
    config = write_config(sim, tmp_path, sync={"per_page": 1000})
    run = await syncer("sync", "--full", "--config", str(config))
    assert run.code == ExitCode.OK, run.out + run.err
    assert_byte_exact(sim, load_settings(config))
    return len(pages)


async def test_a_server_that_gives_1000_a_page_costs_a_tenth_of_the_requests(
    make_sim: Any, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    thousand = await listing_requests(make_sim, tmp_path / "a", max_per_page=1000)
    hundred = await listing_requests(make_sim, tmp_path / "b", max_per_page=100)
    # 2 and 12 pages, and up to 2 more for the window's last seconds, listed once they settle
    assert thousand <= 4 and 12 <= hundred <= 14, (thousand, hundred)


async def test_a_server_that_caps_pages_without_saying_so_is_listed_completely(
    make_sim: Any, tmp_path: Path
) -> None:
    assert await listing_requests(make_sim, tmp_path, max_per_page=100, per_page_header=False) <= 14
