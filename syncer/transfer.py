"""The transfer side of a sync: the jobs, the bounded pool of tasks that carry them out, and the
recorder that writes their results.

The tasks never write to the database themselves; their results go through the `Recorder` in
batches, after the files they describe are durable, so SQLite sees one writer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from syncer.membership import Membership
from syncer.procore.models import Photo
from syncer.store import Downloaded, Failed, Relocated, Store, StoredPhoto, Vanished

RECORD_BATCH = 200
RECORD_EVERY = 2.0
"""Results are written every RECORD_BATCH results or RECORD_EVERY seconds, whichever first."""


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


class Recorder:
    """Collects worker results and writes them in batches through the store's single writer."""

    def __init__(self, store: Store, membership: Membership | None = None) -> None:
        self.store = store
        self.membership = membership
        self._downloaded: list[Downloaded] = []
        self._relocated: list[Relocated] = []
        self._failed: list[Failed] = []
        self._vanished: list[Vanished] = []
        self._last = time.monotonic()

    async def add(self, item: Downloaded | Relocated | Failed | Vanished) -> None:
        if self.membership is not None:
            self.membership.count(item)
        if isinstance(item, Downloaded):
            self._downloaded.append(item)
        elif isinstance(item, Relocated):
            self._relocated.append(item)
        elif isinstance(item, Vanished):
            self._vanished.append(item)
        else:
            self._failed.append(item)
        pending = len(self._downloaded) + len(self._relocated) + len(self._failed) + len(self._vanished)
        if pending >= RECORD_BATCH or time.monotonic() - self._last >= RECORD_EVERY:
            await self.flush()

    async def flush(self) -> None:
        batch = (self._downloaded, self._relocated, self._failed, self._vanished)
        self._downloaded, self._relocated, self._failed, self._vanished = [], [], [], []
        self._last = time.monotonic()
        await self.store.record(*batch)


class Pool:
    """The transfer workers of one project sync: a bounded queue (so a million-photo project
    never holds a million jobs), a fixed set of tasks draining it, and their recorder."""

    def __init__(
        self,
        store: Store,
        *,
        concurrency: int,
        work: Callable[[Pool], Coroutine[Any, Any, None]],
        membership: Membership | None = None,
    ) -> None:
        self.queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=concurrency * 4)
        self.membership = membership
        self.recorder = Recorder(store, membership)
        self.fatal: list[BaseException] = []
        """Errors that end the whole sync (authentication, a lost lease); `put` raises them."""
        self.unfinished = 0
        """Jobs queued or running."""
        self.tasks = [asyncio.create_task(work(self)) for _ in range(concurrency)]

    async def put(self, job: Job) -> None:
        if self.fatal:
            raise self.fatal[0]
        self.unfinished += 1
        await self.queue.put(job)

    async def close(self) -> None:
        """Let the workers finish what is queued, then end them."""
        for _ in self.tasks:
            await self.queue.put(None)
        await asyncio.gather(*self.tasks)
        if self.fatal:
            raise self.fatal[0]

    async def settle(self, project_id: int, *, lister: bool) -> None:
        """Record what is done and, with several workers, hand back the claims of the jobs that
        were never done (the sync stopped), so they need not wait for this worker to end; the
        `lister` of the project also drops the signed URLs no one will use now."""
        await self.recorder.flush()
        if self.membership is not None:
            await self.membership.shared.release(project_id, lister=lister)

    async def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
