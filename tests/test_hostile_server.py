"""A hostile object store: bodies longer than the listing says or endless, compressed bodies that
inflate, bodies that trickle, huge error pages, redirects to what is not a web URL. One download
(`Fetcher`) against a small server on loopback; each attack fails that photo alone, quickly, with
little read and nothing left on disk."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from syncer.mirror.fetch import Fetched, Fetcher, FetchError
from syncer.mirror.files import MirrorFS
from syncer.simulator import Simulator
from tests.test_procore_client import OTHER_HOST, client, serving

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MiB = 1 << 20


class Store:
    """What the hostile server saw and sent."""

    def __init__(self) -> None:
        self.sent = 0
        self.headers: list[dict[str, str]] = []


@asynccontextmanager
async def hostile(
    handler: Callable[[web.Request, Store], Awaitable[web.StreamResponse]],
) -> AsyncIterator[tuple[str, Store]]:
    store = Store()

    async def handle(request: web.Request) -> web.StreamResponse:
        store.headers.append(dict(request.headers))
        return await handler(request, store)

    async with serving(handle, host=OTHER_HOST) as base:
        yield base, store


async def endless(
    request: web.Request, store: Store, *, status: int = 200, chunk: bytes = b"x" * 65536
) -> web.StreamResponse:
    """A body without Content-Length that never ends (until the client goes away)."""
    response = web.StreamResponse(status=status)
    await response.prepare(request)
    try:
        while True:
            await response.write(chunk)
            store.sent += len(chunk)
    except (ConnectionError, RuntimeError):
        return response


@asynccontextmanager
async def fetcher(sim: Simulator, root: Path, **options: Any) -> AsyncIterator[Fetcher]:
    fs = MirrorFS(root)
    fs.prepare()
    try:
        async with client(sim) as api:
            yield Fetcher(api.http, fs, **options)
    finally:
        fs.close()


async def fetch(f: Fetcher, url: str, size: int | None) -> Fetched:
    return await f.fetch(url, expected_size=size, part_name="1.part", file_key="k", what="photo 1")


def staged(root: Path) -> list[str]:
    return sorted(p.name for p in (root / ".syncer" / "tmp").iterdir())


async def test_an_endless_body_stops_one_chunk_past_the_listed_size(sim: Simulator, tmp_path: Path) -> None:
    async with hostile(endless) as (base, store), fetcher(sim, tmp_path) as f:
        with pytest.raises(
            FetchError, match=r"^photo 1: server sends more than the 120 bytes the listing says$"
        ):
            await fetch(f, f"{base}/file", 120)
    assert store.sent < 8 * MiB, f"the server got to send {store.sent} bytes"
    assert staged(tmp_path) == []


async def test_an_endless_large_body_stops_past_the_listed_size_and_its_part_is_dropped(
    sim: Simulator, tmp_path: Path
) -> None:
    async with hostile(endless) as (base, store), fetcher(sim, tmp_path) as f:
        with pytest.raises(FetchError, match="server sends more than the 3145728 bytes") as caught:
            await fetch(f, f"{base}/file", 3 * MiB)
    assert caught.value.retry and caught.value.refresh, "the photo may have been replaced: list it again"
    assert store.sent < 12 * MiB, f"the server got to send {store.sent} bytes"
    assert staged(tmp_path) == [], "nothing of the bad body stays"


async def test_a_photo_of_no_stated_size_stops_at_the_max_file_size(sim: Simulator, tmp_path: Path) -> None:
    async with hostile(endless) as (base, store), fetcher(sim, tmp_path, max_size=2 * MiB) as f:
        with pytest.raises(FetchError, match=r"more than mirror.max_file_size \(2097152 bytes\)") as caught:
            await fetch(f, f"{base}/file", None)
    assert not caught.value.retry, "the same file is as large next time"
    assert store.sent < 10 * MiB
    assert staged(tmp_path) == []


async def test_a_content_length_past_the_max_file_size_is_refused_before_reading(
    sim: Simulator, tmp_path: Path
) -> None:
    async def large(request: web.Request, store: Store) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(64 * MiB)})
        await response.prepare(request)
        await response.write(b"x" * 1024)
        await asyncio.sleep(4)  # a read would wait here
        return response

    async with hostile(large) as (base, _), fetcher(sim, tmp_path, max_size=MiB) as f:
        started = time.monotonic()
        with pytest.raises(FetchError, match=r"more than mirror.max_file_size"):
            await fetch(f, f"{base}/file", None)
        assert time.monotonic() - started < 2


async def test_a_compressed_body_is_not_asked_for_and_refused_undecoded(
    sim: Simulator, tmp_path: Path
) -> None:
    bomb = gzip.compress(bytes(64 * MiB))  # 64 KB that would inflate to 64 MiB

    async def gzipped(request: web.Request, store: Store) -> web.StreamResponse:
        store.sent += len(bomb)
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip"})

    async with hostile(gzipped) as (base, store), fetcher(sim, tmp_path) as f:
        with pytest.raises(FetchError, match=r"^photo 1: the file came gzip-encoded, unasked$") as caught:
            await fetch(f, f"{base}/file", len(bomb))
    assert caught.value.retry
    assert store.headers[0]["Accept-Encoding"] == "identity"
    assert staged(tmp_path) == []


async def test_a_body_that_trickles_is_cut_at_the_download_timeout(sim: Simulator, tmp_path: Path) -> None:
    async def trickle(request: web.Request, store: Store) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        for _ in range(1000):
            await response.write(b"x")
            await asyncio.sleep(0.2)  # within any read timeout, for ever
        return response

    async with hostile(trickle) as (base, _), fetcher(sim, tmp_path, deadline=1.0) as f:
        started = time.monotonic()
        with pytest.raises(
            FetchError, match=r"^photo 1: not done in 1 s \(procore.download_timeout\)"
        ) as caught:
            await fetch(f, f"{base}/file", 1000)
    assert time.monotonic() - started < 3
    assert caught.value.retry


@pytest.mark.parametrize("status", [403, 400])
async def test_a_huge_error_page_is_read_only_for_its_excerpt(
    sim: Simulator, tmp_path: Path, status: int
) -> None:
    async def error_page(request: web.Request, store: Store) -> web.StreamResponse:
        return await endless(request, store, status=status, chunk=b"<p>denied</p>" * 5000)

    async with hostile(error_page) as (base, store), fetcher(sim, tmp_path) as f:
        with pytest.raises(FetchError, match=f"HTTP {status} from .*{OTHER_HOST}.*denied"):
            await fetch(f, f"{base}/file", 120)
    assert store.sent < 8 * MiB, f"the server got to send {store.sent} bytes"


@pytest.mark.parametrize(
    "location",
    ["file:///etc/passwd", "data:text/plain,hello", "http://[::1", "gopher://127.0.0.1/x", "https://"],
)
async def test_a_redirect_to_anything_but_a_web_url_fails_the_photo(
    sim: Simulator, tmp_path: Path, location: str
) -> None:
    async def redirect(request: web.Request, store: Store) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": location})

    async with hostile(redirect) as (base, store), fetcher(sim, tmp_path) as f:
        with pytest.raises(FetchError, match=r"^photo 1: redirect to an unusable Location") as caught:
            await fetch(f, f"{base}/file", 120)
    assert caught.value.retry
    assert len(store.headers) == 1


async def test_a_relative_redirect_is_followed_from_the_current_url(sim: Simulator, tmp_path: Path) -> None:
    async def relative(request: web.Request, store: Store) -> web.StreamResponse:
        if request.path == "/a/file":
            return web.Response(status=302, headers={"Location": "../b/file?sig=1"})
        return web.Response(body=b"x" * 120)

    async with hostile(relative) as (base, _), fetcher(sim, tmp_path) as f:
        fetched = await fetch(f, f"{base}/a/file", 120)
    assert fetched.data is not None and b"".join(fetched.data) == b"x" * 120


async def test_a_chunked_body_whose_chunk_ends_arrive_late_is_read_to_its_end(
    sim: Simulator, tmp_path: Path
) -> None:
    """A chunk's closing CRLF that arrives after its data gives an empty piece; the body goes on."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"\r\n5\r\nworld\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with fetcher(sim, tmp_path) as f:
            fetched = await fetch(f, f"http://{OTHER_HOST}:{port}/file", None)
    finally:
        server.close()
    assert fetched.data is not None and b"".join(fetched.data) == b"helloworld"


async def test_a_body_sent_a_byte_at_a_time_is_kept_in_few_pieces(sim: Simulator, tmp_path: Path) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n")
        for _ in range(2000):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with fetcher(sim, tmp_path) as f:
            fetched = await fetch(f, f"http://{OTHER_HOST}:{port}/file", 2000)
    finally:
        server.close()
    assert fetched.data is not None and b"".join(fetched.data) == b"x" * 2000
    assert len(fetched.data) == 1, "2,000 one-byte pieces are kept as one block"
