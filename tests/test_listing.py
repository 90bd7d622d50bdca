"""Listing completeness: unstable tie order, ignored sorts, and edits and deletions mid-listing."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncer.config import load_settings
from syncer.errors import ExitCode
from syncer.plan import Change
from syncer.simulator import SimConfig, Simulator
from syncer.simulator.server import ListingRequest
from tests.conftest import TIME_MODELS, assert_byte_exact, db_rows, sidecars, stored_time, sync, write_config


def tie(sim: Simulator, count: int, *, created_too: bool, seed: int = 3) -> list[int]:
    """Give `count` photos of the first project one `updated_at` second (and one `created_at`)."""
    project = next(iter(sim.company.projects))
    photos = random.Random(seed).sample(sim.company.live_photos(project), count)
    moment = max(p.created_at for p in photos) + timedelta(days=1)
    for p in photos:
        p.updated_at = moment
        if created_too:
            p.created_at = moment - timedelta(hours=1)
    sim.changed()
    return [p.id for p in photos]


def undated_photo(sim: Simulator) -> int:
    """A photo of the simulator's kept without `created_at`: no created_at range can match it."""
    undated = min(sim.expected_files())
    sim.company.photos[undated].created_at = None
    sim.changed()
    return undated


def restore_on_page_2(sim: Simulator, photo_id: int) -> list[bool]:
    """Delete the photo now and restore it with its old time while page 2 of the first listing is
    served: it is back in the window, unseen by that pass. The list says whether it happened."""
    sim.delete_photo(photo_id)
    restored: list[bool] = []

    def hook(request: ListingRequest) -> None:
        if request.page == 2 and not restored and request.view == "normal":
            restored.append(True)
            sim.restore_photo(photo_id, keep_time=True)

    sim.listing_hooks.append(hook)
    return restored


def edit_and_delete_on_page(sim: Simulator, page: int, *, edits: int, deletes: int, seed: int = 5) -> None:
    """While page `page` of the first listing is being served, edit and delete photos."""
    done = False

    def hook(request: ListingRequest) -> None:
        nonlocal done
        if done or request.page != page or request.view != "normal":
            return
        done = True
        rng = random.Random(seed)
        live = sim.company.live_photos(request.project_id)
        victims = rng.sample(live, min(len(live), edits + deletes))
        for p in victims[:edits]:
            sim.edit_photo(p.id, description="edited while listing")
        for p in victims[edits:]:
            sim.delete_photo(p.id)

    sim.listing_hooks.append(hook)


async def test_unstable_ties_and_mid_listing_edits_lose_nothing(
    make_sim: Any, settings_for: Any, times: dict[str, Any]
) -> None:
    sim = await make_sim(**times, photos=300, projects=1, photo_size=3_000)
    tie(sim, 110, created_too=True)
    edit_and_delete_on_page(sim, 2, edits=25, deletes=12)
    settings = settings_for(sim, sync={"per_page": 25, "concurrency": 8})
    first = await sync(settings)
    assert first.exit_code == ExitCode.OK, [r.unproven for r in first.results]
    second = await sync(settings)
    assert second.exit_code == ExitCode.OK
    assert_byte_exact(sim, settings)


async def test_a_bulk_edit_of_one_second_comes_through_whole(
    make_sim: Any, settings_for: Any, times: dict[str, Any]
) -> None:
    sim = await make_sim(**times, photos=120, projects=1, photo_size=3_000)
    settings = settings_for(sim, sync={"per_page": 20})
    await sync(settings)
    moved = tie(sim, 100, created_too=False)
    moment = sim.now()
    for pid in moved:
        sim.edit_photo(pid, description="bulk moved")
        sim.company.photos[pid].updated_at = moment
    sim.changed()
    summary = await sync(settings)
    assert summary.exit_code == ExitCode.OK
    assert summary.results[0].listed >= 100
    assert_byte_exact(sim, settings)
    assert sum(s["description"] == "bulk moved" for s in sidecars(settings.mirror.root)) == 100


async def test_paging_alone_would_have_missed_photos(make_sim: Any) -> None:
    """The simulator really is nasty: naive offset paging over ties skips some photos."""
    import aiohttp

    sim = await make_sim(photos=300, projects=1)
    tie(sim, 300, created_too=True)
    project = next(iter(sim.company.projects))
    async with aiohttp.ClientSession() as session:
        token = (
            await (
                await session.post(
                    f"{sim.api_base}/oauth/token",
                    data={
                        "grant_type": "client_credentials",
                        "client_id": sim.config.client_id,
                        "client_secret": sim.config.client_secret,
                    },
                )
            ).json()
        )["access_token"]
        headers = {"Authorization": f"Bearer {token}", "Procore-Company-Id": str(sim.company.id)}
        seen: set[int] = set()
        for page in range(1, 7):
            answer = await session.get(
                f"{sim.api_base}/rest/v1.0/images",
                headers=headers,
                params={"project_id": project, "page": page, "per_page": 50, "sort": "created_at"},
            )
            seen.update(item["id"] for item in await answer.json())
    assert len(seen) < 300


async def test_an_unprovable_listing_keeps_the_checkpoint(make_sim: Any, settings_for: Any) -> None:
    sim = await make_sim(photos=40, projects=1, max_per_page=10)
    sim.config.hidden.add(min(tie(sim, 40, created_too=True)))  # counted in Total, never served
    settings = settings_for(sim, sync={"per_page": 10})
    summary = await sync(settings)
    assert summary.exit_code == ExitCode.INCOMPLETE
    assert summary.results[0].unproven and summary.results[0].backfill_left
    ((checkpoint, until),) = db_rows(settings, "SELECT checkpoint, backfill_until FROM projects")
    hidden = sim.company.photos[min(sim.config.hidden)].updated_at
    assert checkpoint is None or (until and stored_time(until) > hidden), (
        "no slice that holds the unprovable photo is recorded as proven"
    )


schedules = st.lists(
    st.tuples(st.integers(min_value=1, max_value=6), st.integers(0, 8), st.integers(0, 4)),
    max_size=4,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    schedule=schedules,
    ties=st.integers(0, 60),
    seed=st.integers(0, 10_000),
    times=st.sampled_from(list(TIME_MODELS.values())),
)
def test_random_edit_and_delete_schedules_never_lose_a_photo(
    tmp_path_factory: Any, schedule: list[tuple[int, int, int]], ties: int, seed: int, times: dict[str, Any]
) -> None:
    async def scenario() -> None:
        sim = Simulator(SimConfig(seed=seed, photos=120, projects=1, photo_size=2_500, **times))
        await sim.start()
        try:
            if ties:
                tie(sim, ties, created_too=seed % 2 == 0, seed=seed)
            for n, (page, edits, deletes) in enumerate(schedule):
                edit_and_delete_on_page(sim, page, edits=edits, deletes=deletes, seed=seed + n)
            folder: Path = tmp_path_factory.mktemp("prop")
            settings = load_settings(write_config(sim, folder, sync={"per_page": 15, "concurrency": 4}))
            await sync(settings)
            summary = await sync(settings)
            assert summary.exit_code == ExitCode.OK
            assert_byte_exact(sim, settings)
        finally:
            await sim.stop()

    asyncio.run(scenario())


async def test_a_failed_listing_leaves_the_checkpoint_where_it_was(make_sim: Any, settings_for: Any) -> None:
    sim = await make_sim(projects=1)
    settings = settings_for(sim, procore={"retry_attempts": 2})
    await sync(settings)
    before = db_rows(settings, "SELECT checkpoint FROM projects")

    def fail(request: ListingRequest) -> None:
        raise web.HTTPBadGateway()

    sim.listing_hooks.append(fail)
    summary = await sync(settings)
    assert summary.exit_code == ExitCode.INCOMPLETE
    assert summary.results[0].listing_error and not summary.results[0].checkpoint_advanced
    assert db_rows(settings, "SELECT checkpoint FROM projects") == before


async def test_a_photo_without_created_at_is_listed_when_its_piece_is_split(
    make_sim: Any, settings_for: Any, times: dict[str, Any]
) -> None:
    sim = await make_sim(**times, photos=40, projects=1, max_per_page=10)
    undated_photo(sim)
    edit_and_delete_on_page(sim, 2, edits=3, deletes=2)  # the first pass fails: the window is split
    settings = settings_for(sim, sync={"per_page": 10})
    summary = await sync(settings)
    assert summary.exit_code == ExitCode.OK
    assert_byte_exact(sim, settings)


async def test_a_photo_without_created_at_that_appears_after_a_split_is_not_lost(
    make_sim: Any, settings_for: Any, times: dict[str, Any]
) -> None:
    sim = await make_sim(**times, photos=40, projects=1, max_per_page=10)
    restored = restore_on_page_2(sim, undated_photo(sim))
    settings = settings_for(sim, sync={"per_page": 10})
    # One window over everything: a first backfill's slices could have passed its time already,
    # and a photo back with its old time is then found by the next --full, as after any run.
    summary = await sync(settings, full=True)
    assert restored
    assert summary.exit_code == ExitCode.OK
    assert_byte_exact(sim, settings)


# -- the window's ends: whole seconds shown, finer times stored, ends held or not ------------------


async def start_of_a_second() -> None:
    """Wait for the next second to begin, so what follows happens within one second."""
    await asyncio.sleep(1 - time.time() % 1 + 0.01)


async def test_a_photo_edited_in_the_second_a_run_starts_is_in_it(
    make_sim: Any, settings_for: Any, times: dict[str, Any]
) -> None:
    sim = await make_sim(**times, photos=30, projects=1)
    settings = settings_for(sim)
    await sync(settings)
    await start_of_a_second()
    edited = sim.edit_photo(min(sim.expected_files()), description="edited as the run starts")
    summary = await sync(settings)
    shown = edited.updated_at.replace(microsecond=0)
    assert summary.results[0].window_end == shown, "the run did not start in the second of the edit"
    assert summary.exit_code == ExitCode.OK
    assert sum(s["description"] == "edited as the run starts" for s in sidecars(settings.mirror.root)) == 1


async def test_a_photo_edited_in_the_second_a_run_ended_is_in_the_next_run(
    make_sim: Any, settings_for: Any, times: dict[str, Any]
) -> None:
    sim = await make_sim(**times, photos=30, projects=1)
    settings = settings_for(sim, sync={"overlap": 0})
    await sync(settings)
    await start_of_a_second()
    first = await sync(settings)
    edited = sim.edit_photo(min(sim.expected_files()), description="edited as the run ends")
    assert first.results[0].window_end == edited.updated_at.replace(microsecond=0), "not in the same second"
    second = await sync(settings)
    assert second.exit_code == ExitCode.OK
    assert second.results[0].changes[Change.METADATA] == 1
