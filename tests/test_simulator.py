"""The simulator answers as Procore does: the list filters as documented, judged against its own
data; file URLs of Procore's shapes on a storage host of its own; what its token endpoint takes."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any, Literal

import aiohttp
import pytest
from yarl import URL

from syncer.procore.api import ProcoreApi
from syncer.procore.http import ProcoreError
from syncer.procore.models import Photo
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


# -- file URLs, on Procore's storage host --------------------------------------------------------

V5_PATH = re.compile(r"/api/v5/files/us-east-1/pro-core\.com/companies/(\d+)/[0-9A-HJKMNP-TV-Z]{26}")
V4_PATH = re.compile(r"/v4/d/us-east-1/pro-core\.com/prostore/\d{10}_production_\d+\.jpeg")


async def fresh_record(api: ProcoreApi, sim: Simulator, photo_id: int) -> tuple[Photo, URL]:
    """A photo's record, asked for alone, and its freshly signed file URL."""
    record = await api.image(sim.company.photos[photo_id].project_id, photo_id)
    assert record.url is not None
    return record, URL(record.url)


async def test_a_file_url_is_procores_v5_shape_on_a_storage_host_of_its_own(sim: Simulator) -> None:
    photo_id, photo = next(iter(sim.company.photos.items()))
    async with client(sim) as api:
        _, url = await fresh_record(api, sim, photo_id)
        opened = await api.http.open(url, what="file")
        opened.release()
    assert url.origin() == URL(sim.storage_base).origin() != URL(sim.api_base).origin()
    found = V5_PATH.fullmatch(url.path)
    assert found and found[1] == str(sim.company.id), url.path
    assert list(url.query) == ["companyId", "projectId", "sig"], "no expiry, no file name"
    assert url.query["projectId"] == str(photo.project_id)
    assert opened.status == 302 and opened.headers["Location"].startswith(f"{sim.store_base}/")
    assert "X-Amz-Expires=" in opened.headers["Location"], "on to a short-lived object-store URL"


async def test_the_storage_host_needs_the_bearer_token(sim: Simulator) -> None:
    async with client(sim) as api:
        _, url = await fresh_record(api, sim, next(iter(sim.company.photos)))
        async with api.http.session.get(url, allow_redirects=False) as answer:
            assert answer.status == 401
    assert sim.stats.unauthorized == 1 and not sim.stats.file_requests


@pytest.mark.parametrize(
    ("accept", "status"),
    [("application/json", 406), ("application/json, image/*;q=0.8", 302), ("*/*", 302)],
)
async def test_the_storage_host_refuses_a_request_that_takes_only_json(
    sim: Simulator, accept: str, status: int
) -> None:
    async with client(sim) as api:
        _, url = await fresh_record(api, sim, next(iter(sim.company.photos)))
        token = await api.http.tokens.token()
        headers = {"Authorization": f"Bearer {token}", "Accept": accept}
        async with api.http.session.get(url, headers=headers, allow_redirects=False) as answer:
            assert answer.status == status


@pytest.mark.parametrize(("shape", "path"), [("v5", V5_PATH), ("v4", V4_PATH)])
async def test_moved_file_urls_serve_the_same_file_and_the_old_ones_are_gone(
    sim: Simulator, shape: Literal["v5", "v4"], path: re.Pattern[str]
) -> None:
    photo_id, photo = next(iter(sim.company.photos.items()))
    async with client(sim) as api:
        before, old_url = await fresh_record(api, sim, photo_id)
        sim.move_file_urls(shape)
        after, new_url = await fresh_record(api, sim, photo_id)
        gone = await api.http.open(old_url, what="file")
        gone.release()
        moved = await api.http.open(new_url, what="file")
        moved.release()
        async with api.http.session.get(moved.headers["Location"]) as body:
            content = await body.read()
    assert path.fullmatch(new_url.path) and new_url.path != old_url.path
    assert (after.size, after.updated_at) == (before.size, before.updated_at)
    assert without_urls(after.raw) == without_urls(before.raw), "the record is otherwise the same"
    assert gone.status == 404 and moved.status == 302
    assert content == photo.content.all_bytes()


def without_urls(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("url", "thumbnail_url")}


async def test_file_urls_are_the_same_from_every_simulator_with_one_seed(make_sim: Any) -> None:
    """A demo run again against a new simulator finds nothing new to download."""
    urls = []
    for _ in range(2):
        sim = await make_sim(photos=3, projects=1)
        async with client(sim) as api:
            _, url = await fresh_record(api, sim, next(iter(sim.company.photos)))
        urls.append(url.path)
    assert urls[0] == urls[1]


# -- what Procore's token endpoint and filters accept ------------------------------------------


@pytest.mark.parametrize(("secret", "status"), [("sim-client-secret", 200), ("wrong", 401)])
async def test_the_token_endpoint_takes_client_credentials_by_http_basic(
    sim: Simulator, secret: str, status: int
) -> None:
    basic = base64.b64encode(f"{sim.config.client_id}:{secret}".encode()).decode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{sim.login_base}/oauth/token",
            data={"grant_type": "client_credentials"},  # no client_id or client_secret in the form
            headers={"Authorization": f"Basic {basic}"},
        ) as answer,
    ):
        assert answer.status == status
        token = await answer.json()
    if status == 200:
        assert (token["token_type"], token["expires_in"]) == ("bearer", 5400)
        assert token["access_token"] in sim.tokens


@pytest.mark.parametrize(("flag", "shown"), [("True", True), ("False", False), ("TRUE", True)])
async def test_a_boolean_filter_takes_true_and_false_in_any_case(
    make_sim: Any, flag: str, shown: bool
) -> None:
    sim = await make_sim(photos=100, projects=1, max_per_page=1000)
    project = next(iter(sim.company.projects))
    url = URL(f"{sim.api_base}/rest/v1.0/images").with_query(
        {"project_id": project, "per_page": 1000, "filters[starred]": flag}
    )
    async with client(sim) as api:
        listed = (await api.http.get_json(url, what="listing")).data
    assert {item["id"] for item in listed} == {
        p.id for p in sim.company.photos.values() if p.starred == shown
    }


async def test_a_boolean_filter_that_is_neither_true_nor_false_is_refused(sim: Simulator) -> None:
    project = next(iter(sim.company.projects))
    url = URL(f"{sim.api_base}/rest/v1.0/images").with_query(
        {"project_id": project, "filters[private]": "yes"}
    )
    async with client(sim) as api:
        with pytest.raises(ProcoreError, match="HTTP 400: filters\\[private\\] must be true or false"):
            await api.http.get_json(url, what="listing")
