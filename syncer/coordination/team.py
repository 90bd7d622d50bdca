"""PostgreSQL: several worker processes share one database and one mirror.

Each project is listed by the worker holding its lease (`membership.py`); the listing records
every page with the signed URL of each photo to download, and every worker, the lister included,
claims due photos in batches (`SKIP LOCKED`) into its own transfer pool. The listing runs at most
a page plus a queue per worker ahead of the downloads, so the URLs are still fresh when claimed.
A worker writes a photo only under the photo's file lock and only while its lease holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from syncer.config import SyncSettings
from syncer.coordination.membership import Membership, membership
from syncer.engine import Engine, measured, transfers
from syncer.mirror.files import MirrorFS
from syncer.procore.models import Project
from syncer.result import ProjectResult, Turns
from syncer.store import Failed, Store
from syncer.transfer import Job, Pool, Result

log = logging.getLogger(__name__)

POLL = 0.2
"""Seconds between looks at the database for work."""
REPEATED = "due again after this run already tried it (Procore may serve another file than it lists)"


@dataclass
class WorkerGuard:
    """The guard of a worker: it writes only while its lease holds, and a photo only alone."""

    member: Membership
    fs: MirrorFS

    def check(self) -> None:
        self.member.check()

    def writing(self, photo_id: int) -> AbstractAsyncContextManager[bool]:
        return self.fs.writing(str(photo_id))

    def count(self, result: Result) -> None:
        self.member.count(result)


class ClaimSource:
    """Feeds a pool with the project's due photos, claimed from the database in batches, until
    none is left anywhere: the listing is over, nothing is claimable, and no live worker holds
    one still in flight (a worker that dies gives its claims back, and they are claimed here)."""

    hands_over_urls = True

    def __init__(
        self,
        member: Membership,
        pool: Pool,
        *,
        settings: SyncSettings,
        seen: set[int] | None,
    ) -> None:
        self.member = member
        self.pool = pool
        self.project_id = pool.transfer.project.id
        self.settings = settings
        self.seen = seen
        """The ids this run lists, when this worker is the lister (None when it helps another):
        a due photo not among them counts as retried."""
        self._listed = asyncio.Event()
        self._backlog: int | None = None
        member.doing[self.project_id] = "downloading" if seen is None else "listing"
        self.feeder = asyncio.create_task(self._feed())

    @property
    def lister(self) -> bool:
        return self.seen is not None

    async def _listing_over(self) -> bool:
        if self.lister:
            return self._listed.is_set()
        return await self.member.shared.lease_holder(self.project_id) is None

    async def listed(self, downloads: list[Job]) -> None:
        """Let the listing run only a page and a queue per worker ahead of the downloads, so the
        signed URLs it hands over are still fresh when a worker claims them."""
        shared = self.member.shared
        if self._backlog is None:
            per_worker = self.settings.per_page + self.settings.concurrency * 4
            self._backlog = per_worker * await shared.live_count()
        while await shared.unclaimed_due(self.project_id, self.pool.transfer.now()) > self._backlog:
            if self.feeder.done():
                self.feeder.result()  # its error, if it failed
                return
            await asyncio.sleep(POLL)

    async def drain(self) -> None:
        if self.lister:
            self.member.doing[self.project_id] = "downloading"
            self._listed.set()
        await self.feeder

    async def abort(self) -> None:
        self.feeder.cancel()
        await asyncio.gather(self.feeder, return_exceptions=True)

    async def settle(self) -> None:
        """Record what is done and hand back the claims of the jobs never done (the sync stopped),
        so they need not wait for this worker to end; the lister also drops the signed URLs no
        one will use now."""
        await self.pool.recorder.flush()
        await self.member.shared.release(self.project_id, lister=self.lister)

    async def _feed(self) -> None:
        member, pool, transfer = self.member, self.pool, self.pool.transfer
        batch = self.settings.concurrency
        claimed: set[int] = set()
        while True:
            member.check()
            pool.raise_fatal()
            if pool.waiting >= batch:
                await asyncio.sleep(POLL / 10)
                continue
            over = await self._listing_over()  # asked before claiming, so no row listed after it is missed
            claims = await member.shared.claim(self.project_id, batch, transfer.now())
            if not claims and pool.idle:
                await pool.recorder.flush()  # idle here: let the other workers see what is done
                if over and not await member.shared.held_due(self.project_id):
                    # A claim that expired since the first try is claimable now; else all is done.
                    claims = await member.shared.claim(self.project_id, batch, transfer.now())
                    if not claims:
                        return
            if not claims:
                await asyncio.sleep(POLL)
                continue
            jobs = [Job(c.id, c.rel_path, c.photo, c.stored, True, c.attempts) for c in claims]
            sizes = {c.id: c.size for c in claims}
            for job in await transfer.mark_on_disk(jobs):
                if job.photo_id in claimed:
                    # Each photo is tried once per run, as without PostgreSQL. Due again after a
                    # download here means Procore serves another file than it lists; fetching it
                    # again at once could go on for ever.
                    if all(failed_id != job.photo_id for failed_id, _, _ in transfer.result.failures):
                        await transfer.fail(job, REPEATED)
                    else:
                        await pool.recorder.add(Failed(job.photo_id, REPEATED, transfer.retry_at(job)))
                    continue
                claimed.add(job.photo_id)
                if self.seen is not None and job.photo_id not in self.seen:
                    transfer.result.retried += 1
                transfer.progress.queued(1, sizes[job.photo_id] or 0)
                await pool.put(job)


class Team:
    """The `Coordinator` of one worker among several on PostgreSQL."""

    shares_mirror = True

    def __init__(self, member: Membership, fs: MirrorFS) -> None:
        self.member = member
        self.guard = WorkerGuard(member, fs)

    def source(self, pool: Pool, *, seen: set[int], settings: SyncSettings) -> ClaimSource:
        return ClaimSource(self.member, pool, settings=settings, seen=seen)

    def hold(self, project_ids: Sequence[int]) -> AbstractContextManager[None]:
        return contextlib.nullcontext()  # workers cooperate; no one is turned away

    def serving(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    async def turn(
        self, engine: Engine, project: Project, *, full: bool, deadline: float | None
    ) -> ProjectResult | None:
        await self.member.rejoin()  # a daemon declared dead starts over under a new id
        async with self.member.project(project.id) as mine:
            if mine:
                return await engine.sync_project(project, full=full, deadline=deadline)
        return await self._help(engine, project, deadline=deadline)

    async def _help(
        self, engine: Engine, project: Project, *, deadline: float | None, turns: Turns | None = None
    ) -> ProjectResult:
        """Download the project's due photos while another worker lists it, until none is left.
        Returns once that worker let go of the project. A one-shot run's `turns` holds the result
        as it is filled in; the caller ends it there."""
        result = ProjectResult(project=project, window_start=None, window_end=engine.now(), helped=True)
        if turns is not None:
            turns.begin(result)

        async def help_() -> None:
            pool = engine.pool(project, result)
            source = ClaimSource(self.member, pool, settings=engine.settings, seen=None)
            try:
                async with transfers(source, pool):
                    pass  # nothing to list: the source claims what the lister recorded
            finally:
                await asyncio.shield(source.settle())

        try:
            await measured(result, help_(), deadline)
        finally:
            self.member.doing.pop(project.id, None)
        return result

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
        """Sync the projects as one of several workers.

        Each project is listed by the worker holding its lease. This worker first takes every
        project no one holds and no one has listed since this run began; then it downloads its
        share of the others until their holders let go. A project whose holder moved its checkpoint
        is done; one whose holder died or failed first is taken over and synced here."""
        store = engine.store
        _, run_end = engine.window(None, engine.procore_now())  # where this run's windows would end
        busy_at: dict[int, datetime | None] = {}
        """The project's mark when it was first found busy."""

        async def mark(project: Project) -> datetime | None:
            """What a finished run of this kind moves: the checkpoint, or the last full run."""
            checkpoint, last_full = await store.marks(project.id)
            return last_full if full else checkpoint

        async def moved(project: Project) -> bool:
            """Whether another worker listed the project since this run began (or since it was busy),
            its first backfill included."""
            now = await mark(project)
            if now is None or (not full and await store.backfill_until(project.id) is not None):
                return False
            # Past this run's end: a project whose backfill turns ended in the second this run began
            # is listed again (a request), not taken for another worker's.
            return now > run_end or (project.id in busy_at and now != busy_at[project.id])

        waiting = list(projects)
        backfilling: set[int] = set()
        """Projects this worker gives turns of their first backfill until it is done."""
        while waiting:
            for project in list(waiting):
                if project.id not in backfilling and await moved(project):
                    continue  # listed meanwhile: only its downloads may be left (below)
                async with self.member.project(project.id) as mine:
                    if mine:
                        result = await engine.sync_project(
                            project, full=full, force=force, deadline=deadline, turns=turns
                        )
                        turns.end(result)
                        if result.backfill_left and result.proven and not result.stopped:
                            backfilling.add(project.id)  # another turn in the next round
                            continue
                        backfilling.discard(project.id)
                        waiting.remove(project)
                        continue
                    backfilling.discard(project.id)  # another worker gives it its turns now
                    if project.id not in busy_at:
                        busy_at[project.id] = await mark(project)
            for project in [p for p in waiting if p.id not in backfilling]:
                engine.progress.listed(project.id)  # by another worker: this one learns of no more photos
                log.info("project %s is listed by another worker; downloading a share of it", project.id)
                helped = await self._help(engine, project, deadline=deadline, turns=turns)
                turns.end(helped)
                if helped.stopped or await moved(project):
                    waiting.remove(project)


@asynccontextmanager
async def team(store: Store, fs: MirrorFS, *, ttl: float, share: float) -> AsyncIterator[Team]:
    """Join the workers sharing this PostgreSQL database for the life of the block."""
    async with membership(store, ttl=ttl, mirror_root=fs.root) as member:
        live = await member.shared.live_count()
        if live * share > 1.0 + 1e-9:
            log.warning(
                "%d workers share this database, each spending procore.workers_share=%g of the rate "
                "budget (%g of it together); set procore.workers_share to %g or less to avoid 429s",
                live,
                share,
                live * share,
                1 / live,
            )
        yield Team(member, fs)
