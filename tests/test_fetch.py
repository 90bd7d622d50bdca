"""One download on its own (`Fetcher`), against the simulator over loopback: the bytes that reach
the part file, where the token goes, and what each failure says about trying again. Fast enough to
run for every mutant of `mirror/fetch.py`."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from syncer.mirror.fetch import DURABLE_EVERY, SMALL_PIECE, WRITE_BATCH, Fetched, Fetcher, FetchError, Pieces
from syncer.mirror.files import MirrorFS
from syncer.procore.models import Photo
from syncer.procore.query import ImageQuery
from syncer.simulator import Simulator
from tests.test_procore_client import OTHER_HOST, client, scripted

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

    def assert_whole(self, photo: Photo, fetched: Fetched) -> None:
        """The download holds the photo's bytes, and its hash is theirs."""
        content = self.content(photo)
        assert on_disk(fetched) == content
        assert (fetched.size, fetched.sha256) == (len(content), sha(content))

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
    return b"".join(fetched.data) if fetched.data is not None else fetched.tmp.read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def cut_download(sim: Simulator, d: Downloads, photo: Photo) -> None:
    """A first attempt that the connection drops half-way: a durable prefix stays behind."""
    sim.config.cut_rate = 1.0
    with pytest.raises(
        FetchError, match=f"^photo {photo.id}: body cut short \\(ClientPayloadError\\)$"
    ) as caught:
        await d.get(photo)
    sim.config.cut_rate = 0.0
    assert caught.value.retry


async def test_a_small_photo_arrives_whole_in_memory_with_its_hash(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=3, projects=1)
    async with downloads(sim, tmp_path) as d:
        photo = d.photos[0]
        fetched = await d.get(photo)
    assert fetched.data is not None
    body = b"".join(fetched.data)
    assert body == d.content(photo)
    assert (fetched.size, fetched.sha256) == (len(body), sha(body))
    assert not fetched.tmp.exists(), "the caller writes it, in one trip to a file thread"


async def test_a_large_photo_streams_to_its_part_file_with_its_hash(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=1, projects=1, photo_size=LARGE)
    async with downloads(sim, tmp_path) as d:
        photo = d.photos[0]
        fetched = await d.get(photo)
        assert fetched.data is None
        d.assert_whole(photo, fetched)
        assert fetched.size == LARGE
        assert not list(d.tmp_dir.glob("*.part.json")), "a finished part keeps no resume state"


async def test_a_body_without_content_length_is_checked_against_the_listing_size(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=2, projects=1, chunked_bodies=True)
    async with downloads(sim, tmp_path) as d:
        fetched = await d.get(d.photos[0])
        assert on_disk(fetched) == d.content(d.photos[0])
        photo = d.photos[1]
        assert photo.size is not None
        problem = rf"^photo {photo.id}: got {photo.size} bytes, listing size says {photo.size + 1}$"
        with pytest.raises(FetchError, match=problem) as caught:
            await d.get(photo, size=photo.size + 1)
    assert caught.value.retry


async def test_a_body_longer_than_the_listing_says_is_refused_and_its_part_dropped(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=1, projects=1, photo_size=LARGE)
    async with downloads(sim, tmp_path) as d:
        sim.config.padded_files.add(d.photos[0].id)  # 100 more bytes, chunked: no length to check first
        problem = f"^photo {d.photos[0].id}: server sends more than the {LARGE} bytes the listing says$"
        with pytest.raises(FetchError, match=problem) as caught:
            await d.get(d.photos[0])
        assert caught.value.retry and caught.value.refresh
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


async def test_a_large_photo_is_counted_as_it_streams_and_a_failed_attempt_takes_its_count_back(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=1, projects=1, photo_size=LARGE)
    async with downloads(sim, tmp_path) as d:
        counts: list[int] = []
        d.fetcher.on_bytes = counts.append
        photo = d.photos[0]
        await cut_download(sim, d, photo)
        assert counts and sum(counts) == 0, "what the cut attempt counted was taken back"
        counts.clear()
        fetched = await d.get(photo)  # resumed: only the rest is streamed and counted
        assert len(counts) >= 1 and all(n > 0 for n in counts)
        assert fetched.counted == sum(counts) <= fetched.size


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
        assert state["etag"], "the store's ETag, for If-Range"
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
        d.assert_whole(photo, fetched)


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
        d.assert_whole(photo, fetched)


async def test_a_part_of_another_file_is_not_resumed(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=1, projects=1, photo_size=LARGE)
    async with downloads(sim, tmp_path) as d:
        photo = d.photos[0]
        await cut_download(sim, d, photo)
        fetched = await d.get(photo, key=photo.file_key + "-replaced")
        assert sim.stats.resumed == 0
        d.assert_whole(photo, fetched)


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
        d.assert_whole(photo, fetched)


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
        d.assert_whole(photo, fetched)


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
        with pytest.raises(FetchError, match=f"^photo {d.photos[0].id}: HTTP 500") as caught:
            await d.get(d.photos[0])
    assert caught.value.retry and not caught.value.refresh


# -- against a server that answers as told ---------------------------------------------------------

BODY = b"0123456789"
KEY = "/photos/1#10"


@asynccontextmanager
async def procore_answering(
    sim: Simulator, root: Path, *answers: web.Response, part: bytes | None = None, etag: str | None = '"v1"'
) -> AsyncIterator[tuple[Fetcher, str, list[tuple[float, dict[str, str]]]]]:
    """A `Fetcher` whose Procore origin is a server giving `answers` in turn (the token comes from
    the simulator); with `part`, an earlier attempt left those bytes, durable, with that ETag."""
    fs = MirrorFS(root)
    fs.prepare()
    if part is not None:
        fs.tmp_path("1.part").write_bytes(part)
        state = {"file_key": KEY, "durable": len(part), "etag": etag}
        fs.tmp_path("1.part.json").write_text(json.dumps(state))
    try:
        async with scripted(*answers) as (base, seen), client(sim, api_base=base) as api:
            yield Fetcher(api.http, fs), base, seen
    finally:
        fs.close()


async def fetch_one(fetcher: Fetcher, url: str, *, size: int | None = len(BODY)) -> Fetched:
    return await fetcher.fetch(url, expected_size=size, part_name="1.part", file_key=KEY, what="photo 1")


def redirect(to: str) -> web.Response:
    return web.Response(status=302, headers={"Location": to})


def resumed(content_range: str, body: bytes = BODY[5:], etag: str = '"v1"') -> web.Response:
    return web.Response(status=206, body=body, headers={"Content-Range": content_range, "ETag": etag})


async def test_a_redirect_without_a_location_is_tried_again(sim: Simulator, tmp_path: Path) -> None:
    async with procore_answering(sim, tmp_path, web.Response(status=302)) as (fetcher, base, _):
        with pytest.raises(FetchError, match=r"^photo 1: redirect without a Location$") as caught:
            await fetch_one(fetcher, f"{base}/storage/1")
    assert caught.value.retry is True


async def test_a_file_request_carries_the_token_and_what_a_browser_asks_no_json(
    sim: Simulator, tmp_path: Path
) -> None:
    """The storage host is not the API: it gets the token, not the API's headers."""
    async with procore_answering(sim, tmp_path, web.Response(body=BODY)) as (fetcher, base, seen):
        await fetch_one(fetcher, f"{base}/api/v5/files/1")
    ((_, headers),) = seen
    assert headers["Authorization"].startswith("Bearer ")
    assert "json" not in headers.get("Accept", "") and "Procore-Company-Id" not in headers


async def test_a_range_the_file_no_longer_has_starts_the_download_over(
    sim: Simulator, tmp_path: Path
) -> None:
    async with procore_answering(sim, tmp_path, web.Response(status=416), part=BODY[:5]) as (
        fetcher,
        base,
        _,
    ):
        with pytest.raises(FetchError, match=r"^photo 1: range not satisfiable, restarting$") as caught:
            await fetch_one(fetcher, f"{base}/storage/1")
        assert caught.value.retry is True
        assert list(fetcher.fs.tmp_dir.iterdir()) == [], "the part and its state are gone"


async def test_a_429_on_the_procore_hop_passes_its_retry_after_on(sim: Simulator, tmp_path: Path) -> None:
    refused = web.Response(status=429, headers={"Retry-After": "7"})
    async with procore_answering(sim, tmp_path, refused) as (fetcher, base, _):
        with pytest.raises(FetchError, match=r"^photo 1: HTTP 429") as caught:
            await fetch_one(fetcher, f"{base}/storage/1")
    assert (caught.value.retry, caught.value.refresh, caught.value.wait) == (True, False, 7.0)


@pytest.mark.parametrize("status", [408, 429, 500, 503])
async def test_a_busy_object_store_passes_its_retry_after_on(
    sim: Simulator, tmp_path: Path, status: int
) -> None:
    busy = web.Response(status=status, headers={"Retry-After": "3"})
    async with (
        scripted(busy, host=OTHER_HOST) as (store, _),
        procore_answering(sim, tmp_path, redirect(f"{store}/bucket/1")) as (
            fetcher,
            base,
            _,
        ),
    ):
        with pytest.raises(FetchError, match=rf"^photo 1: HTTP {status} from {OTHER_HOST}$") as caught:
            await fetch_one(fetcher, f"{base}/storage/1")
    assert (caught.value.retry, caught.value.refresh, caught.value.wait) == (True, False, 3.0)


async def test_a_refusal_is_final_and_names_the_url_without_its_signature(
    sim: Simulator, tmp_path: Path
) -> None:
    refusal = web.Response(status=400, text="<Error><Message>Bad digest</Message></Error>")
    async with scripted(refusal, host=OTHER_HOST) as (store, _):
        signed = f"{store}/bucket/1?X-Amz-Signature=secret-signature"
        async with procore_answering(sim, tmp_path, redirect(signed)) as (fetcher, base, _):
            with pytest.raises(FetchError) as caught:
                await fetch_one(fetcher, f"{base}/storage/1")
    message = f"photo 1: HTTP 400 from {store}/bucket/1: <Error><Message>Bad digest</Message></Error>"
    assert str(caught.value) == message
    assert caught.value.retry is False


async def test_a_resume_asks_for_the_rest_of_the_same_version(sim: Simulator, tmp_path: Path) -> None:
    answer = resumed("bytes 5-9/10")
    async with procore_answering(sim, tmp_path, answer, part=BODY[:5]) as (fetcher, base, seen):
        fetched = await fetch_one(fetcher, f"{base}/storage/1")
        assert fetched.tmp.read_bytes() == BODY and fetched.sha256 == sha(BODY)
    ((_, headers),) = seen
    assert (headers["Range"], headers["If-Range"]) == ("bytes=5-", '"v1"')


async def test_a_part_saved_without_an_etag_is_resumed_without_if_range(
    sim: Simulator, tmp_path: Path
) -> None:
    answer = resumed("bytes 5-9/10", etag='"v9"')
    async with procore_answering(sim, tmp_path, answer, part=BODY[:5], etag=None) as (fetcher, base, seen):
        fetched = await fetch_one(fetcher, f"{base}/storage/1")
        assert fetched.tmp.read_bytes() == BODY
    ((_, headers),) = seen
    assert headers["Range"] == "bytes=5-" and "If-Range" not in headers


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (resumed("bytes five-nine"), "unreadable Content-Range on a resumed download"),
        (web.Response(status=206, body=BODY[5:]), "unreadable Content-Range on a resumed download"),
        (resumed("bytes 4-9/10", BODY[4:]), "the file changed since the partial download; restarting"),
        (resumed("bytes 5-10/11", b"567890"), "the file changed since the partial download; restarting"),
        (resumed("bytes 5-9/10", etag='"v2"'), "the file changed since the partial download; restarting"),
    ],
    ids=["unreadable", "missing", "another-start", "another-size", "another-etag"],
)
async def test_a_resumed_answer_that_does_not_continue_the_part_is_tried_again(
    sim: Simulator, tmp_path: Path, answer: web.Response, problem: str
) -> None:
    async with procore_answering(sim, tmp_path, answer, part=BODY[:5]) as (fetcher, base, _):
        with pytest.raises(FetchError) as caught:
            await fetch_one(fetcher, f"{base}/storage/1")
    assert str(caught.value) == problem and caught.value.retry is True


async def test_an_object_store_that_cannot_be_reached_is_tried_again(sim: Simulator, tmp_path: Path) -> None:
    async with scripted(web.Response(status=204), host=OTHER_HOST) as (store, _):
        pass  # its port is closed now
    async with procore_answering(sim, tmp_path, redirect(f"{store}/bucket/1")) as (fetcher, base, _):
        with pytest.raises(FetchError, match=r"^photo 1: ClientConnectorError: ") as caught:
            await fetch_one(fetcher, f"{base}/storage/1")
    assert caught.value.retry is True


async def test_an_object_store_that_redirects_without_end_is_followed_five_times_only(
    sim: Simulator, tmp_path: Path
) -> None:
    """Each hop is followed here, never by the HTTP client, so the token rule and the limit hold."""
    async with (
        scripted(redirect("/bucket/again"), host=OTHER_HOST) as (store, seen),
        procore_answering(sim, tmp_path, redirect(f"{store}/bucket/1")) as (fetcher, base, _),
    ):
        with pytest.raises(FetchError, match=r"^photo 1: more than 5 redirects$") as caught:
            await fetch_one(fetcher, f"{base}/storage/1")
    assert caught.value.retry is False
    assert len(seen) == 5


async def test_a_token_request_that_fails_for_good_fails_the_photo(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=1, projects=1)
    async with downloads(sim, tmp_path / "listing") as d, scripted(web.Response(status=404)) as (login, _):
        fs = MirrorFS(tmp_path / "mirror")
        fs.prepare()
        try:
            async with client(sim, login_base=login) as api:
                with pytest.raises(FetchError, match=r"^token request: HTTP 404") as caught:
                    await Fetcher(api.http, fs).fetch(
                        d.photos[0].url or "",
                        expected_size=None,
                        part_name="1.part",
                        file_key=KEY,
                        what="photo 1",
                    )
        finally:
            fs.close()
    assert caught.value.retry is False


async def test_a_download_that_starts_over_forgets_the_parts_resume_state(
    make_sim: Any, tmp_path: Path
) -> None:
    """A store that ignores `Range` sends the whole photo: the part's old state must not outlive it."""
    sim = await make_sim(photos=1, projects=1, range_support=False)
    async with downloads(sim, tmp_path) as d:
        photo = d.photos[0]
        d.tmp_dir.joinpath(f"{photo.id}.part").write_bytes(d.content(photo)[:100])
        state = {"file_key": photo.file_key, "durable": 100, "etag": None}
        d.tmp_dir.joinpath(f"{photo.id}.part.json").write_text(json.dumps(state))
        d.restart()
        fetched = await d.get(photo)
        assert fetched.data is not None and b"".join(fetched.data) == d.content(photo)
        assert not list(d.tmp_dir.glob("*.part.json"))


async def test_a_part_another_worker_left_is_resumed_by_a_shared_fetcher(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=1, projects=1, photo_size=LARGE)
    async with downloads(sim, tmp_path) as d:
        photo = d.photos[0]
        shared = Fetcher(d.fetcher.http, d.fetcher.fs, shared=True)  # before the part exists
        await cut_download(sim, d, photo)  # "another worker" is cut off
        d.fetcher = shared
        fetched = await d.get(photo)
        assert sim.stats.resumed == 1
        d.assert_whole(photo, fetched)


async def test_a_photo_a_little_over_one_write_batch_leaves_no_resume_state(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=1, projects=1, photo_size=WRITE_BATCH + WRITE_BATCH // 2)
    async with downloads(sim, tmp_path) as d:
        fetched = await d.get(d.photos[0])
        assert fetched.data is None and fetched.tmp.read_bytes() == d.content(d.photos[0])
        assert not list(d.tmp_dir.glob("*.part.json"))


async def test_a_failing_procore_hop_is_asked_once_per_attempt(sim: Simulator, tmp_path: Path) -> None:
    """The transfer owns the retries of a photo: one layer, not one inside another."""
    failing = web.Response(status=500, text="<html>upstream error</html>")
    async with procore_answering(sim, tmp_path, failing) as (fetcher, base, seen):
        with pytest.raises(FetchError, match=r"^photo 1: HTTP 500: upstream error$") as caught:
            await fetch_one(fetcher, f"{base}/storage/1")
    assert caught.value.retry is True and len(seen) == 1


async def test_a_retry_after_given_as_a_date_is_read_against_the_clock(
    sim: Simulator, tmp_path: Path
) -> None:
    later = formatdate(time.time() + 30, usegmt=True)
    async with (
        scripted(web.Response(status=503, headers={"Retry-After": later}), host=OTHER_HOST) as (store, _),
        procore_answering(sim, tmp_path, redirect(f"{store}/bucket/1")) as (fetcher, base, _),
    ):
        with pytest.raises(FetchError) as caught:
            await fetch_one(fetcher, f"{base}/storage/1")
    assert caught.value.wait is not None and 25 < caught.value.wait <= 30


def test_pieces_keep_big_pieces_as_they_are_and_gather_small_ones_in_order() -> None:
    big = [bytes([n]) * SMALL_PIECE for n in range(3)]
    pieces = Pieces()
    for piece in [b"a", b"b", big[0], b"c", big[1], big[2], b"d" * 10]:
        pieces.add(piece)
    assert pieces.size == 3 * SMALL_PIECE + 13
    kept = pieces.take()
    assert b"".join(kept) == b"ab" + big[0] + b"c" + big[1] + big[2] + b"d" * 10
    assert [k for k in kept if len(k) == SMALL_PIECE] == big
    assert all(k is b for k, b in zip([k for k in kept if len(k) == SMALL_PIECE], big, strict=True)), (
        "not copied"
    )
    assert (pieces.size, pieces.take()) == (0, [])
