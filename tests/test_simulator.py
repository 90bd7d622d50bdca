"""The simulator answers the list filters as Procore documents them, judged against its own data."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest
from yarl import URL

from syncer.procore.query import ImageFilters, ImageQuery, Range
from syncer.simulator import SimPhoto, Simulator
from tests.test_procore_client import client

CUT = datetime(2026, 1, 1, tzinfo=UTC)
FILTERS: list[tuple[str, Callable[[Simulator], ImageFilters], Callable[[Simulator, SimPhoto], bool]]] = [
    ("starred", lambda s: ImageFilters(starred=True), lambda s, p: p.starred),
    ("private", lambda s: ImageFilters(private=False), lambda s, p: not p.private),
    ("projection", lambda s: ImageFilters(projection="regular"), lambda s, p: p.projection == "regular"),
    (
        "query",
        lambda s: ImageFilters(query="rebar"),
        lambda s, p: "rebar" in f"{p.filename} {p.description}".lower(),
    ),
    (
        "updated_at",
        lambda s: ImageFilters(updated_at=Range(CUT, datetime(2030, 1, 1, tzinfo=UTC))),
        lambda s, p: p.updated_at >= CUT,
    ),
    (
        "created_at",
        lambda s: ImageFilters(created_at=Range(date(2025, 9, 1), date(2025, 12, 31))),
        lambda s, p: date(2025, 9, 1) <= p.created_at.date() <= date(2025, 12, 31),
    ),
    (
        "log_date",
        lambda s: ImageFilters(log_date=Range(date(2025, 1, 1), date(2026, 1, 1))),
        lambda s, p: p.log_date is not None and date(2025, 1, 1) <= p.log_date <= date(2026, 1, 1),
    ),
    (
        "uploader_id",
        lambda s: ImageFilters(uploader_id=[first(s).uploader["id"]]),
        lambda s, p: p.uploader["id"] == first(s).uploader["id"],
    ),
    (
        "trade_ids",
        lambda s: ImageFilters(trade_ids=[t["id"] for t in first_with_trades(s).trades]),
        lambda s, p: bool({t["id"] for t in p.trades} & {t["id"] for t in first_with_trades(s).trades}),
    ),
    (
        "location_id",
        lambda s: ImageFilters(location_id=[parent(s)], include_sublocations=True),
        lambda s, p: p.location is not None and parent(s) in (p.location["id"], p.location["parent_id"]),
    ),
    ("id", lambda s: ImageFilters(id=[first(s).id]), lambda s, p: p.id == first(s).id),
]


def first(sim: Simulator) -> SimPhoto:
    return next(iter(sim.company.photos.values()))


def first_with_trades(sim: Simulator) -> SimPhoto:
    return next(p for p in sim.company.photos.values() if p.trades)


def parent(sim: Simulator) -> int:
    return next(p.location["parent_id"] for p in sim.company.photos.values() if p.location)


@pytest.mark.parametrize(("name", "make_filter", "matches"), FILTERS, ids=[f[0] for f in FILTERS])
async def test_list_filter_selects_exactly_the_matching_photos(
    make_sim: Any, name: str, make_filter: Any, matches: Any
) -> None:
    sim = await make_sim(photos=200, projects=1, max_per_page=1000)  # one page holds every match
    project = next(iter(sim.company.projects))
    expected = {p.id for p in sim.company.photos.values() if matches(sim, p)}
    assert expected, f"the seeded data has no photo for the {name} filter"
    query = ImageQuery(project_id=project, filters=make_filter(sim))
    async with client(sim) as api:
        page = await api.images_page(query, page=1, per_page=1000)
    assert {item["id"] for item in page.items} == expected
    assert page.total == len(expected)


async def test_album_filter(make_sim: Any) -> None:
    sim = await make_sim(photos=100, projects=1)
    photo = next(p for p in sim.company.photos.values() if p.album_id)
    async with client(sim) as api:
        page = await api.images_page(
            ImageQuery(project_id=photo.project_id, image_category_id=photo.album_id), page=1, per_page=1000
        )
    assert {i["id"] for i in page.items} == {
        p.id for p in sim.company.photos.values() if p.album_id == photo.album_id
    }


async def test_documented_sorts_order_and_others_are_ignored(make_sim: Any) -> None:
    sim = await make_sim(photos=50, projects=1)
    project = next(iter(sim.company.projects))
    async with client(sim) as api:
        asc = await api.images_page(ImageQuery(project_id=project, sort="created_at"), page=1, per_page=100)
        ignored = await api.images_page(
            ImageQuery(project_id=project, sort="updated_at"),  # type: ignore[arg-type]
            page=1,
            per_page=100,
        )
    created = [item["created_at"] for item in asc.items]
    assert created == sorted(created)
    assert [i["created_at"] for i in ignored.items] == sorted(created, reverse=True)


async def test_past_the_last_page_is_an_empty_list(sim: Simulator) -> None:
    project = next(iter(sim.company.projects))
    async with client(sim) as api:
        page = await api.images_page(ImageQuery(project_id=project), page=99, per_page=10)
    assert page.items == [] and page.next_url is None and page.total is not None


async def test_the_object_store_sends_the_whole_body_when_if_range_names_another_version(
    sim: Simulator,
) -> None:
    photo_id, photo = next(iter(sim.company.photos.items()))
    async with client(sim) as api:
        record = await api.image(photo.project_id, photo_id)
        assert record.url is not None
        opened = await api.http.open(URL(record.url), what="file")
        location = opened.headers["Location"]
        opened.release()
        session = api.http.session
        async with session.get(location, headers={"Range": "bytes=10-"}) as same:
            etag = same.headers["ETag"]
            assert same.status == 206
        async with session.get(location, headers={"Range": "bytes=10-", "If-Range": etag}) as kept:
            assert kept.status == 206, "the same version: the range is served"
        async with session.get(location, headers={"Range": "bytes=10-", "If-Range": '"other"'}) as whole:
            assert whole.status == 200 and await whole.read() == photo.content.all_bytes()


@pytest.mark.parametrize(
    ("by_status", "shown"),
    [(None, {True}), ("Active", {True}), ("Inactive", {False}), ("All", {True, False}), ("all", {True})],
)
async def test_projects_are_listed_by_status_as_procore_lists_them(
    sim: Simulator, by_status: str | None, shown: set[bool]
) -> None:
    sim.company.projects[min(sim.company.projects)].active = False
    query = [("company_id", str(sim.company.id))] + ([("filters[by_status]", by_status)] if by_status else [])
    async with client(sim) as api:
        answer = await api.http.get_json(api.http.api_url("/rest/v1.0/projects", query), what="projects")
    expected = {p.id for p in sim.company.projects.values() if p.active in shown}
    assert {p["id"] for p in answer.data} == expected
