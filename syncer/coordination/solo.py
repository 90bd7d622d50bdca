"""SQLite: one process per project at a time, kept apart by file locks.

A one-shot run takes every project's lock up front (a second run stops at once with exit 4); a
daemon's scheduled run takes its project's lock or skips the tick. Inside one process nothing
else can write the project's photos, so the transfers' guard allows everything, and downloads
go from the listing straight into the pool.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, contextmanager

from syncer.config import SyncSettings
from syncer.engine import Engine
from syncer.locks import Locks
from syncer.procore.models import Project
from syncer.result import ProjectResult, Turns
from syncer.store import Store
from syncer.transfer import Job, Pool, Result

DRAIN_BATCH = 500
"""Photos due from earlier runs looked up on disk at a time."""


class _Free(AbstractAsyncContextManager[bool]):
    """An always-granted write permission, one instance for every photo (no per-photo object)."""

    async def __aenter__(self) -> bool:
        return True

    async def __aexit__(self, *exc: object) -> None:
        return None


class Alone:
    """The guard of a process that holds its project's file lock: nothing to refuse."""

    _free = _Free()

    def check(self) -> None:
        return None

    def writing(self, photo_id: int) -> AbstractAsyncContextManager[bool]:
        return self._free

    def count(self, result: Result) -> None:
        return None


class QueueSource:
    """Downloads go from each listed page straight into the pool; after the listing, the photos
    due from earlier runs (failed before, or left by an interrupted run) follow."""

    hands_over_urls = False

    def __init__(self, store: Store, pool: Pool) -> None:
        self.store = store
        self.pool = pool
        self.transfer = pool.transfer
        self.queued: set[int] = set()

    async def _put(self, jobs: list[Job], sizes: list[int | None]) -> None:
        """Hand `jobs` to the pool. They count as queued at once, before the pool has room for
        them all: they are recorded as due, so a run stopped meanwhile leaves them to the next
        one, and its summary says so."""
        self.queued.update(job.photo_id for job in jobs)
        self.transfer.progress.queued(len(jobs), sum(size or 0 for size in sizes))
        for job in jobs:
            await self.pool.put(job)

    async def listed(self, downloads: list[Job]) -> None:
        jobs = await self.transfer.mark_on_disk(downloads)
        await self._put(jobs, [job.photo.size if job.photo else None for job in jobs])

    async def drain(self) -> None:
        transfer = self.transfer
        due = [
            d
            for d in await self.store.due_downloads(transfer.project.id, transfer.now())
            if d.id not in self.queued
        ]
        sizes = {d.id: d.size for d in due}
        for start in range(0, len(due), DRAIN_BATCH):
            jobs = [
                Job(d.id, d.rel_path, None, None, download=True, attempts=d.attempts)
                for d in due[start : start + DRAIN_BATCH]
            ]
            jobs = await transfer.mark_on_disk(jobs)
            transfer.result.retried += len(jobs)
            await self._put(jobs, [sizes[job.photo_id] for job in jobs])

    async def abort(self) -> None:
        return None

    async def settle(self) -> None:
        await self.pool.recorder.flush()


class Solo:
    """The `Coordinator` of a process on SQLite."""

    shares_mirror = False

    def __init__(self, store: Store, locks: Locks) -> None:
        self.store = store
        self.locks = locks
        self.guard = Alone()

    def source(self, pool: Pool, *, seen: set[int], settings: SyncSettings) -> QueueSource:
        return QueueSource(self.store, pool)

    def hold(self, project_ids: Sequence[int]) -> AbstractContextManager[None]:
        return self.locks.projects(project_ids)

    async def sync(
        self,
        engine: Engine,
        projects: list[Project],
        turns: Turns,
        *,
        full: bool,
        force: bool,
        deadline: float | None,
    ) -> None:
        await engine.take_turns(projects, turns, full=full, force=force, deadline=deadline)

    async def turn(
        self, engine: Engine, project: Project, *, full: bool, deadline: float | None
    ) -> ProjectResult | None:
        with self.locks.try_project(project.id) as mine:
            if not mine:
                return None  # the process holding the lock does it all
            return await engine.sync_project(project, full=full, deadline=deadline)

    @contextmanager
    def serving(self) -> Iterator[None]:
        with self.locks.daemon():
            yield
