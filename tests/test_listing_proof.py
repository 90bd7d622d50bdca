"""The `Lister` alone, against the simulator: what a proven listing holds, at every boundary, under
each way Procore might keep times and end ranges. Fast enough to run for every mutant."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncer.listing import SECOND, Lister, ListingReport, Pass, _split_range, paged_pass
from syncer.procore.api import Page
from syncer.procore.models import Photo
from syncer.procore.query import ImageQuery
from syncer.simulator import Simulator
from syncer.simulator.server import ListingRequest
from tests.test_listing import edit_and_delete_on_page, restore_on_page_2, tie, undated_photo
from tests.test_procore_client import client


def shown(value: datetime) -> datetime:
    return value.replace(microsecond=0)


def utcnow() -> datetime:
    return datetime.now(UTC)


async def listing(
    sim: Simulator,
    start: datetime | None,
    end: datetime,
    *,
    per_page: int = 10,
    now: Callable[[], datetime] | None = None,
    watch: Callable[[list[int]], None] | None = None,
) -> tuple[ListingReport, set[int]]:
    """List the first project's window `[start, end]`; the report and every id handed on.
    `watch` sees the ids of each page."""
    seen: set[int] = set()

    async def on_page(photos: list[Photo]) -> None:
        seen.update(p.id for p in photos)
        if watch is not None:
            watch([p.id for p in photos])

    async with client(sim) as api:
        query = ImageQuery(project_id=min(sim.company.projects))
        lister = Lister(api, query, per_page=per_page, on_page=on_page, clock=utcnow)
        return await lister.run(start, end, now=now), seen


def window(sim: Simulator, start: datetime | None, end: datetime) -> set[int]:
    """The live photos of the first project shown with `updated_at` in `[start, end]`."""
    project = min(sim.company.projects)
    return {
        p.id
        for p in sim.company.live_photos(project)
        if (start is None or start <= shown(p.updated_at)) and shown(p.updated_at) <= end
    }


def seconds(sim: Simulator) -> list[datetime]:
    """The shown `updated_at` seconds of the first project's photos, oldest first."""
    return sorted({shown(p.updated_at) for p in sim.company.live_photos(min(sim.company.projects))})


async def test_a_window_holds_the_photos_of_its_first_and_last_second(
    make_sim: Any, times: dict[str, Any]
) -> None:
    sim = await make_sim(**times, photos=120, projects=1)
    stamps = seconds(sim)
    start, end = stamps[len(stamps) // 4], stamps[3 * len(stamps) // 4]
    report, seen = await listing(sim, start, end)
    assert report.proven and report.end == end
    expected = window(sim, start, end)
    assert expected <= seen, f"missing {sorted(expected - seen)[:5]}"
    assert seen - expected <= window(sim, end + SECOND, end + SECOND), "only the next second may come along"


async def test_a_window_split_while_photos_move_loses_no_photo_at_a_boundary(
    make_sim: Any, times: dict[str, Any]
) -> None:
    sim = await make_sim(**times, photos=150, projects=1)
    end = seconds(sim)[-1]
    before = window(sim, None, end)
    edit_and_delete_on_page(sim, 2, edits=6, deletes=4)  # pages shift: the first pass fails
    report, seen = await listing(sim, None, end)
    assert report.proven and report.splits > 0
    still = window(sim, None, end)
    assert still < before, "photos left the window while it was listed"
    assert still <= seen, f"missing {sorted(still - seen)[:5]}"


async def test_more_photos_than_a_page_in_one_second_are_proven_with_an_id_check(
    make_sim: Any, times: dict[str, Any]
) -> None:
    """60 tied photos: the id check takes two requests (`ID_CHECK_CHUNK` ids each) that add up."""
    sim = await make_sim(**times, photos=100, projects=1)
    tied = set(tie(sim, 60, created_too=True))
    end = seconds(sim)[-1]
    report, seen = await listing(sim, None, end)
    assert report.proven and report.ties, report.unproven
    assert tied <= seen and window(sim, None, end) <= seen


async def test_a_piece_that_never_adds_up_is_reported_unproven(make_sim: Any) -> None:
    sim = await make_sim(photos=40, projects=1)
    sim.config.hidden.add(min(tie(sim, 25, created_too=True)))  # counted in Total, never served
    report, _ = await listing(sim, None, seconds(sim)[-1])
    assert not report.proven and report.unproven


async def test_photos_edited_while_a_window_is_listed_are_listed_after_their_edit(
    make_sim: Any, times: dict[str, Any]
) -> None:
    sim = await make_sim(**times, photos=120, projects=1)
    end = shown(utcnow()) - 5 * SECOND  # the edits move photos past it
    edited: list[int] = []

    def edit_during_page_2(request: ListingRequest) -> None:
        if request.page == 2 and not edited:
            for photo in sim.company.live_photos(request.project_id)[:5]:
                sim.edit_photo(photo.id, description="edited while listed")
                edited.append(photo.id)

    sim.listing_hooks.append(edit_during_page_2)
    report, seen = await listing(sim, None, end, now=utcnow)
    assert report.proven and edited
    last_edit = max(shown(sim.company.photos[i].updated_at) for i in edited)
    assert report.end is not None and report.end >= last_edit, "a catch-up round reached the edits"
    assert set(edited) <= seen


async def test_a_window_nothing_moves_in_is_proven_by_one_pass(make_sim: Any, times: dict[str, Any]) -> None:
    sim = await make_sim(**times, photos=45, projects=1)
    end = seconds(sim)[-1]
    report, seen = await listing(sim, None, end, per_page=10)
    assert seen == window(sim, None, end)
    assert (report.requests, report.pieces, report.splits) == (5, 1, 0)
    assert sim.stats.requests["images"] == 5


async def test_a_window_that_ends_now_is_proven_at_once_when_nothing_moves(make_sim: Any) -> None:
    sim = await make_sim(photos=60, projects=1)
    recent = [p.id for p in sim.company.live_photos(min(sim.company.projects))[:25]]
    for photo_id in recent:  # more than two pages changed a moment ago
        sim.edit_photo(photo_id, description="just now")
    end = shown(utcnow())
    report, seen = await listing(sim, None, end, now=lambda: end + timedelta(seconds=30))
    assert report.proven and report.end == end, "no catch-up round: nothing moved"
    assert window(sim, None, end) <= seen and set(recent) <= seen


# -- cutting a range where its photos lie ----------------------------------------------------------

BASE = datetime(2026, 5, 1, tzinfo=UTC)
offsets = st.integers(0, 40)


@given(width=st.integers(2, 40), seen=st.sets(offsets, max_size=6))
def test_the_parts_of_a_range_share_their_boundaries_and_cover_it(width: int, seen: set[int]) -> None:
    lo, hi = BASE, BASE + width * SECOND
    parts = _split_range(lo, hi, {BASE + s * SECOND for s in seen})
    assert len(parts) >= 2
    assert parts[0][0] == lo and parts[-1][1] == hi
    assert all(a < b for a, b in parts)
    assert all(left[1] == right[0] for left, right in pairwise(parts))


def test_a_dense_second_inside_a_range_gets_a_part_of_its_own() -> None:
    v = BASE + 5 * SECOND
    assert _split_range(BASE, BASE + 10 * SECOND, {v}) == [
        (BASE, v),
        (v, v + SECOND),
        (v + SECOND, BASE + 10 * SECOND),
    ]


def test_photos_shown_at_a_ranges_end_are_cut_off_with_its_last_second() -> None:
    hi = BASE + 10 * SECOND
    assert _split_range(BASE, hi, {hi}) == [(BASE, hi - SECOND), (hi - SECOND, hi)]


def test_a_dense_last_second_is_cut_off_alone() -> None:
    v = BASE + 9 * SECOND
    assert _split_range(BASE, BASE + 10 * SECOND, {v}) == [(BASE, v), (v, v + SECOND)]


def test_an_empty_range_is_halved() -> None:
    assert _split_range(BASE, BASE + 10 * SECOND, set()) == [
        (BASE, BASE + 5 * SECOND),
        (BASE + 5 * SECOND, BASE + 10 * SECOND),
    ]


def test_many_seen_seconds_are_cut_at_their_median() -> None:
    seen = {BASE + s * SECOND for s in (1, 2, 7, 8, 9)}
    assert _split_range(BASE, BASE + 10 * SECOND, seen) == [
        (BASE, BASE + 7 * SECOND),
        (BASE + 7 * SECOND, BASE + 10 * SECOND),
    ]


def test_a_dense_first_second_is_cut_off_with_the_next() -> None:
    assert _split_range(BASE, BASE + 10 * SECOND, {BASE}) == [
        (BASE, BASE + SECOND),
        (BASE + SECOND, BASE + 10 * SECOND),
    ]


# -- what the proof rests on -----------------------------------------------------------------------


def one_second(text: str | None) -> bool:
    """Whether a range filter `A...B` spans one second."""
    if text is None:
        return False
    start, end = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in text.split("..."))
    return end - start == SECOND


async def test_a_union_that_reaches_total_only_through_a_photo_that_left_is_not_confirmed(
    make_sim: Any,
) -> None:
    """One tied photo is never served; another, already seen, leaves the tied second during its
    second pass. The passes' union then holds as many ids as `Total`, but not the right ones."""
    sim = await make_sim(photos=60, projects=1)
    tied = tie(sim, 25, created_too=True)
    sim.config.hidden.add(tied[0])
    last_page: list[int] = []
    passes, moved = 0, []

    def note(ids: list[int]) -> None:
        last_page[:] = ids

    def move_one_away(request: ListingRequest) -> None:
        nonlocal passes
        q = request.query
        if not (one_second(q.get("filters[updated_at]")) and one_second(q.get("filters[created_at]"))):
            return
        passes += request.page == 1
        if passes == 2 and request.page == 2 and not moved:
            moved.append(next(i for i in last_page if i in tied))
            sim.edit_photo(moved[0], description="moved out of the window")

    sim.listing_hooks.append(move_one_away)
    report, _ = await listing(sim, None, seconds(sim)[-1], watch=note)
    assert moved, "the tied second was passed over twice"
    assert not report.proven and not report.ties
    assert any("24 photos seen in 12 passes" in line for line in report.unproven), report.unproven


async def test_a_photo_without_created_at_that_appears_after_a_split_is_listed(
    make_sim: Any, times: dict[str, Any]
) -> None:
    """Back from the recycle bin with its old time while the first pass runs: only a piece with
    no `created_at` filter can hold it, so the pieces cut by `created_at` must be checked."""
    sim = await make_sim(**times, photos=60, projects=1)
    undated = undated_photo(sim)
    restored = restore_on_page_2(sim, undated)
    asked: list[dict[str, str]] = []
    sim.listing_hooks.append(lambda request: asked.append(request.query))
    report, seen = await listing(sim, None, seconds(sim)[-1])
    assert restored and not sim.company.photos[undated].deleted
    assert report.proven and report.splits
    assert undated in seen
    window_range = asked[0]["filters[updated_at]"]
    firsts = [
        "filters[created_at]" in q
        for q in asked
        if q["filters[updated_at]"] == window_range and q["page"] == "1"
    ]
    assert firsts == [
        False,  # the first pass
        *[True] * (len(firsts) - 2),  # its created_at pieces
        False,  # the count that finds a photo they miss; then it is listed in updated_at parts
    ], firsts


async def test_the_report_counts_every_listing_request(make_sim: Any) -> None:
    sim = await make_sim(photos=80, projects=1)
    tie(sim, 30, created_too=True)
    edit_and_delete_on_page(sim, 2, edits=4, deletes=2)
    report, _ = await listing(sim, None, seconds(sim)[-1])
    assert report.proven and report.ties
    assert report.requests == sim.stats.requests["images"]
    (note,) = report.ties
    cost = int(note.rsplit("(", 1)[1].split()[0])
    assert 4 <= cost < report.requests, note


# -- what a pass reads ------------------------------------------------------------------------------


def pages_of(totals: list[int], *, per_page: int | None = 2) -> Callable[[int], Awaitable[Page]]:
    """Pages of two photos each (ids 1, 2, 3, ...) whose `Total` header is `totals[page - 1]`."""

    async def get_page(number: int) -> Page:
        total = totals[min(number, len(totals)) - 1]
        items = [{"id": 2 * number - 1}, {"id": 2 * number}][: max(0, total - 2 * (number - 1))]
        return Page(items=items, total=total, per_page=per_page, next_url=None)

    return get_page


async def ids_of(page: Page) -> list[int]:
    return [item["id"] for item in page.items]


async def test_a_pass_reads_every_page_up_to_total() -> None:
    result = await paged_pass(Pass(), pages_of([5, 5, 5]), take=ids_of)
    assert (result.pages, result.distinct, result.proven) == (3, {1, 2, 3, 4, 5}, True)


async def test_a_pass_steps_by_the_pages_it_gets_when_the_server_does_not_say_their_size() -> None:
    result = await paged_pass(Pass(), pages_of([5, 5, 5], per_page=None), take=ids_of)
    assert (result.pages, result.proven) == (3, True)


async def test_a_listing_that_keeps_growing_is_read_one_page_past_its_first_total() -> None:
    result = await paged_pass(Pass(), pages_of([4, 6, 8, 10, 12, 14]), take=ids_of)
    assert result.pages == 3 and not result.proven
    assert result.last_total == 8


async def test_a_pass_cut_short_after_its_first_page_proves_nothing() -> None:
    result = await paged_pass(Pass(), pages_of([5, 5, 5]), take=ids_of, one_page_only=True)
    assert (result.pages, result.cut_short, result.proven) == (1, True, False)
    whole = await paged_pass(Pass(), pages_of([2]), take=ids_of, one_page_only=True)
    assert (whole.pages, whole.cut_short, whole.proven) == (1, False, True), "one page is one answer"


# -- what a proof costs, and what it rests on -------------------------------------------------------


@pytest.mark.parametrize("photos", [15, 45])
async def test_a_pass_that_fails_is_split_at_its_page_starts_into_pieces_of_one_request(
    make_sim: Any, photos: int
) -> None:
    """Each piece holds one page of the failed pass, less what left: one request proves it. (With
    exclusive range ends the pieces do not overlap, so the count is exact.)"""
    sim = await make_sim(photos=photos, projects=1, range_end="exclusive")
    edit_and_delete_on_page(sim, 2, edits=2, deletes=1)
    pages, end = -(-photos // 10), seconds(sim)[-1]
    report, seen = await listing(sim, None, end)
    assert report.proven and window(sim, None, end) <= seen
    assert (report.pieces, report.splits) == (pages, 1)
    assert report.requests == pages + pages + 1, "the failed pass, a request a piece, one count"


async def test_a_photo_that_enters_a_recent_window_cannot_hide_one_the_shifted_pages_skipped(
    make_sim: Any,
) -> None:
    """While page 2 is served, a photo of page 1 is deleted (so a later one shifts onto page 1,
    unseen) and a deleted photo comes back, updated now: `Total` stays the same and the pass sees
    that many ids. Only a pass over a piece no photo can enter any more may count that as proof."""
    sim = await make_sim(photos=60, projects=1)
    by_creation = sorted(sim.company.live_photos(min(sim.company.projects)), key=lambda p: p.created_at)
    leaving, returning = by_creation[0].id, by_creation[-1].id
    sim.delete_photo(returning)
    swapped: list[bool] = []

    def swap_on_page_2(request: ListingRequest) -> None:
        if request.page == 2 and not swapped:
            swapped.append(True)
            sim.delete_photo(leaving)
            sim.restore_photo(returning)

    sim.listing_hooks.append(swap_on_page_2)
    end = shown(utcnow())
    report, seen = await listing(sim, None, end, now=lambda: end + 2 * SECOND)
    assert swapped and report.proven
    assert window(sim, None, end) <= seen, f"missing {sorted(window(sim, None, end) - seen)}"


async def test_photos_moved_out_of_a_recent_window_while_it_is_listed_are_listed_in_a_catch_up_round(
    make_sim: Any,
) -> None:
    """The window ends now: its settled part fails (photos move out during its page 2), its recent
    seconds are proven at once. The window as a whole is not: a catch-up round must follow."""
    sim = await make_sim(photos=60, projects=1)
    end = shown(utcnow())
    moved: list[int] = []

    def move_on_page_2(request: ListingRequest) -> None:
        if request.page == 2 and not moved:
            for photo in sim.company.live_photos(request.project_id)[:5]:
                photo.updated_at = end + 2 * SECOND
                moved.append(photo.id)
            sim.changed()

    sim.listing_hooks.append(move_on_page_2)
    report, seen = await listing(sim, None, end, now=lambda: end + 2 * SECOND)
    assert moved and report.proven
    assert report.end == end + 2 * SECOND
    assert set(moved) <= seen


async def test_a_window_ending_now_with_a_piece_that_never_adds_up_is_reported_unproven(
    make_sim: Any,
) -> None:
    sim = await make_sim(photos=40, projects=1)
    sim.config.hidden.add(min(tie(sim, 25, created_too=True)))
    report, _ = await listing(sim, None, shown(utcnow()))
    assert not report.proven and report.unproven


async def test_the_newest_second_is_waited_for_not_asked_again_and_again(make_sim: Any) -> None:
    """More than two pages were changed in the window's last second, which Procore's clock has
    not passed by a full second yet: that second is proven once it has (a wait of under a
    second), not by asking until it has."""
    sim = await make_sim(photos=60, projects=1)
    end = shown(utcnow()) - SECOND
    for photo in sim.company.live_photos(min(sim.company.projects))[:25]:
        photo.updated_at = end + timedelta(milliseconds=300)
    sim.changed()
    report, seen = await listing(sim, None, end)
    assert report.proven and window(sim, None, end) <= seen
    assert report.requests <= 12, "the cut-short pass, the settled part, then the last second once"


def undated_in_one_second(sim: Simulator, *, more_undated: int = 0) -> tuple[datetime, int, list[int]]:
    """25 photos share one `updated_at` second, created apart; one of them has no `created_at` and
    is deleted now, to come back with its old time while page 2 of the first pass is served.
    `more_undated` others have no `created_at` either (and stay). The second, that photo, and all 25."""
    tied = tie(sim, 25, created_too=False)
    undated = tied[0]
    for photo_id in tied[: 1 + more_undated]:
        sim.company.photos[photo_id].created_at = None
    sim.changed()
    assert restore_on_page_2(sim, undated) == []
    return shown(sim.company.photos[undated].updated_at), undated, tied


async def test_a_one_second_piece_that_holds_photos_without_created_at_is_proven_as_a_tie(
    make_sim: Any, times: dict[str, Any]
) -> None:
    sim = await make_sim(**times, photos=40, projects=1)
    moment, undated, _ = undated_in_one_second(sim)
    report, seen = await listing(sim, moment, moment)
    assert report.proven and report.ties, "no time can part these photos: an id check proves them"
    assert undated in seen


async def test_a_photo_without_created_at_is_found_when_the_created_at_pieces_were_split_again(
    make_sim: Any,
) -> None:
    """The pieces cut by `created_at` are proven only after being split again (a photo leaves
    during the second page of the first of them); the photo back from the bin is in none. (Another
    undated photo makes the first pass unsorted, so it is cut in halves, not at page starts.)"""
    sim = await make_sim(photos=40, projects=1)
    moment, undated, tied = undated_in_one_second(sim, more_undated=1)
    left: list[int] = []

    def leave_during_a_created_at_piece(request: ListingRequest) -> None:
        if request.page == 2 and "filters[created_at]" in request.query and not left:
            dated = [sim.company.photos[i] for i in tied if sim.company.photos[i].created_at is not None]
            photo = min(dated, key=lambda p: p.created_at or moment)  # in the first created_at piece
            left.append(photo.id)
            sim.delete_photo(photo.id)

    sim.listing_hooks.append(leave_during_a_created_at_piece)
    report, seen = await listing(sim, moment, moment)
    assert left and report.proven
    assert undated in seen
