"""One download on its own (`Fetcher`), against the simulator over loopback: the bytes that reach
the part file, where the token goes, and what each failure says about trying again. Fast enough to
run for every mutant of `mirror/fetch.py`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from syncer.mirror.fetch import DURABLE_EVERY, Fetched, Fetcher, FetchError
from syncer.mirror.files import MirrorFS
from syncer.procore.models import Photo
from syncer.procore.query import ImageQuery
from syncer.simulator import Simulator
from tests.test_procore_client import client

LARGE = 5 * DURABLE_EVERY + 12_345
"""Several write batches: the body streams to its part file, and a cut half-way leaves durable progress."""


class Downloads:
    """A `Fetcher` on a fresh mirror, with the photos the listing gives for it."""

    def __init__(self, sim: Simulator, fetcher: Fetcher, photos: list[Photo]) -> None:
        self.sim = sim
        self.fetcher = fetcher
        self.photos = photos
        self.tmp_dir = fetcher.fs.tmp_dir

    async def get(self, photo: Photo, *, size: int | None = -1, key: str | None = None) -> Fetched:
        """Fetch `photo` as the transfer does; `size` and `key` stand in for what the listing said."""
        assert photo.url is not None
        return await self.fetcher.fetch(
            photo.url,
            expected_size=photo.size if size == -1 else size,
            part_name=f"{photo.id}.part",
            file_key=key or photo.file_key,
            what=f"photo {photo.id}",
        )

    def content(self, photo: Photo) -> bytes:
        return self.sim.company.photos[photo.id].content.all_bytes()

    def restart(self) -> Fetcher:
        """A new `Fetcher` on the same mirror, as after a restart of the process."""
        self.fetcher = Fetcher(self.fetcher.http, self.fetcher.fs)
        return self.fetcher


@asynccontextmanager
async def downloads(sim: Simulator, root: Path) -> AsyncIterator[Downloads]:
    fs = MirrorFS(root)
    fs.prepare()
    try:
        async with client(sim) as api:
            page = await api.images_page(
                ImageQuery(project_id=min(sim.company.projects)), page=1, per_page=100
            )
            photos = sorted((Photo.from_api(item) for item in page.items), key=lambda p: p.id)
            yield Downloads(sim, Fetcher(api.http, fs), photos)
    finally:
        fs.close()


def on_disk(fetched: Fetched) -> bytes:
    return fetched.data if fetched.data is not None else fetched.tmp.read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def cut_download(sim: Simulator, d: Downloads, photo: Photo) -> None:
    """A first attempt that the connection drops half-way: a durable prefix stays behind."""
    sim.config.cut_rate = 1.0
    with pytest.raises(FetchError) as caught:
        await d.get(photo)
    sim.config.cut_rate = 0.0
    assert caught.value.retry


async def test_a_small_photo_arrives_whole_in_memory_with_its_hash(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=3, projects=1)
    async with downloads(sim, tmp_path) as d:
        photo = d.photos[0]
        fetched = await d.get(photo)
    assert fetched.data == d.content(photo)
    assert (fetched.size, fetched.sha256) == (len(fetched.data), sha(fetched.data))
    assert not fetched.tmp.exists(), "the caller writes it, in one trip to a file thread"


async def test_a_large_photo_streams_to_its_part_file_with_its_hash(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=1, projects=1, photo_size=LARGE)
    async with downloads(sim, tmp_path) as d:
        photo = d.photos[0]
        fetched = await d.get(photo)
        assert fetched.data is None
        assert fetched.tmp.read_bytes() == d.content(photo)
        assert (fetched.size, fetched.sha256) == (LARGE, sha(d.content(photo)))
        assert not list(d.tmp_dir.glob("*.part.json")), "a finished part keeps no resume state"


async def test_a_body_without_content_length_is_checked_against_the_listing_size(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=2, projects=1, chunked_bodies=True)
    async with downloads(sim, tmp_path) as d:
        fetched = await d.get(d.photos[0])
        assert on_disk(fetched) == d.content(d.photos[0])
        with pytest.raises(FetchError, match="listing size says") as caught:
            await d.get(d.photos[1], size=d.photos[1].size - 1)  # type: ignore[operator]
    assert caught.value.retry


async def test_a_body_longer_than_the_listing_says_is_refused_and_its_part_dropped(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=1, projects=1, photo_size=LARGE)
    async with downloads(sim, tmp_path) as d:
        sim.config.padded_files.add(d.photos[0].id)  # 100 more bytes, chunked: no length to check first
        with pytest.raises(FetchError, match=f"got {LARGE + 100} bytes, listing size says {LARGE}") as caught:
            await d.get(d.photos[0])
        assert caught.value.retry
        assert not list(d.tmp_dir.iterdir()), "nothing of the bad body stays"


async def test_a_content_length_that_disagrees_with_the_listing_asks_for_a_fresh_listing(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=1, projects=1)
    async with downloads(sim, tmp_path) as d:
        photo = d.photos[0]
        assert photo.size is not None
        with pytest.raises(FetchError, match=f"server sends {photo.size} bytes, listing says") as caught:
            await d.get(photo, size=photo.size + 1)
    assert caught.value.retry and caught.value.refresh


async def test_a_photo_of_unknown_size_is_taken_at_its_content_length(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=1, projects=1)
    async with downloads(sim, tmp_path) as d:
        fetched = await d.get(d.photos[0], size=None)
        assert on_disk(fetched) == d.content(d.photos[0])


async def test_a_body_cut_short_is_retried_and_keeps_only_its_durable_prefix(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=1, projects=1, photo_size=LARGE)
    async with downloads(sim, tmp_path) as d:
        photo = d.photos[0]
        await cut_download(sim, d, photo)
        (state_file,) = d.tmp_dir.glob("*.part.json")
        state = json.loads(state_file.read_text())
        assert DURABLE_EVERY <= state["durable"] < LARGE
        assert state["file_key"] == photo.file_key
        part = d.tmp_dir / f"{photo.id}.part"
        assert part.read_bytes()[: state["durable"]] == d.content(photo)[: state["durable"]]


async def test_a_resumed_download_asks_for_the_rest_and_hashes_the_whole_file(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=1, projects=1, photo_size=LARGE)
    async with downloads(sim, tmp_path) as d:
        photo = d.photos[0]
        await cut_download(sim, d, photo)
        fetched = await d.get(photo)
        assert sim.stats.resumed == 1
        assert fetched.tmp.read_bytes() == d.content(photo)
        assert fetched.sha256 == sha(d.content(photo))


async def test_a_resume_after_a_restart_cuts_off_bytes_not_known_durable_before_hashing(
    make_sim: Any, tmp_path: Path
) -> None:
    """A crash can leave bytes past the durable mark, written but never fsynced: they may be
    garbage, so they are cut off before the kept prefix is hashed."""
    sim = await make_sim(photos=1, projects=1, photo_size=LARGE)
    async with downloads(sim, tmp_path) as d:
        photo = d.photos[0]
        await cut_download(sim, d, photo)
        with (d.tmp_dir / f"{photo.id}.part").open("ab") as part:
            part.write(b"\x00" * 5000)
        d.restart()
        fetched = await d.get(photo)
        assert sim.stats.resumed == 1
        assert fetched.tmp.read_bytes() == d.content(photo)
        assert fetched.sha256 == sha(d.content(photo))


async def test_a_part_of_another_file_is_not_resumed(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=1, projects=1, photo_size=LARGE)
    async with downloads(sim, tmp_path) as d:
        photo = d.photos[0]
        await cut_download(sim, d, photo)
        fetched = await d.get(photo, key=photo.file_key + "-replaced")
        assert sim.stats.resumed == 0
        assert fetched.sha256 == sha(d.content(photo))


async def test_a_server_that_ignores_range_sends_the_whole_file_and_it_is_kept_whole(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=1, projects=1, photo_size=LARGE)
    async with downloads(sim, tmp_path) as d:
        photo = d.photos[0]
        await cut_download(sim, d, photo)
        sim.config.range_support = False
        fetched = await d.get(photo)
        assert sim.stats.resumed == 0
        assert fetched.tmp.read_bytes() == d.content(photo)
        assert fetched.sha256 == sha(d.content(photo))


async def test_a_part_whose_etag_no_longer_matches_is_downloaded_again_from_the_start(
    make_sim: Any, tmp_path: Path
) -> None:
    """`If-Range` with the old ETag: the store sends the whole body, which replaces the part."""
    sim = await make_sim(photos=1, projects=1, photo_size=LARGE)
    async with downloads(sim, tmp_path) as d:
        photo = d.photos[0]
        await cut_download(sim, d, photo)
        (state_file,) = d.tmp_dir.glob("*.part.json")
        state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "etag": '"another"'}))
        fetched = await d.get(photo)
        assert sim.stats.resumed == 0
        assert fetched.tmp.read_bytes() == d.content(photo)
        assert fetched.sha256 == sha(d.content(photo))


async def test_the_token_goes_to_procore_hops_and_never_to_the_object_store(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=2, projects=1, redirect_hops=4)
    async with downloads(sim, tmp_path) as d:
        for photo in d.photos:
            assert on_disk(await d.get(photo)) == d.content(photo)
    assert sim.stats.store_authorization_headers == []
    assert sum(sim.stats.file_requests.values()) == 2, "the first hop, on Procore, took the token"


async def test_a_chain_of_more_than_five_redirects_is_not_followed(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=1, projects=1, redirect_hops=6)
    async with downloads(sim, tmp_path) as d:
        with pytest.raises(FetchError, match="more than 5 redirects") as caught:
            await d.get(d.photos[0])
    assert not caught.value.retry


async def test_five_redirects_are_followed(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=1, projects=1, redirect_hops=5)
    async with downloads(sim, tmp_path) as d:
        assert on_disk(await d.get(d.photos[0])) == d.content(d.photos[0])


async def test_an_expired_signed_url_asks_for_a_fresh_one(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=1, projects=1, url_ttl=0.0)
    async with downloads(sim, tmp_path) as d:
        with pytest.raises(FetchError, match="HTTP 401") as caught:
            await d.get(d.photos[0])
    assert caught.value.retry and caught.value.refresh


async def test_a_photo_deleted_since_it_was_listed_asks_for_a_fresh_listing(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=1, projects=1)
    async with downloads(sim, tmp_path) as d:
        sim.delete_photo(d.photos[0].id)
        with pytest.raises(FetchError, match="HTTP 404") as caught:
            await d.get(d.photos[0])
    assert caught.value.retry and caught.value.refresh


async def test_a_busy_object_store_is_tried_again_with_the_same_url(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=1, projects=1)
    async with downloads(sim, tmp_path) as d:
        sim.config.store_error_rate = 1.0
        with pytest.raises(FetchError, match="HTTP 503") as caught:
            await d.get(d.photos[0])
    assert caught.value.retry and not caught.value.refresh


async def test_a_failing_procore_hop_is_retried_without_a_new_url(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=1, projects=1)
    async with downloads(sim, tmp_path) as d:
        sim.config.broken_files.add(d.photos[0].id)
        with pytest.raises(FetchError, match="500") as caught:
            await d.get(d.photos[0])
    assert caught.value.retry and not caught.value.refresh
