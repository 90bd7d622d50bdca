"""One photo download: redirects by hand, the token only on Procore hosts, verified bytes.

The first hop usually sits on a Procore host and needs the bearer token; it redirects to a
presigned object-store URL that must not get it (S3 refuses a request with both). So redirects are
followed here, deciding at every hop whether the token may go. The body streams into a temp file
under `.syncer/tmp/`, hashed as it arrives, then its length is checked against the listing's
`size` and `Content-Length`, and it is fsynced. Only then may the caller publish it.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import aiofiles
import aiohttp
from yarl import URL

from syncer.mirror.files import MirrorFS
from syncer.procore.http import TRANSPORT_ERRORS, ProcoreError, ProcoreHttp, excerpt
from syncer.procore.pacing import retry_after_seconds

MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
EXPIRED = frozenset({401, 403, 404, 410})
WRITE_BATCH = 1 << 20
"""Bytes gathered before each write, so a file costs few thread hops."""


class FetchError(Exception):
    """A download that did not produce a verified file.

    `retry` says whether another attempt may succeed; `refresh` that it needs a freshly signed URL
    first; `wait` is a server-requested pause in seconds.
    """

    def __init__(self, message: str, *, retry: bool, refresh: bool = False, wait: float | None = None):
        super().__init__(message)
        self.retry = retry
        self.refresh = refresh
        self.wait = wait


@dataclass(frozen=True)
class Fetched:
    tmp: Path
    size: int
    sha256: str


def _redact(url: URL) -> str:
    return str(url.with_query(None).with_fragment(None))


class Fetcher:
    def __init__(self, http: ProcoreHttp, fs: MirrorFS) -> None:
        self.http = http
        self.fs = fs
        self.bytes_received = 0

    async def _hop(self, url: URL, what: str) -> aiohttp.ClientResponse:
        if self.http.is_procore_url(url):
            try:
                return await self.http.open(url, what=what)
            except ProcoreError as exc:
                raise FetchError(str(exc), retry=True) from None
        try:
            return await self.http.session.get(url, allow_redirects=False)
        except TRANSPORT_ERRORS as exc:
            raise FetchError(f"{what}: {type(exc).__name__}: {exc}", retry=True) from None

    async def fetch(self, url: str, *, expected_size: int | None, part_name: str, what: str) -> Fetched:
        """Download `url` into a verified, fsynced temp file."""
        current = URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._hop(current, what)
            async with response:
                status = response.status
                if status in REDIRECTS:
                    location = response.headers.get("Location")
                    if not location:
                        raise FetchError(f"{what}: redirect without a Location", retry=True)
                    current = current.join(URL(location))
                    continue
                if status in EXPIRED:
                    body = await response.read()
                    raise FetchError(
                        f"{what}: HTTP {status} from {current.host}: {excerpt(body)}",
                        retry=True,
                        refresh=True,
                    )
                if status == 429 or status >= 500:
                    wait = retry_after_seconds(response.headers, now=time.time())
                    raise FetchError(f"{what}: HTTP {status} from {current.host}", retry=True, wait=wait)
                if status != 200:
                    body = await response.read()
                    raise FetchError(
                        f"{what}: HTTP {status} from {_redact(current)}: {excerpt(body)}",
                        retry=False,
                    )
                return await self._stream(response, expected_size, part_name, what)
        raise FetchError(f"{what}: more than {MAX_REDIRECTS} redirects", retry=False)

    async def _stream(
        self, response: aiohttp.ClientResponse, expected_size: int | None, part_name: str, what: str
    ) -> Fetched:
        length = response.content_length
        if expected_size is not None and length is not None and length != expected_size:
            # The record and the file disagree: the photo was probably replaced since listing.
            raise FetchError(
                f"{what}: server sends {length} bytes, listing says {expected_size}",
                retry=True,
                refresh=True,
            )
        tmp = self.fs.tmp_path(part_name)
        digest = hashlib.sha256()
        received = 0
        try:
            async with aiofiles.open(tmp, "wb", executor=self.fs.executor) as out:
                buffer = bytearray()
                async for chunk in response.content.iter_chunked(256 * 1024):
                    digest.update(chunk)
                    buffer += chunk
                    received += len(chunk)
                    if len(buffer) >= WRITE_BATCH:
                        await out.write(bytes(buffer))
                        buffer.clear()
                if buffer:
                    await out.write(bytes(buffer))
                await out.flush()
                await self.fs.run(os.fsync, out.fileno())
        except TRANSPORT_ERRORS as exc:
            raise FetchError(
                f"{what}: body cut short after {received} bytes ({type(exc).__name__})", retry=True
            ) from None
        finally:
            self.bytes_received += received
        for label, expected in (("Content-Length", length), ("listing size", expected_size)):
            if expected is not None and received != expected:
                tmp.unlink(missing_ok=True)
                raise FetchError(f"{what}: got {received} bytes, {label} says {expected}", retry=True)
        return Fetched(tmp=tmp, size=received, sha256=digest.hexdigest())
