"""Listings that never add up, through a real `syncer` process: a `Total` always one too high, links
that never end, every project listed twice. The work stays bounded, the project is reported not
proven with the reason, and the run goes on."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from syncer.errors import ExitCode
from syncer.listing import MIN_BUDGET
from syncer.procore.api import MAX_PAGES
from tests.conftest import mirror_photos
from tests.test_cli import syncer
from tests.test_hostile_listing import sync_process


async def test_a_total_always_one_too_high_costs_a_bounded_number_of_requests(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=40, projects=2, total_offset=1)
    started = time.monotonic()
    run = await sync_process(sim, tmp_path)
    assert run.code == ExitCode.INCOMPLETE
    output = run.out + run.err
    assert "Procore's Total says 3 projects, the listing gave 2" in output
    # in each project its newest slice, then the rest below it as one listing, each within its
    # budget; and two counts
    assert output.count("(sync.listing_budget 20); Procore's Total never matched") == 4, output
    assert sim.stats.requests["images"] <= 4 * MIN_BUDGET + 4
    assert time.monotonic() - started < 120
    assert mirror_photos(tmp_path / "mirror") == sim.expected_files(), "what was listed is mirrored"


async def test_an_endless_chain_of_project_pages_is_cut_and_named(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=10, projects=1, endless_links=True)
    run = await sync_process(sim, tmp_path)
    assert run.code == ExitCode.INCOMPLETE
    assert f"listing projects: more than {MAX_PAGES} pages; its links never end" in run.out + run.err
    assert sim.stats.requests["projects"] == MAX_PAGES


async def test_a_project_listed_twice_is_synced_once(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=20, projects=2, projects_twice=True)
    run = await sync_process(sim, tmp_path)
    assert run.code == ExitCode.OK, run.out + run.err
    assert run.out.splitlines()[-1].startswith("complete: 2 projects, 20 photos downloaded")
    assert mirror_photos(tmp_path / "mirror") == sim.expected_files()


async def test_a_photo_listed_in_two_projects_stays_in_one_and_is_fetched_once(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=20, projects=2)
    first, second = sorted(sim.company.projects)
    shared = [i for i, p in sorted(sim.company.photos.items()) if p.project_id == first][:3]
    sim.config.also_in.update(dict.fromkeys(shared, second))
    config = str(tmp_path / "config.yaml")
    assert (await sync_process(sim, tmp_path)).code == ExitCode.OK
    layout = {p.relative_to(tmp_path / "mirror") for p in (tmp_path / "mirror").rglob("*") if p.is_file()}
    for _ in range(2):
        assert (await syncer("sync", "--config", config)).code == ExitCode.OK
        run = await syncer("sync", "--full", "--config", config)
        assert run.code == ExitCode.OK, run.out + run.err
        # newest first, either project may have listed a shared photo first: it stays there
        held = re.findall(r"(\d+) photos? listed here (?:is|are) also in another project and kept", run.out)
        assert sum(map(int, held)) == 3, run.out
    assert sum(sim.stats.downloads.values()) == 20, "no photo was fetched twice"
    now = {p.relative_to(tmp_path / "mirror") for p in (tmp_path / "mirror").rglob("*") if p.is_file()}
    assert now == layout, "no file moved, was removed or went to the trash"
    assert mirror_photos(tmp_path / "mirror") == sim.expected_files()


async def test_a_photo_moved_to_another_project_is_taken_over_by_it(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=20, projects=2)
    first, second = sorted(sim.company.projects)
    assert (await sync_process(sim, tmp_path)).code == ExitCode.OK
    moved = next(i for i, p in sorted(sim.company.photos.items()) if p.project_id == first)
    sim.company.photos[moved].project_id = second
    sim.edit_photo(moved, description="moved to the second project")
    run = await syncer("sync", "--config", str(tmp_path / "config.yaml"))
    assert run.code == ExitCode.OK, run.out + run.err
    assert "1 moved" in run.out and "also in another project" not in run.out
    assert sum(sim.stats.downloads.values()) == 20, "moved, not fetched again"
    assert mirror_photos(tmp_path / "mirror") == sim.expected_files()
