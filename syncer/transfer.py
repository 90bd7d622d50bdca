"""The transfer side of a sync: the whole life of one job, and the bounded pool that carries jobs out.

A job is one photo to download (new or replaced) or to relocate (same file, new path or metadata).
`Transfer.run` is its whole life, as rclone's `operations.Copy` is: take the job, fetch a fresh
record if it has no usable URL, download into `.syncer/tmp/`, install durably, remove the old copy,
then record the result, or record the failure with its next retry time. The tasks never write
to the database themselves: results go through the `Recorder` in batches, after the files they
describe are durable, so SQLite sees one writer.

What the process around a transfer may forbid is a `Guard`, chosen once at setup: alone on a
mirror (SQLite, where project file locks keep other processes out) the guard allows everything;
as one of several workers (PostgreSQL) it stops work once the worker's lease is lost and lets only
one process write a photo at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Protocol, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from syncer.errors import database_error, local_fault
from syncer.mirror.adopt import adopt
from syncer.mirror.fetch import Fetched, Fetcher, FetchError
from syncer.mirror.files import MirrorFS, UnsafePath
from syncer.mirror.layout import Layout
from syncer.procore.api import ProcoreApi
from syncer.procore.http import ProcoreError, RetryPolicy
from syncer.procore.models import BadRecord, Photo, Project
from syncer.report import Progress
from syncer.result import ProjectResult
from syncer.store import Downloaded, Failed, Relocated, Store, StoredPhoto, Vanished

log = logging.getLogger(__name__)

RECORD_BATCH = 200
RECORD_EVERY = 2.0
"""Results are written every RECORD_BATCH results or RECORD_EVERY seconds, whichever first."""
RETRY_MAX = timedelta(days=1)
WRITING_ELSEWHERE = "another process is writing this photo (a worker that lost its lease?); tried again later"

Result = Downloaded | Relocated | Failed | Vanished
T = TypeVar("T")


async def uninterrupted(work: Awaitable[T], then: Callable[[T], None] | None = None) -> T:
    """Await `work` to its end even if this task is cancelled meanwhile, run `then` on its result,
    and only then let the cancellation through. A stopped run (Ctrl-C, SIGTERM, its time limit)
    must not leave a file installed but unrecorded, nor a batch of results half-sent. A future
    (a file thread's job) is waited on as it is: no task is made for it."""
    future = asyncio.ensure_future(work)
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            cancelled = True
    if future.cancelled():
        raise asyncio.CancelledError
    failed = future.exception()
    if failed is None and then is not None:
        then(future.result())
    if cancelled:
        raise asyncio.CancelledError  # the stop comes first; a failure of `work` is moot now
    return future.result()


def retry_at(now: datetime, attempts: int, base: float) -> datetime:
    """When a failed photo is next due: `base` (sync.retry_backoff), then doubling, at most a day."""
    return now + min(RETRY_MAX, timedelta(seconds=base) * (1 << min(attempts, 16)))


class Guard(Protocol):
    """What a transfer asks of the process it runs in."""

    def check(self) -> None:
        """Raise a `FatalError` if this process may no longer write (its lease is gone)."""

    def writing(self, photo_id: int) -> AbstractAsyncContextManager[bool]:
        """Whether this process alone writes the photo, held from download to install."""

    def count(self, result: Result) -> None:
        """Add one result to this process's totals."""


@dataclass(frozen=True)
class Job:
    photo_id: int
    rel_path: str
    photo: Photo | None
    """The listed record; None for a photo due from an earlier run (a fresh record is fetched)."""
    stored: StoredPhoto | None
    download: bool
    attempts: int = 0
    """Failed attempts in earlier runs, which set the next retry time."""
    on_disk: bool = False
    """A file is at its path although the database does not know it as mirrored: adopt it if
    it is this photo's (`mirror/adopt.py`)."""


class Recorder:
    """Collects transfer results and writes them in batches through the store's single writer."""

    def __init__(self, store: Store, guard: Guard) -> None:
        self.store = store
        self.guard = guard
        self._pending: list[Result] = []
        self._last = time.monotonic()

    def note(self, item: Result) -> None:
        """Keep a result for the next batch; no await, so nothing can come between an install
        and the note of it."""
        self.guard.count(item)
        self._pending.append(item)

    async def add(self, item: Result) -> None:
        self.note(item)
        await self.maybe_flush()

    async def maybe_flush(self) -> None:
        """Write the batch if it is full or old enough."""
        if len(self._pending) >= RECORD_BATCH or time.monotonic() - self._last >= RECORD_EVERY:
            await self.flush()

    async def flush(self) -> None:
        """Write what is pending; a batch once begun is written whole, even by a stopping run."""
        batch, self._pending = self._pending, []
        self._last = time.monotonic()
        try:
            await uninterrupted(
                self.store.record(
                    [r for r in batch if isinstance(r, Downloaded)],
                    [r for r in batch if isinstance(r, Relocated)],
                    [r for r in batch if isinstance(r, Failed)],
                    [r for r in batch if isinstance(r, Vanished)],
                )
            )
        except SQLAlchemyError as exc:  # a read-only or full database: the run's fault
            raise database_error(exc, self.store.url) from None


@dataclass
class Transfer:
    """The transfers of one project run: the parts they use and where their results go."""

    api: ProcoreApi
    fetcher: Fetcher
    fs: MirrorFS
    layout: Layout
    guard: Guard
    progress: Progress
    retry: RetryPolicy
    backoff: float
    """sync.retry_backoff: the first wait before a failed photo is due again."""
    now: Callable[[], datetime]
    project: Project
    result: ProjectResult
    recorder: Recorder

    async def run(self, job: Job) -> None:
        """Carry out one job to its recorded end. Only a `FatalError` escapes: it ends the run
        (refused credentials, a lost lease, a full or read-only disk or database).

        The job is done for the progress (`Progress.finished`) where its outcome is counted in the
        result, not where it returns: a stop that cuts it short after its file was installed, while
        the record is written, leaves it done; one that cuts it before leaves it to the next run,
        and a stopped run's summary counts it there (`Tally.left`)."""
        try:
            self.guard.check()
            if job.download:
                await self._download(job)
            else:
                await self._relocate(job)
        except (OSError, UnsafePath) as exc:
            if isinstance(exc, OSError):
                if fault := local_fault(exc, f"the mirror {self.fs.root}"):
                    raise fault from None  # the disk's fault, not the photo's: stop, blame no one
                await self.fs.run(self.fs.check_identity)  # a share gone mid-run: stop, blame no one
            await self.fail(job, f"{type(exc).__name__}: {exc}")

    async def fail(self, job: Job, error: str) -> None:
        log.warning("photo %s (%s) failed: %s", job.photo_id, job.rel_path, error)
        self.result.failures.append((job.photo_id, job.rel_path, error))
        self.progress.finished()
        await self.recorder.add(Failed(job.photo_id, error, self.retry_at(job)))

    def retry_at(self, job: Job) -> datetime:
        return retry_at(self.now(), job.attempts, self.backoff)

    async def mark_on_disk(self, jobs: list[Job]) -> list[Job]:
        """The jobs, with the downloads whose file may already be in the mirror marked `on_disk`;
        one trip to a file thread for the lot."""
        unknown = [
            j.rel_path for j in jobs if j.download and (j.stored is None or j.stored.local_path is None)
        ]
        if not unknown:
            return jobs
        present: set[str] = await self.fs.run(self.fs.existing, unknown)
        return [replace(j, on_disk=True) if j.download and j.rel_path in present else j for j in jobs]

    def render(self, photo: Photo) -> str:
        return self.layout.render(photo, project_name=self.project.name, project_id=self.project.id)

    def sidecars(
        self, rel: str, photo: Photo, size: int | None, sha256: str | None
    ) -> list[tuple[str, bytes]]:
        return self.fs.sidecars.documents(
            rel,
            photo,
            project_id=self.project.id,
            project_name=self.project.name,
            size=size,
            sha256=sha256,
        )

    async def _download(self, job: Job) -> None:
        async with self.guard.writing(job.photo_id) as alone:
            if alone:
                await self._fetch_and_install(job)
                return
        await self.fail(job, WRITING_ELSEWHERE)

    async def _fetch_and_install(self, job: Job) -> None:
        """Up to `procore.retry_attempts` tries in all: the one retry layer of a download (the HTTP
        calls under it try once each)."""
        photo, error, look = job.photo, "not attempted", job.on_disk
        last = self.retry.attempts - 1
        for attempt in range(self.retry.attempts):
            try:
                if photo is None or photo.url is None:
                    photo = await self.api.image(self.project.id, job.photo_id, once=True)
                if look:
                    look = False
                    if await self._adopt(photo):
                        return
                if photo.url is None:
                    raise FetchError("Procore gave no download URL for this photo", retry=False)
                fetched = await self.fetcher.fetch(
                    photo.url,
                    expected_size=photo.size,
                    part_name=f"{photo.id}.part",
                    file_key=photo.file_key,
                    what=f"photo {photo.id}",
                )
                self.progress.received(fetched.size - fetched.counted)  # the rest arrived as it streamed
                self.guard.check()  # after a long download: is the claim still ours?
                await self._install(job, photo, fetched)
                await self.recorder.maybe_flush()
                return
            except FetchError as exc:
                error = str(exc)
                if not exc.retry:
                    break
                if exc.refresh:
                    photo = None  # a fresh record brings a freshly signed URL; no need to wait
                elif attempt < last:
                    await asyncio.sleep(exc.wait if exc.wait is not None else self.retry.backoff(attempt))
            except (ProcoreError, BadRecord) as exc:
                error = str(exc)
                if isinstance(exc, ProcoreError) and exc.status == 404:
                    log.info("photo %s was deleted in Procore after it was listed", job.photo_id)
                    self.result.vanished += 1
                    self.progress.finished()
                    await self.recorder.add(Vanished(job.photo_id, self.now()))
                    return
                if attempt < last:
                    await asyncio.sleep(self.retry.backoff(attempt))
        await self.fail(job, error)

    async def _adopt(self, photo: Photo) -> bool:
        """Record the photo's file already in the mirror, if it is this photo's: no download."""
        rel = self.render(photo)
        adopted = await self.fs.run(adopt, self.fs, rel, photo, partial(self.sidecars, rel, photo))
        if adopted is None:
            return False
        self.result.adopted += 1
        self.progress.finished()
        await self.recorder.add(self._mirrored(photo, rel, adopted.size, adopted.sha256))
        return True

    def _mirrored(self, photo: Photo, rel: str, size: int, sha256: str) -> Downloaded:
        """The record of the photo's file, verified in place at `rel`."""
        return Downloaded(
            id=photo.id,
            local_path=rel,
            file_key=photo.file_key,
            size=size,
            sha256=sha256,
            sidecar_of=photo.updated_at,
            at=self.now(),
        )

    async def _install(self, job: Job, photo: Photo, fetched: Fetched) -> None:
        """Put the verified file and its sidecar in place and remove the old copy, in one trip to
        a file thread that runs to its end even if the run is stopped meanwhile; then note it."""
        rel = job.rel_path if photo is job.photo else self.render(photo)  # a fresh record may move it
        when = photo.when
        installing = self.fs.install(
            rel,
            tmp=fetched.tmp,
            data=fetched.data,
            mtime=when.timestamp() if when else None,
            sidecars=self.sidecars(rel, photo, fetched.size, fetched.sha256),
            replacing=job.stored.local_path if job.stored else None,
        )

        def installed(_: None) -> None:
            self.result.downloaded += 1
            self.result.bytes += fetched.size
            self.progress.finished()
            self.recorder.note(self._mirrored(photo, rel, fetched.size, fetched.sha256))

        await uninterrupted(installing, installed)

    async def _relocate(self, job: Job) -> None:
        stored, photo = job.stored, job.photo
        assert stored is not None and photo is not None
        source = stored.local_path or stored.trashed_path  # in place, or in the trash to restore
        assert source is not None
        try:
            if source != job.rel_path:
                await self.fs.move(source, job.rel_path)
                for old in self.fs.sidecars.paths(source):
                    await self.fs.remove(old)
        except FileNotFoundError:
            log.warning("photo %s is missing from the mirror at %s; downloading it again", photo.id, source)
            await self._download(replace(job, download=True, stored=None))
            return
        await self.fs.write_durably(self.sidecars(job.rel_path, photo, stored.local_size, stored.sha256))
        self.result.relocated += 1
        self.progress.finished()
        await self.recorder.add(Relocated(photo.id, job.rel_path, photo.updated_at))


class Pool:
    """The transfer tasks of one project run: a bounded queue (so a million-photo project never
    holds a million jobs) and a fixed set of tasks draining it through one `Transfer`."""

    def __init__(self, transfer: Transfer, *, concurrency: int) -> None:
        self.transfer = transfer
        self.recorder = transfer.recorder
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=concurrency * 4)
        self._fatal: Exception | None = None
        self._unfinished = 0
        self._tasks = [asyncio.create_task(self._work()) for _ in range(concurrency)]

    @property
    def waiting(self) -> int:
        """Jobs queued and not yet taken by a task."""
        return self._queue.qsize()

    @property
    def idle(self) -> bool:
        """No job is queued or running."""
        return self._unfinished == 0

    def raise_fatal(self) -> None:
        """Raise the error that ended the transfers (authentication, a lost lease, a full disk,
        or a bug), if any."""
        if self._fatal is not None:
            raise self._fatal

    async def put(self, job: Job) -> None:
        self.raise_fatal()
        self._unfinished += 1
        await self._queue.put(job)

    async def close(self) -> None:
        """Let the tasks finish what is queued, then end them."""
        for _ in self._tasks:
            await self._queue.put(None)
        await asyncio.gather(*self._tasks)
        self.raise_fatal()

    async def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _work(self) -> None:
        while (job := await self._queue.get()) is not None:
            try:
                if self._fatal is None:
                    await self.transfer.run(job)
            except Exception as exc:  # a `FatalError`: the rest of the queue is not worth trying
                self._fatal = self._fatal or exc
            finally:
                self._unfinished -= 1
