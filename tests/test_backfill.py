"""A first backfill, from outside: newest photos of every project first, a stopped one resumes
from its proven slices, and `syncer estimate` counts what the simulator holds."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from syncer.config import load_settings
from syncer.errors import ExitCode
from syncer.estimate import Budget
from syncer.simulator import Simulator
from syncer.simulator.server import ListingRequest
from tests.conftest import assert_byte_exact, db_rows, in_mirror, stored_time, write_config
from tests.test_cli import Run, assert_no_traceback, spawn, syncer

PACED: dict[str, Any] = {
    "photos": 300,
    "projects": 3,
    "photo_size": 2_000,
    "spike_limit": 80,
    "spike_window": 1.0,
}
"""Three projects over a year of photos, at 80 requests a second with file requests counted: a
whole backfill takes about 10 seconds, so what comes first can be watched."""
SLICES = {"per_page": 5}
"""Slices of 50 photos (ten pages): each project's backfill takes several turns."""


def recent(sim: Simulator, newest_ago: timedelta = timedelta(hours=2)) -> None:
    """Move the company's history so its newest photo is `newest_ago` old: the generated company
    lives in a year before a fixed date, and a backfill goes back from now."""
    photos = sim.company.photos.values()
    shift = datetime.now(UTC) - newest_ago - max(p.updated_at for p in photos)
    for p in photos:
        p.updated_at += shift
        p.created_at = p.created_at and p.created_at + shift
        p.taken_at = p.taken_at and p.taken_at + shift
    sim.changed()


def by_age(sim: Simulator, project_id: int | None = None) -> list[int]:
    """Live photo ids, newest `updated_at` first (of one project, or of the company)."""
    photos = [p for p in sim.company.photos.values() if not p.deleted]
    chosen = [p for p in photos if project_id is None or p.project_id == project_id]
    return [p.id for p in sorted(chosen, key=lambda p: p.updated_at, reverse=True)]


def mirrored(root: Path) -> dict[int, float]:
    """Photo id -> when its file was installed in the mirror (its inode's change time: the mirror
    sets a file's modification time to the photo's); the layout names files `{id}_...`."""
    if not root.exists():
        return {}
    return {
        int(p.name.split("_", 1)[0]): p.stat().st_ctime
        for p in root.rglob("*")
        if p.is_file() and in_mirror(p, root) and p.suffix != ".json"
    }


def newest_share_took(sim: Simulator, root: Path, share: float) -> tuple[float, float]:
    """(seconds until the newest `share` of the photos were all in the mirror, seconds until all
    were), from the first file's install: the bench's "newest first" figure, read from when the
    files were installed against the photos' `updated_at`."""
    times = mirrored(root)
    newest = by_age(sim)[: max(1, round(share * len(times)))]
    start = min(times.values())
    return max(times[i] for i in newest) - start, max(times.values()) - start


def updated_ranges(requests: Iterable[ListingRequest]) -> list[tuple[datetime, datetime]]:
    """The `filters[updated_at]` range of each listing request that had one."""
    out = []
    for r in requests:
        if (text := r.query.get("filters[updated_at]")) is not None:
            start, _, end = text.partition("...")
            out.append((datetime.fromisoformat(start), datetime.fromisoformat(end)))
    return out


async def test_a_first_backfill_mirrors_the_newest_photos_of_every_project_before_the_oldest(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(**PACED)
    recent(sim)
    config = write_config(sim, tmp_path, sync=SLICES)
    root = tmp_path / "mirror"
    newest = {pid: set(by_age(sim, pid)[:5]) for pid in sim.company.projects}
    proc = await spawn("sync", "--config", str(config))
    async with asyncio.timeout(120):
        while proc.returncode is None and not all(ids <= mirrored(root).keys() for ids in newest.values()):
            await asyncio.sleep(0.05)
    assert proc.returncode is None, "the run ended before the order could be seen"
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == ExitCode.INTERRUPTED, err.decode()
    oldest = set(by_age(sim)[-len(sim.company.photos) // 10 :])
    assert not oldest & mirrored(root).keys(), "the oldest tenth of the company waits for the newest"


async def test_a_backfill_not_done_says_how_far_back_in_local_time_with_the_offset(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(**PACED)
    recent(sim)
    config = write_config(sim, tmp_path, sync={**SLICES, "max_duration": "3s"})
    run = await syncer("sync", "--config", str(config), env={"TZ": "XYZ-2"})  # two hours east of UTC
    proven = {
        stored_time(until) + timedelta(hours=2)
        for (until,) in db_rows(load_settings(config), "SELECT backfill_until FROM projects")
        if until
    }
    shown = re.findall(r"listed newest first back to (.+?); ", run.out)
    assert proven and set(shown) == {f"{moment:%Y-%m-%d %H:%M:%S} +02:00" for moment in proven}, run.out


async def test_a_run_stopped_at_max_duration_ends_with_what_it_leaves_to_the_next_run(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(**PACED)
    recent(sim)
    config = write_config(sim, tmp_path, sync={**SLICES, "max_duration": "3s"})
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.INCOMPLETE, run.out + run.err
    *_, total, left = run.out.splitlines()
    downloaded = re.fullmatch(r"INCOMPLETE: 3 projects, (\d+) photos downloaded .+", total)
    queued = re.search(r"(\d+) photos? listed and not in the mirror yet \(.+ to download\)", left)
    unlisted = re.search(r"about (\d+) photos? not listed yet", left)
    assert downloaded and unlisted and left.startswith("left for the next run: "), run.out
    still = int(queued[1]) if queued else 0
    # a slice being listed when the run stopped counts in both until it is proven: hence "about"
    assert int(downloaded[1]) + still + int(unlisted[1]) >= len(sim.company.photos), "nothing is forgotten"


async def test_a_backfill_stopped_at_max_duration_is_incomplete_and_the_next_run_lists_only_the_rest(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(**PACED)
    recent(sim)
    config = write_config(sim, tmp_path, sync={**SLICES, "max_duration": "3s"})
    first = await syncer("sync", "--config", str(config))
    assert first.code == ExitCode.INCOMPLETE, first.out + first.err
    assert "first backfill not done: listed newest first back to " in first.out
    assert first.out.splitlines()[-2].startswith("INCOMPLETE: 3 projects")
    settings = load_settings(config)
    marks = dict(db_rows(settings, "SELECT id, backfill_until FROM projects WHERE checkpoint IS NOT NULL"))
    assert any(marks.values()), "a proven slice is recorded"
    proven = {pid: stored_time(until) for pid, until in marks.items() if until}
    checkpoints = {
        pid: stored_time(at)
        for pid, at in db_rows(settings, "SELECT id, checkpoint FROM projects WHERE checkpoint IS NOT NULL")
    }

    requests: list[ListingRequest] = []
    sim.listing_hooks.append(requests.append)
    write_config(sim, tmp_path, sync=SLICES)
    second = await syncer("sync", "--config", str(config))
    assert second.code == ExitCode.OK, second.out + second.err
    for pid, until in proven.items():
        listed = updated_ranges(r for r in requests if r.project_id == pid)
        again = [(a, b) for a, b in listed if a < checkpoints[pid] and b > until + timedelta(seconds=1)]
        assert not again, f"project {pid}: proven slices listed again: {again}"
    assert_byte_exact(sim, settings)
    state = db_rows(settings, "SELECT checkpoint, backfill_until FROM projects")
    assert all(checkpoint and until is None for checkpoint, until in state), state


async def test_a_backfill_brings_the_newest_tenth_of_the_photos_early(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(**PACED)
    recent(sim)
    config = write_config(sim, tmp_path, sync=SLICES)
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.OK, run.out + run.err
    newest, whole = newest_share_took(sim, tmp_path / "mirror", 0.10)
    print(f"newest tenth: {newest:.1f} s of {whole:.1f} s")
    assert newest <= 0.4 * whole, (newest, whole)


async def test_estimate_counts_the_simulated_company_and_prices_it_at_the_budget(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=300, projects=3)
    recent(sim)
    changed = [p for p in sim.company.photos.values() if p.updated_at > datetime.now(UTC) - timedelta(days=1)]
    config = write_config(sim, tmp_path, schedule={"incremental": {"every": "1h"}})
    run = await syncer("estimate", "--config", str(config), "--json")
    assert run.code == ExitCode.OK, run.err
    figures = json.loads(run.out)
    assert (figures["projects"], figures["photos"]) == (3, 300)
    assert figures["changed_last_day"] == len(changed)
    assert figures["counting_requests"] == 2 + 2 * 3, "a token, the projects, then two counts a project"
    day = figures["day_of_incrementals"]
    assert day["turns_per_project"] == 24
    assert day["listing_requests"] == 24 * 3 + sum(
        -(-sum(p.project_id == pid for p in changed) // 25) for pid in sim.company.projects
    )
    budget = Budget(3600, 25, 10.0)  # Procore's documented example, the default
    backfill = figures["first_backfill"]
    assert backfill["file_requests"] == 300
    assert backfill["seconds_files_counted"] == round(budget.seconds(backfill["listing_requests"] + 300), 1)
    assert backfill["seconds_files_not_counted"] == round(budget.seconds(backfill["listing_requests"]), 1)

    images_before = sim.stats.requests["images"]
    synced = await syncer("sync", "--config", str(config))
    assert synced.code == ExitCode.OK, synced.out + synced.err
    listed = sim.stats.requests["images"] - images_before
    print(f"listing requests: {listed}, estimated {backfill['listing_requests']}")
    assert 0.75 * listed <= backfill["listing_requests"] <= 1.5 * listed, (listed, backfill)


async def test_estimate_text_names_both_ways_of_counting_file_requests(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim()
    run = await syncer("estimate", "--config", str(write_config(sim, tmp_path)))
    assert run.code == ExitCode.OK, run.err
    assert run.out.startswith(f"company {sim.company.id}: 2 projects, 60 photos")
    assert "file requests counted:" in run.out and "file requests not counted:" in run.out
    assert_no_traceback(Run(run.code, run.out, run.err))


@pytest.mark.parametrize(
    ("requests", "seconds"),
    [
        (25, 10.0),  # within the first hour the spike window sets the pace: 2.5 a second
        (3_600, 1_440.0),
        (7_200, 3_600 + 1_440.0),  # the second hour's allowance waits for the hour to end
        (1_001_000, 278 * 3_600 + 200 / 2.5),  # a million photos and their listing: 11.6 days
    ],
)
def test_the_budget_gives_each_hour_at_the_spike_windows_pace(requests: int, seconds: float) -> None:
    assert Budget(3600, 25, 10.0).seconds(requests) == pytest.approx(seconds)


def test_a_workers_share_slows_the_budget_in_proportion() -> None:
    assert Budget(3600, 25, 10.0, share=0.5).seconds(1_800) == pytest.approx(1_440.0)
