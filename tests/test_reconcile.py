"""The proven id set on its own (`upstream_ids`, `cut_points`), against the simulator: the ids a
deletion check may trust, or none. What is done with them is in `test_deletions.py`."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from syncer.errors import ExitCode
from syncer.listing import BEGINNING
from syncer.plan import Change
from syncer.procore.models import Project
from syncer.procore.query import ImageQuery
from syncer.reconcile import Deletions, IdListing, cut_points, upstream_ids
from syncer.simulator import Simulator
from syncer.simulator.server import ListingRequest
from tests.conftest import db_rows, mirror_photos, sync
from tests.test_procore_client import client, scripted

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def at(*seconds: float) -> list[datetime]:
    return [T0 + timedelta(seconds=s) for s in seconds]


def test_cut_points_give_pieces_of_about_chunk_known_photos() -> None:
    assert cut_points(at(*range(10)), 3) == at(3, 6, 9)


def test_cut_points_are_whole_seconds_and_never_repeat() -> None:
    assert cut_points(at(0, 1.2, 1.7, 1.9, 2.5, 3, 4), 2) == at(1, 2, 4)
    assert cut_points(at(0, 1.2, 1.7, 1.9, 1.95, 3), 2) == at(1)


def test_cut_points_skip_unknown_times_and_the_beginning() -> None:
    assert cut_points([None, BEGINNING, BEGINNING, *at(5, 6), None], 1) == at(5, 6)
    assert cut_points(at(1, 2), 5) == []


def project_of(sim: Simulator) -> int:
    return min(sim.company.projects)


def live_ids(sim: Simulator) -> set[int]:
    return {p.id for p in sim.company.live_photos(project_of(sim))}


def known_times(sim: Simulator) -> list[datetime | None]:
    return [p.updated_at for p in sim.company.live_photos(project_of(sim))]


async def list_ids(sim: Simulator, times: list[datetime | None] | None = None) -> IdListing:
    async with client(sim) as api:
        query = ImageQuery(project_id=project_of(sim))
        return await upstream_ids(api, query, known_times(sim) if times is None else times)


def id_requests(sim: Simulator) -> list[ListingRequest]:
    seen: list[ListingRequest] = []
    sim.listing_hooks.append(lambda request: seen.append(request) if request.view == "ids_only" else None)
    return seen


async def test_a_project_that_fits_one_page_costs_one_request(make_sim: Any) -> None:
    sim = await make_sim(photos=60, projects=1)
    requests = id_requests(sim)
    listing = await list_ids(sim)
    assert listing.ids == live_ids(sim)
    assert len(requests) == 1


async def test_a_larger_project_is_listed_in_proven_pieces_of_about_a_page(make_sim: Any) -> None:
    sim = await make_sim(photos=250, projects=1, max_per_page=100)
    requests = id_requests(sim)
    listing = await list_ids(sim)
    assert listing.ids == live_ids(sim) and listing.problem is None
    pieces = {r.query.get("filters[updated_at]") for r in requests if r.page == 1} - {None}
    assert len(pieces) == 250 // 80 + 1, "a piece for each 80 known photos, and the open-ended last"
    assert all(r.page == 1 for r in requests[1:]), "each piece fits one page"


async def test_without_known_times_the_ids_are_listed_as_one_piece(make_sim: Any) -> None:
    sim = await make_sim(photos=250, projects=1, max_per_page=100)
    listing = await list_ids(sim, times=[])
    assert listing.ids == live_ids(sim)


async def test_photos_edited_while_the_ids_are_listed_are_still_in_them(make_sim: Any) -> None:
    """They move into the open-ended last piece, which is listed after the move."""
    sim = await make_sim(photos=250, projects=1, max_per_page=100)
    requests = id_requests(sim)
    edited: list[int] = []

    def edit_during_the_second_piece(request: ListingRequest) -> None:
        if request.view == "ids_only" and len(requests) == 3 and not edited:
            for photo in sim.company.live_photos(request.project_id)[:20]:
                sim.edit_photo(photo.id, description="edited while the ids are listed")
                edited.append(photo.id)

    sim.listing_hooks.append(edit_during_the_second_piece)
    listing = await list_ids(sim)
    assert edited and listing.ids == live_ids(sim)


async def test_a_piece_that_never_matches_total_gives_no_ids_and_names_its_range(make_sim: Any) -> None:
    sim = await make_sim(photos=250, projects=1, max_per_page=100)
    sim.config.hidden.add(min(live_ids(sim)))  # counted in Total, never served
    listing = await list_ids(sim)
    assert listing.ids is None
    assert listing.problem is not None
    span = r"[0-9T:-]{19}\.\.[0-9T:-]{19} UTC"
    assert re.fullmatch(rf"the ids updated {span} did not match Total", listing.problem)


async def test_a_photo_whose_lookup_answers_a_malformed_record_is_not_gone(sim: Simulator) -> None:
    """Only a 404 is a deletion: a lookup that answers, however oddly, says the photo exists."""
    async with (
        scripted(web.json_response({"id": "not a number"})) as (base, _),
        client(sim, api_base=base) as api,
    ):
        deletions = Deletions(api, None, None, None, concurrency=2, now=lambda: T0)  # type: ignore[arg-type]
        project = Project(id=project_of(sim), name="p", active=True)
        assert await deletions._confirm_gone(project, [1, 2]) == []


# -- a reconcile lists records only where they differ ------------------------------------------------


def record_requests(sim: Simulator) -> list[ListingRequest]:
    seen: list[ListingRequest] = []
    sim.listing_hooks.append(lambda request: seen.append(request) if request.view != "ids_only" else None)
    return seen


async def test_a_reconcile_of_a_well_known_project_lists_its_ids_and_one_sample_page_of_records(
    make_sim: Any, settings_for: Any
) -> None:
    sim = await make_sim(photos=2500, projects=1, max_per_page=1000)  # ids: 1,000 a page
    settings = settings_for(sim, sync={"per_page": 100})  # records: 100 a page
    await sync(settings)
    records, ids = record_requests(sim), id_requests(sim)
    summary = await sync(settings, full=True)
    assert summary.exit_code == ExitCode.OK
    assert len(ids) == 1 + 2500 // 800 + 1, "a first page, then a page of ids per piece"
    assert len(records) == 2, "the window since the checkpoint, and one page of records as a sample"


async def test_a_reconcile_lists_every_record_where_that_costs_no_more_than_the_ids(
    make_sim: Any, settings_for: Any
) -> None:
    sim = await make_sim(photos=500, projects=1, max_per_page=100)  # 100 ids or records a page
    settings = settings_for(sim, mirror={"on_delete": "delete"}, sync={"per_page": 100})
    await sync(settings)
    ids = id_requests(sim)
    gone = min(sim.company.photos)
    sim.delete_photo(gone)
    summary = await sync(settings, full=True)
    assert summary.results[0].deleted_upstream == 1
    assert len(ids) == 1, "one page of ids: they cost as much as records"
    assert summary.results[0].listed == 499, "then every record"


async def test_a_photo_the_database_never_saw_is_listed_and_mirrored_by_a_reconcile(
    make_sim: Any, settings_for: Any
) -> None:
    sim = await make_sim(photos=300, projects=1, max_per_page=100)
    settings = settings_for(sim, sync={"per_page": 100})
    await sync(settings)
    oldest = min(p.updated_at for p in sim.company.photos.values())
    late = sim.add_photo(project_of(sim), updated_at=oldest, created_at=oldest)  # shown with an old time
    assert (await sync(settings)).results[0].changes[Change.NEW] == 0, "an incremental run cannot see it"
    summary = await sync(settings, full=True)
    assert summary.results[0].changes[Change.NEW] == 1
    assert mirror_photos(settings.mirror.root)[late.id] == late.content.all_bytes()


async def test_a_url_move_found_in_the_sample_relists_every_piece(make_sim: Any, settings_for: Any) -> None:
    sim = await make_sim(photos=500, projects=1, max_per_page=100)
    settings = settings_for(sim, sync={"per_page": 100})
    await sync(settings)
    before = {key for (key,) in db_rows(settings, "SELECT file_key FROM photos")}
    sim.move_file_urls("v4")
    summary = await sync(settings, full=True)
    assert summary.exit_code == ExitCode.OK
    after = {key for (key,) in db_rows(settings, "SELECT file_key FROM photos")}
    assert len(after) == 500 and not after & before, "every photo's new URL recorded"
    assert summary.results[0].downloaded == 0
