"""One photo download: redirects by hand, the token only on Procore hosts, verified bytes, resume.

The first hop usually sits on a Procore host and needs the bearer token; it redirects to a
presigned object-store URL that must not get it (S3 refuses a request with both). So redirects are
followed here, deciding at every hop whether the token may go. The body streams into
`.syncer/tmp/<id>.part`, hashed as it arrives, then its length is checked against the listing's
`size` and `Content-Length`, and it is fsynced. Only then may the caller publish it.

Resuming: every `DURABLE_EVERY` bytes the part is fsynced and `<id>.part.json` records how many
bytes are durable, with the file's identity and ETag. A later attempt, even after `kill -9` or a
power cut, keeps only those bytes and asks for the rest with `Range` (and `If-Range`); a server
that answers 200 instead, a different ETag or a changed file means starting again from zero.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiofiles
import aiohttp
from yarl import URL

from syncer.config import DEFAULT_DOWNLOAD_TIMEOUT, DEFAULT_MAX_FILE_SIZE
from syncer.log import REDACT
from syncer.mirror.files import MirrorFS, open_new
from syncer.procore.http import (
    ERROR_BODY,
    TRANSPORT_ERRORS,
    ProcoreError,
    ProcoreHttp,
    TransientError,
    excerpt,
    read_head,
    untrusted,
    worth_retrying,
)
from syncer.procore.pacing import retry_after_seconds

MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
EXPIRED = frozenset({401, 403, 404, 410})
WRITE_BATCH = 1 << 20
"""Bytes gathered before each write, so a file costs few thread hops."""
DURABLE_EVERY = 1 << 20
"""Bytes between fsyncs of a part file; what a resume can keep."""
FILE_HEADERS = {"Accept-Encoding": "identity"}
"""A photo's bytes as stored: a compressed body would be decoded to any size before its length
could be checked, so none is asked for, and one sent anyway is refused."""


class FetchError(Exception):
    """A download that did not produce a verified file.

    `retry` says whether another attempt may succeed; `refresh` that it needs a freshly signed URL
    first; `wait` is a server-requested pause in seconds.
    """

    def __init__(self, message: str, *, retry: bool, refresh: bool = False, wait: float | None = None):
        super().__init__(REDACT(message))
        self.retry = retry
        self.refresh = refresh
        self.wait = wait


@dataclass(frozen=True)
class Fetched:
    tmp: Path
    size: int
    sha256: str
    data: list[bytes] | None = None
    """The whole body, in the pieces it arrived in (small ones gathered, see `Pieces`), when it was
    small enough to keep in memory; then `tmp` is not written yet (the install writes them with
    one `writev`)."""
    counted: int = 0
    """Bytes of it already passed to the fetcher's `on_bytes` while it streamed in."""


class Counted:
    """The bytes one download passed to `on_bytes`, so a failed attempt can take them back."""

    def __init__(self, on_bytes: Callable[[int], None] | None) -> None:
        self.on_bytes = on_bytes
        self.bytes = 0

    def add(self, n: int) -> None:
        if self.on_bytes is not None:
            self.on_bytes(n)
            self.bytes += n

    def take_back(self) -> None:
        self.add(-self.bytes)


@dataclass(frozen=True)
class PartState:
    """What `<id>.part.json` says of a partial download."""

    file_key: str
    durable: int
    etag: str | None


async def _chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """A body as the socket delivered it: each piece as it was read, never joined or copied. An
    empty piece that ends an HTTP chunk is not the end of the body; only (b"", False) is."""
    while True:
        piece, chunk_end = await response.content.readchunk()
        if piece:
            yield piece
        elif not chunk_end:
            return


SMALL_PIECE = 16 * 1024


class Pieces:
    """Pieces of a body as the socket delivered them, kept without copies. Pieces smaller than
    SMALL_PIECE (a server sending a few bytes at a time) are gathered into blocks of that size,
    so what is kept costs little more memory than its bytes."""

    def __init__(self) -> None:
        self.size = 0
        self._kept: list[bytes] = []
        self._small = bytearray()

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        if len(piece) >= SMALL_PIECE:
            self._gather()
            self._kept.append(piece)
        else:
            self._small += piece
            if len(self._small) >= SMALL_PIECE:
                self._gather()

    def take(self) -> list[bytes]:
        """Everything kept, in order; empties the collection."""
        self._gather()
        kept, self._kept, self.size = self._kept, [], 0
        return kept

    def _gather(self) -> None:
        if self._small:
            self._kept.append(bytes(self._small))
            self._small.clear()


def _redact(url: URL) -> str:
    return str(url.with_query(None).with_fragment(None))


def _web_url(base: URL, text: str, problem: str) -> URL:
    """`text` (relative to `base`) as an absolute HTTP(S) URL with a host, or a `FetchError`
    saying `problem`: a URL from upstream is untrusted, and only the web is fetched."""
    try:
        target = base.join(URL(text))
        usable = target.scheme in ("http", "https") and bool(target.host)
        target.origin()  # raises on what yarl parsed but cannot use
    except ValueError:
        usable = False
    if not usable:
        raise FetchError(f"{problem} {excerpt(text)!r}", retry=True, refresh=True)
    return target


class Part:
    """A partial download on disk and its state file."""

    def __init__(self, fs: MirrorFS, name: str, file_key: str) -> None:
        self.path = fs.tmp_path(name)
        self.state_path = self.path.with_name(self.path.name + ".json")
        self.file_key = file_key

    def resumable(self) -> PartState | None:
        """The durable prefix of an earlier attempt at this same file, if any."""
        try:
            with os.fdopen(os.open(self.state_path, os.O_RDONLY | os.O_NOFOLLOW), encoding="utf-8") as fh:
                state = PartState(**json.loads(fh.read()))
            found = self.path.lstat()
        except (OSError, ValueError, TypeError):
            return None
        if not stat.S_ISREG(found.st_mode) or state.file_key != self.file_key:
            return None
        return state if 0 < state.durable <= found.st_size else None

    def save(self, durable: int, etag: str | None) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".new")
        with os.fdopen(open_new(tmp), "w", encoding="utf-8") as fh:
            fh.write(json.dumps(asdict(PartState(self.file_key, durable, etag))))
        os.replace(tmp, self.state_path)

    def opener(self, resuming: bool) -> Callable[[str, int], int]:
        """How to open the part file for writing: a resumed part as it is, a new one fresh, and
        never through a link planted in its place."""
        if resuming:
            return lambda path, flags: os.open(path, flags | os.O_NOFOLLOW)
        return lambda path, flags: open_new(Path(path), flags & ~(os.O_CREAT | os.O_TRUNC))

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)

    def forget_state(self) -> None:
        self.state_path.unlink(missing_ok=True)

    def hash_prefix(self, length: int) -> hashlib._Hash:
        """The hash of the first `length` bytes, after cutting off anything not known durable."""
        digest = hashlib.sha256()
        with os.fdopen(os.open(self.path, os.O_RDWR | os.O_NOFOLLOW), "r+b") as fh:
            fh.truncate(length)
            while chunk := fh.read(WRITE_BATCH):
                digest.update(chunk)
        return digest


@dataclass(frozen=True)
class Limit:
    """The most bytes a body may bring: the listing's size when it states one, else
    `mirror.max_file_size`. Reading stops at the first byte past it."""

    expected: int | None
    max_size: int
    what: str

    def check(self, received: int) -> None:
        if self.expected is not None and received > self.expected:
            raise FetchError(
                f"{self.what}: server sends more than the {self.expected} bytes the listing says",
                retry=True,
                refresh=True,
            )
        if self.expected is None and received > self.max_size:
            raise FetchError(
                f"{self.what}: more than mirror.max_file_size ({self.max_size} bytes) and of no stated size",
                retry=False,
            )


class Fetcher:
    def __init__(
        self,
        http: ProcoreHttp,
        fs: MirrorFS,
        *,
        shared: bool = False,
        max_size: int = DEFAULT_MAX_FILE_SIZE,
        deadline: float = DEFAULT_DOWNLOAD_TIMEOUT,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.http = http
        self.fs = fs
        self.on_bytes = on_bytes
        """Told of a large body's bytes as each MiB is written (and of their removal if the
        attempt fails), so a progress rate moves during a long download, not only at its end."""
        self.max_size = max_size
        """The most bytes taken for a photo whose size the listing does not state."""
        self.deadline = deadline
        """Seconds one attempt may take, body included: a body that trickles in cannot hold a slot
        for ever (what is durable of it is resumed by the next attempt)."""
        self.partial = {p.name for p in fs.tmp_dir.glob("*.part.json")} if fs.tmp_dir.is_dir() else set()
        """State files of partial downloads; no state file, no disk look-up before a download."""
        self.shared = shared
        """Other workers write to this mirror too: a part one of them left may appear at any time,
        so the disk is asked before every download."""

    async def _hop(self, url: URL, what: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        if self.http.may_carry_token(url):
            try:
                return await self.http.open(url, what=what, headers=headers, decompress=False)
            except TransientError as exc:
                raise FetchError(str(exc), retry=True, wait=exc.wait) from None
            except ProcoreError as exc:  # a token request that failed for good
                raise FetchError(str(exc), retry=False) from None
        try:
            return await self.http.session.get(
                url, allow_redirects=False, headers=headers, auto_decompress=False
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            raise untrusted(what, exc) from None
        except TRANSPORT_ERRORS as exc:
            raise FetchError(f"{what}: {type(exc).__name__}: {exc}", retry=True) from None

    async def fetch(
        self, url: str, *, expected_size: int | None, part_name: str, file_key: str, what: str
    ) -> Fetched:
        """Download `url` into a verified, fsynced temp file, resuming an earlier part if allowed."""
        counted = Counted(self.on_bytes)
        try:
            async with asyncio.timeout(self.deadline) as scope:
                try:
                    return await self._fetch(
                        url, expected_size, Part(self.fs, part_name, file_key), what, counted
                    )
                except BaseException:
                    counted.take_back()  # the next attempt counts its bytes again
                    raise
        except TimeoutError:
            if not scope.expired():  # a read that waited longer than procore.request_timeout
                raise FetchError(f"{what}: no answer in procore.request_timeout", retry=True) from None
            raise FetchError(
                f"{what}: not done in {self.deadline:.0f} s (procore.download_timeout); what is durable "
                "is kept for the next attempt",
                retry=True,
            ) from None

    async def _fetch(
        self, url: str, expected_size: int | None, part: Part, what: str, counted: Counted
    ) -> Fetched:
        look = self.shared or part.state_path.name in self.partial
        state = await self.fs.run(part.resumable) if look else None
        headers = dict(FILE_HEADERS)
        if state is not None:
            headers["Range"] = f"bytes={state.durable}-"
            if state.etag:
                headers["If-Range"] = state.etag
        current = _web_url(URL(), url, f"{what}: unusable file URL")
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._hop(current, what, headers)
            async with response:
                status = response.status
                if status in REDIRECTS:
                    current = self._next_hop(current, response.headers.get("Location"), what)
                    continue
                if status in EXPIRED:
                    body, _ = await read_head(response, ERROR_BODY)
                    raise FetchError(
                        f"{what}: HTTP {status} from {current.host}: {excerpt(body)}",
                        retry=True,
                        refresh=True,
                    )
                if status == 429 or worth_retrying(status):
                    wait = retry_after_seconds(response.headers, now=time.time())
                    raise FetchError(f"{what}: HTTP {status} from {current.host}", retry=True, wait=wait)
                if status == 416:  # our Range no longer fits the file: start again
                    await self.fs.run(part.discard)
                    raise FetchError(f"{what}: range not satisfiable, restarting", retry=True)
                if status not in (200, 206):
                    body, _ = await read_head(response, ERROR_BODY)
                    raise FetchError(
                        f"{what}: HTTP {status} from {_redact(current)}: {excerpt(body)}", retry=False
                    )
                coding = response.headers.get("Content-Encoding", "").strip().lower() or "identity"
                if coding != "identity":
                    raise FetchError(f"{what}: the file came {excerpt(coding)}-encoded, unasked", retry=True)
                offset = self._resume_offset(response, state, expected_size)
                return await self._stream(response, part, offset, expected_size, what, counted=counted)
        raise FetchError(f"{what}: more than {MAX_REDIRECTS} redirects", retry=False)

    @staticmethod
    def _next_hop(current: URL, location: str | None, what: str) -> URL:
        """Where a redirect leads: a `Location` relative to the current URL, or an absolute HTTP(S)
        one; anything else (no Location, `file:`, `data:`, unparsable) fails this attempt only."""
        if not location:
            raise FetchError(f"{what}: redirect without a Location", retry=True)
        return _web_url(current, location, f"{what}: redirect to an unusable Location")

    @staticmethod
    def _resume_offset(
        response: aiohttp.ClientResponse, state: PartState | None, expected: int | None
    ) -> int:
        """Where the body starts: the durable prefix if the server really resumed this file, else 0."""
        if response.status != 206 or state is None:
            return 0
        content_range = response.headers.get("Content-Range", "")
        etag = response.headers.get("ETag")
        try:
            start_text, total_text = content_range.removeprefix("bytes ").split("/")
            start = int(start_text.split("-")[0])
            total = int(total_text)
        except ValueError:
            raise FetchError("unreadable Content-Range on a resumed download", retry=True) from None
        if (
            start != state.durable
            or (expected is not None and total != expected)
            or (state.etag and etag and etag != state.etag)
        ):
            raise FetchError("the file changed since the partial download; restarting", retry=True)
        return start

    async def _stream(
        self,
        response: aiohttp.ClientResponse,
        part: Part,
        offset: int,
        expected_size: int | None,
        what: str,
        *,
        counted: Counted,
    ) -> Fetched:
        length = response.content_length
        total = offset + length if length is not None else None
        if expected_size is not None and total is not None and total != expected_size:
            # The record and the file disagree: the photo was probably replaced since listing.
            raise FetchError(
                f"{what}: server sends {total} bytes, listing says {expected_size}", retry=True, refresh=True
            )
        limit = Limit(expected_size, self.max_size, what)
        if total is not None:
            limit.check(total)
        digest = await self._begin(part, offset)
        chunks = _chunks(response)
        head = Pieces()
        try:
            if not offset:  # most photos arrive whole before the first write would be due
                async for chunk in chunks:
                    digest.update(chunk)
                    head.add(chunk)
                    limit.check(head.size)
                    if head.size >= WRITE_BATCH:
                        break
                else:
                    size = head.size
                    self._check_length(part, size, total, expected_size, what)
                    return Fetched(tmp=part.path, size=size, sha256=digest.hexdigest(), data=head.take())
            received = await self._write(
                part,
                chunks,
                offset=offset,
                head=head,
                digest=digest,
                etag=response.headers.get("ETag"),
                limit=limit,
                counted=counted,
            )
        except TRANSPORT_ERRORS as exc:
            raise FetchError(f"{what}: body cut short ({type(exc).__name__})", retry=True) from None
        except FetchError:  # longer than it may be: nothing of it is worth resuming
            await self.fs.run(part.discard)
            raise
        self._check_length(part, received, total, expected_size, what)
        await self.fs.run(part.forget_state)
        self.partial.discard(part.state_path.name)
        return Fetched(tmp=part.path, size=received, sha256=digest.hexdigest(), counted=counted.bytes)

    async def _begin(self, part: Part, offset: int) -> hashlib._Hash:
        """The running hash: over the kept prefix when resuming, else fresh (old state dropped)."""
        if offset:
            digest: hashlib._Hash = await self.fs.run(part.hash_prefix, offset)
            return digest
        if self.shared or part.state_path.name in self.partial:
            await self.fs.run(part.forget_state)
            self.partial.discard(part.state_path.name)
        return hashlib.sha256()

    async def _write(
        self,
        part: Part,
        chunks: AsyncIterator[bytes],
        *,
        offset: int,
        head: Pieces,
        digest: hashlib._Hash,
        etag: str | None,
        limit: Limit,
        counted: Counted,
    ) -> int:
        """Stream the rest of a large body to the part file, recording durable progress each MiB."""
        received = durable = offset + head.size
        batch = head
        async with aiofiles.open(
            part.path, "r+b" if offset else "wb", opener=part.opener(bool(offset)), executor=self.fs.executor
        ) as out:
            await out.seek(offset)
            async for chunk in chunks:
                digest.update(chunk)
                batch.add(chunk)
                received += len(chunk)
                limit.check(received)
                if batch.size >= WRITE_BATCH:
                    written = batch.size
                    await out.write(b"".join(batch.take()))
                    counted.add(written)
                    if received - durable >= DURABLE_EVERY:
                        await out.flush()
                        await self.fs.run(os.fsync, out.fileno())
                        durable = received
                        await self.fs.run(part.save, durable, etag)
                        self.partial.add(part.state_path.name)
            if batch.size:
                await out.write(b"".join(batch.take()))
            await out.flush()
            await self.fs.run(os.fsync, out.fileno())
        return received

    @staticmethod
    def _check_length(part: Part, received: int, total: int | None, expected: int | None, what: str) -> None:
        for label, wanted in (("Content-Length", total), ("listing size", expected)):
            if wanted is not None and received != wanted:
                part.discard()  # a few small unlinks; not worth a thread hop
                raise FetchError(f"{what}: got {received} bytes, {label} says {wanted}", retry=True)
