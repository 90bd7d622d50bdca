"""Syncing one project: list the window with proof, record each page, transfer, move the checkpoint.

`Engine` holds the long-lived parts of a process (client, store, mirror, settings); each run of
one project is a `ProjectSync`, an object that owns that run's state (its result, the ids seen,
its transfer pool and work source), as rclone's `syncCopyMove` does. Listing (`listing.py`),
transferring (`transfer.py`) and deletions (`reconcile.py`) are collaborators it calls.

Listing and transferring overlap: each page is recorded in the database and its work handed at
once to the run's `WorkSource`, which feeds a bounded pool of tasks, so a million-photo project
never holds a million tasks. Where the downloads come from (straight from the listing, or claimed
from a database other workers share) is the work source's business, chosen once at setup. The
checkpoint moves to the window's upper bound only when the listing was proven complete, here in
`ProjectSync._finish`; failed files stay due in the database and do not hold it back.

A project's first listing is a backfill, newest first (`ProjectSync._backfill`): it is listed in
slices of `updated_at` from now back, each proven like any window and recorded as proven at once
(`projects.backfill_until`), so the newest photos of every project come first and a stopped
backfill resumes where it was. Each run of such a project is a turn: the changes since the
checkpoint, then the next older slices within a bounded budget; `ProjectResult.backfill_left`
says whether another turn is needed, and `Engine.take_turns` gives them newest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any, Protocol

from syncer.config import MirrorSettings, SyncSettings
from syncer.listing import (
    BEGINNING,
    FAR_FUTURE,
    FIRST_SLICE,
    MIN_SLICE,
    SLICE_GROWTH,
    SLICE_REACH,
    Lister,
    ListingReport,
    OnPage,
    count_window,
    next_width,
    slice_target,
)
from syncer.mirror.fetch import Fetcher
from syncer.mirror.files import MirrorFS
from syncer.mirror.layout import Layout
from syncer.plan import Change, Decision, decide
from syncer.procore.api import Page, ProcoreApi
from syncer.procore.http import TALLY, ProcoreError, RetryPolicy, Tally
from syncer.procore.models import BadRecord, Photo, Project
from syncer.procore.query import ImageQuery
from syncer.reconcile import Deletions, IdListing, IdPiece, cut_points, first_ids, id_pages, upstream_ids
from syncer.report import Progress
from syncer.result import ProjectResult, Turns
from syncer.store import Store, StoredPhoto, photo_row
from syncer.transfer import Guard, Job, Pool, Recorder, Transfer

TURNS_AT_ONCE = 2
"""Backfill turns of different projects that `Engine.take_turns` runs together."""
TURN_REQUESTS = 50
"""Listing requests after which a backfill turn looks no further back for photos: a long stretch
of empty slices still gives the other projects their turn."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class WorkSource(Protocol):
    """Where the downloads of one project run come from, and where they go when it ends."""

    hands_over_urls: bool
    """Whether the rows of photos to download keep their signed URL, for another process."""

    async def listed(self, downloads: list[Job]) -> None:
        """A recorded page's downloads: queue them, or let the listing wait for the downloads."""

    async def drain(self) -> None:
        """After the listing: feed the pool until nothing of the project is left to download."""

    async def abort(self) -> None:
        """The run failed or was cancelled: stop feeding."""

    async def settle(self) -> None:
        """The run ended, one way or another: record what is done, hand back what is not."""


class Work(Protocol):
    """How this process shares work with others, as the engine sees it; chosen once at setup."""

    @property
    def guard(self) -> Guard:
        """What each transfer asks before it writes."""

    def source(self, pool: Pool, *, seen: set[int], settings: SyncSettings) -> WorkSource:
        """The work source of a project run that lists the project; `seen` fills as it lists."""


@asynccontextmanager
async def transfers(source: WorkSource, pool: Pool) -> AsyncIterator[None]:
    """The life of a run's transfers, in one place: the block feeds the pool (through `source`),
    then the source drains into it and the pool closes; if anything fails or the run is
    cancelled, the source stops feeding and the pool is cancelled. The caller settles the source
    (`WorkSource.settle`) afterwards, in the same shielded step as its own closing, so that a
    second cancellation cannot cut the two apart."""
    try:
        yield
        await source.drain()
        await pool.close()
    except BaseException:
        await source.abort()
        await pool.cancel()
        raise


async def measured(result: ProjectResult, work: Coroutine[Any, Any, None], deadline: float | None) -> None:
    """Run `work`, counting its requests and time into `result`; stop it at `deadline` (event-loop
    time), keeping what is done."""
    clock = time.monotonic()
    tally = Tally()
    counting = TALLY.set(tally)  # inherited by the tasks the work starts
    try:
        async with asyncio.timeout_at(deadline):
            await work
    except TimeoutError:
        result.stopped = "stopped at sync.max_duration; the next run continues from here"
    finally:
        TALLY.reset(counting)
        result.requests = tally.requests
        result.seconds = time.monotonic() - clock


class Engine:
    """The parts every project run uses; `sync_project` runs one project."""

    def __init__(
        self,
        *,
        api: ProcoreApi,
        store: Store,
        fs: MirrorFS,
        fetcher: Fetcher,
        layout: Layout,
        settings: SyncSettings,
        mirror: MirrorSettings,
        progress: Progress,
        work: Work,
        now: Callable[[], datetime] = utcnow,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.api = api
        self.store = store
        self.fs = fs
        self.fetcher = fetcher
        self.layout = layout
        self.settings = settings
        self.mirror = mirror
        self.progress = progress
        self.work = work
        self.now = now
        self.retry = retry or RetryPolicy()
        self.backlog: dict[int, int] = {}
        """Photos each project in backfill still has to list, as far as its counts tell."""
        self.newest: datetime | None = None
        """The newest photo's `created_at` the counts have shown: where the company's photos end,
        from which backfill slices measure how far back they reach."""
        self.claiming = asyncio.Lock()
        """Held from reading a page's stored rows to saving the page: two projects listing the same
        photo at once (Procore shows some in two) would each find it new and fetch it, and it would
        move between their folders. The first to save it holds it (`_held_elsewhere`)."""

    def procore_now(self) -> datetime:
        """Now on Procore's clock, as its `Date` headers tell (ours, before any answer)."""
        return self.now() + timedelta(seconds=self.api.http.pacer.clock_offset)

    def window(self, checkpoint: datetime | None, started: datetime) -> tuple[datetime | None, datetime]:
        """The `updated_at` range a run started at `started` (Procore's clock) lists: from the
        checkpoint less `sync.overlap` (everything without one) to the start, less `sync.lag`."""
        end = (started - timedelta(seconds=self.settings.lag)).replace(microsecond=0)
        if checkpoint is None:
            return None, end
        return min(checkpoint - timedelta(seconds=self.settings.overlap), end), end

    def deadline(self) -> float | None:
        """Event-loop time at which a run started now must stop (sync.max_duration), if any."""
        limit = self.settings.max_duration
        return asyncio.get_running_loop().time() + limit if limit else None

    def pool(self, project: Project, result: ProjectResult) -> Pool:
        """A transfer pool for a run of `project` whose results count into `result`."""
        guard = self.work.guard
        transfer = Transfer(
            api=self.api,
            fetcher=self.fetcher,
            fs=self.fs,
            layout=self.layout,
            guard=guard,
            progress=self.progress,
            retry=self.retry,
            backoff=self.settings.retry_backoff,
            now=self.now,
            project=project,
            result=result,
            recorder=Recorder(self.store, guard),
        )
        return Pool(transfer, concurrency=self.settings.concurrency)

    def query(self, project_id: int) -> ImageQuery:
        """The photos of a project this mirror keeps (`sync.filters`)."""
        return ImageQuery(project_id=project_id, filters=self.settings.filters.to_filters())

    async def count_backlog(self, projects: list[Project]) -> None:
        """Count, one request each, the photos every project in its first backfill has still to
        list, for the progress's total and ETA before the first turn; the turns start from these
        counts instead of asking again. A project Procore cannot count now is counted in its turn."""
        for project in projects:
            checkpoint = await self.store.checkpoint(project.id)
            frontier = await self.store.backfill_until(project.id)
            if checkpoint is not None and frontier is None:
                continue  # its backfill is done
            try:
                end = frontier or self.procore_now()
                page = await count_window(self.api, self.query(project.id), None, end, newest=True)
            except (ProcoreError, BadRecord):
                continue
            self.saw_newest(page)
            if page.total is not None:
                self.backlog[project.id] = page.total
                self.progress.remaining(project.id, page.total)

    def saw_newest(self, page: Page) -> None:
        """Note the photo of a count asked newest first, if it is newer than any seen."""
        with contextlib.suppress(BadRecord, IndexError):
            created = Photo.from_api(page.items[0]).created_at
            if created is not None and (self.newest is None or created > self.newest):
                self.newest = created

    async def take_turns(
        self, projects: list[Project], turns: Turns, *, full: bool, force: bool, deadline: float | None
    ) -> None:
        """Sync each project, then give the projects whose first backfill is not done more turns,
        newest first: always to the one whose photos not listed yet are the newest, so the newest
        photos of every project come before older ones of any. Until every backfill is done, a
        turn fails or `deadline` passes; `turns` holds one result per project, its turns added up.

        `TURNS_AT_ONCE` turns of different projects run together, so one turn's listing overlaps
        another's downloads instead of waiting for them: a turn is small, and its set-up, listing
        and last downloads would otherwise leave the rate budget idle."""
        first = list(projects)  # every project's first turn, in order, whatever the deadline
        waiting: list[Project] = []
        busy: dict[asyncio.Task[ProjectResult], Project] = {}
        loop = asyncio.get_running_loop()

        def pick() -> Project | None:
            if first:
                return first.pop(0)
            if not waiting or (deadline is not None and loop.time() >= deadline):
                return None
            project = max(waiting, key=lambda p: turns.ended[p.id].proven_back_to or FAR_FUTURE)
            waiting.remove(project)
            return project

        try:
            while True:
                while len(busy) < TURNS_AT_ONCE and (project := pick()) is not None:
                    turn = self.sync_project(project, full=full, force=force, deadline=deadline, turns=turns)
                    busy[asyncio.create_task(turn)] = project
                if not busy:
                    return
                done, _ = await asyncio.wait(busy, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    project = busy.pop(task)
                    result = turns.end(task.result())
                    if result.backfill_left and result.proven and not result.stopped:
                        waiting.append(project)
        finally:
            for task in busy:
                task.cancel()
            await asyncio.gather(*busy, return_exceptions=True)

    async def sync_project(
        self,
        project: Project,
        *,
        full: bool = False,
        dry_run: bool = False,
        force: bool = False,
        deadline: float | None = None,
        turns: Turns | None = None,
    ) -> ProjectResult:
        """Sync one project; `deadline` (event-loop time) stops it cleanly, keeping what is done.
        A project whose first backfill is not done gets one turn (`ProjectResult.backfill_left`).
        A one-shot run's `turns` holds the result as it is filled in; the caller ends it there."""
        started = self.now()
        if not dry_run:  # (it makes the state folders; a dry run writes nothing)
            await self.fs.run(self.fs.check_state)
        checkpoint = await self.store.checkpoint(project.id)
        frontier = None if full else await self.store.backfill_until(project.id)
        run = ProjectSync(
            self, project, checkpoint, started, frontier=frontier, dry_run=dry_run, full=full, force=force
        )
        if turns is not None:
            turns.begin(run.result)
        if dry_run:
            await measured(run.result, run.plan_only(), None)
        else:
            await measured(run.result, run.sync(), deadline)
        return run.result


class ProjectSync:
    """One run of one project, and everything that run owns."""

    def __init__(
        self,
        engine: Engine,
        project: Project,
        checkpoint: datetime | None,
        started: datetime,
        *,
        frontier: datetime | None = None,
        dry_run: bool,
        full: bool,
        force: bool,
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.project = project
        self.backfill = not full and (checkpoint is None or frontier is not None)
        """The project's first listing is not done: this run is a turn of its backfill."""
        if dry_run and frontier is not None:
            checkpoint = None  # what a sync would fetch: everything not listed yet, too
        self.checkpoint = checkpoint
        self.frontier = frontier
        """How far back the listing is proven (`projects.backfill_until`)."""
        self.started = started
        start, end = engine.window(checkpoint, engine.procore_now())  # until Procore answers
        self.result = ProjectResult(project, start, end, dry_run=dry_run)
        self.full = full
        self.force = force
        self.seen: set[int] = set()
        """Ids listed so far in this run: a photo listed twice (shifted pages) is decided once."""
        self.spent = 0
        """Listing requests this run sent (pages and counts): what bounds a backfill's turn."""
        self.ids: IdListing | None = None
        """A full run's id listing, once listed: where to list records, and the deletions."""
        self.urls_moved = 0
        """Photos listed in this run whose file URL moved (`Decision.url_moved`)."""

    def query(self) -> ImageQuery:
        return self.engine.query(self.project.id)

    async def plan_only(self) -> None:
        """A dry run: list and decide, count what would change, write nothing."""

        async def on_page(photos: list[Photo]) -> None:
            for d in await self._decisions(photos):
                self.result.changes[d.change] += 1
                if d.download:
                    self.result.would_bytes += d.photo.size or 0

        if await self._open_window():
            await self._list_all(on_page)
        self.engine.progress.listed(self.project.id)
        if self.result.listing_error is None:
            due = [
                d
                for d in await self.store.due_downloads(self.project.id, self.engine.now())
                if d.id not in self.seen
            ]
            self.result.retried = len(due)
            self.result.would_bytes += sum(d.size or 0 for d in due)
            if self.ids is not None and self.result.proven:
                await self._deletions().reconcile(self.ids, self.result, force=self.force)

    async def sync(self) -> None:
        result, engine = self.result, self.engine
        opened = await self._open_window()
        run_id = await self._start_run()
        pool = engine.pool(self.project, result)
        source = engine.work.source(pool, seen=self.seen, settings=engine.settings)

        async def on_page(photos: list[Photo]) -> None:
            async with engine.claiming:
                decisions = await self._decisions(photos)
                await self._save_page(decisions, handing=source.hands_over_urls)
            downloads = []
            for d in decisions:
                result.changes[d.change] += 1
                job = Job(d.photo.id, d.rel_path, d.photo, d.stored, download=d.download)
                if d.relocate:
                    engine.progress.queued(1, 0)
                    await pool.put(job)
                elif d.download:
                    downloads.append(job)
            await source.listed(downloads)

        outcome = "failed"
        try:
            async with transfers(source, pool):
                if opened and self.backfill:
                    await self._backfill(on_page)
                elif opened:
                    await self._list_all(on_page)
                engine.progress.listed(self.project.id)  # this project's part of the total is known
            await self._finish(pool.recorder)
            outcome = "ok" if result.ok else "incomplete"
        except BaseException as exc:
            outcome = (
                "interrupted" if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt) else "failed"
            )
            raise
        finally:
            await asyncio.shield(self._close(run_id, source, outcome))

    async def _start_run(self) -> int:
        """Record the run's start. A cancellation while the row is written still sees the row
        closed, as interrupted: no run is left `running` by a stop."""
        result = self.result
        starting = asyncio.ensure_future(
            self.store.start_run(
                self.project.id,
                started_at=self.started,
                window_start=result.window_start,
                window_end=result.window_end,
                full=self.full,
            )
        )
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            await asyncio.shield(self._close_started(starting))
            raise

    async def _close_started(self, starting: asyncio.Future[int]) -> None:
        await self.store.finish_run(
            await starting,
            finished_at=self.engine.now(),
            outcome="interrupted",
            listed=0,
            new=0,
            changed=0,
            downloaded=0,
            bytes_=0,
            failed=0,
            errors=[],
        )

    async def _decisions(self, photos: list[Photo]) -> list[Decision]:
        fresh = []
        for photo in photos:
            if photo.id not in self.seen:
                self.seen.add(photo.id)
                fresh.append(photo)
        stored = await self.store.stored_photos([p.id for p in fresh])
        if self.full:
            stored = await self._gone_from_disk(stored)
        render = self.engine.layout.render
        name, pid = self.project.name, self.project.id
        held = {p.id for p in fresh if await self._held_elsewhere(stored.get(p.id))}
        self.result.elsewhere += len(held)
        decisions = [
            decide(p, stored.get(p.id), render(p, project_name=name, project_id=pid))
            for p in fresh
            if p.id not in held
        ]
        self.urls_moved += sum(d.url_moved for d in decisions)
        return decisions

    async def _gone_from_disk(self, stored: dict[int, StoredPhoto]) -> dict[int, StoredPhoto]:
        """`stored`, with the files a full run does not find in the mirror (one `stat` each, no
        read) recorded as absent, so they are fetched: exit 0 after `--full` means every file is
        there."""
        recorded = [s.local_path for s in stored.values() if s.local_path is not None]
        if not recorded:
            return stored
        found = await self.engine.fs.run(self.engine.fs.existing, recorded)
        return {
            pid: replace(s, local_path=None) if s.local_path is not None and s.local_path not in found else s
            for pid, s in stored.items()
        }

    async def _held_elsewhere(self, stored: StoredPhoto | None) -> bool:
        """Whether another project still holds this photo: the same id listed in two projects stays
        with the one that first held it, instead of moving between folders on every run. Asked of
        Procore (one request, rare): a photo that moved to this project is taken over."""
        if stored is None or stored.project_id == self.project.id or stored.deleted_at is not None:
            return False
        try:
            await self.engine.api.image(stored.project_id, stored.id, once=True)
        except ProcoreError as exc:
            return exc.status != 404
        except BadRecord:
            return True
        return True

    async def _open_window(self) -> bool:
        """End the window now on Procore's clock: every photo added or edited before the run
        started is in it. A full run, or one in a process that has not heard Procore's clock yet,
        first asks for the project's albums (recorded, unless dry run); an incremental run spends
        no request on them, since each photo's record names its album, so a quiet project costs
        one images page. False when Procore could not be asked; that is the listing error."""
        result, engine = self.result, self.engine
        if self.full or not engine.api.http.pacer.knows_clock:
            try:
                albums = await engine.api.albums(self.project.id)
            except (ProcoreError, BadRecord) as exc:
                result.listing_error = str(exc)
                return False
            if not result.dry_run:
                await self.store.save_albums(self.project.id, albums)
        result.window_start, result.window_end = engine.window(self.checkpoint, engine.procore_now())
        return True

    async def _list(self, on_page: OnPage) -> bool:
        """List the window, handing each page to `on_page`; a failure becomes the listing error
        (and False). Photos edited meanwhile are listed in catch-up rounds, and the window ends
        after them."""
        result, engine = self.result, self.engine
        report = await self._list_range(
            on_page,
            result.window_start,
            result.window_end,
            now=lambda: engine.window(None, engine.procore_now())[1],  # for catch-up rounds
        )
        if report is None:
            return False
        result.window_end = report.end or result.window_end
        return True

    async def _list_range(
        self,
        on_page: OnPage,
        start: datetime | None,
        end: datetime,
        *,
        now: Callable[[], datetime] | None = None,
    ) -> ListingReport | None:
        """List `[start, end]` with proof into the result; None when Procore failed (the listing
        error). The result's `listed` counts every photo this run listed, once."""
        result, engine = self.result, self.engine
        lister = Lister(
            engine.api,
            self.query(),
            per_page=engine.settings.per_page,
            on_page=on_page,
            clock=engine.procore_now,
            budget=engine.settings.listing_budget,
        )
        try:
            report = await lister.run(start, end, now=now)
        except (ProcoreError, BadRecord) as exc:
            result.listing_error = str(exc)
            return None
        finally:
            self.spent += lister.report.requests
            result.listed = len(self.seen)
        result.unproven += report.unproven
        result.listing_notes += report.ties
        result.unreadable += report.unreadable.values()
        return report

    async def _list_all(self, on_page: OnPage) -> None:
        """The run's listings: the window; for a full run (a reconcile), also every id upstream,
        proven in pieces, then records only where the database or the mirror differ from them
        (`IdListing.to_list`): an id the database does not know, a recorded file missing from the
        mirror (one `stat` each), or ids that could not be proven. A project the database knows
        well costs its id pages.

        Plus one page of records in turn (another each day), as a sample: file URLs that moved
        (`plan`) show only in records, and where the sample finds one, every piece is listed, so
        the new URLs are recorded before an edit could pass for a new file.

        Where listing every record costs no more requests than that (a project of a page, or a
        server that gives no more ids than records a page), every record is listed instead, and
        its ids are the id set."""
        if not self.full:
            await self._list(on_page)
            return
        await self._reconcile_pieces(on_page, await self.store.recorded(self.project.id))

    async def _reconcile_pieces(
        self,
        on_page: OnPage,
        known: dict[int, tuple[datetime | None, str | None]],
    ) -> None:
        """A reconcile's listings (`_list_all`): every record, or the window, the ids and the
        records where they differ, whichever costs fewer requests."""
        result, engine = self.result, self.engine
        query, times = self.query(), [moment for moment, _ in known.values()]
        page = engine.settings.per_page
        try:
            if len(known) > page:  # more than a page of records: would its ids cost fewer requests?
                first = await first_ids(engine.api, query)
                page = min(page, first.per_page or len(first.items) or page)  # no more records than ids
                if -(-max(first.total or 0, len(known)) // page) > id_pages(first, len(known)) + 2:
                    self.ids = await upstream_ids(engine.api, query, times, first)
        except (ProcoreError, BadRecord) as exc:
            result.listing_error = str(exc)
            return
        if self.ids is None:  # every record costs no more than the window, ids and a sample
            result.window_start = None
            await self._list_every_record(on_page)
            return
        if not await self._list(on_page):
            return
        paths = {path: moment for moment, path in known.values() if path is not None}
        found = await engine.fs.run(engine.fs.existing, list(paths))
        missing = [moment for path, moment in paths.items() if moment is not None and path not in found]
        pieces = [p for p in self.ids.pieces if p.start <= result.window_end]  # later: the next run's
        wanted = [
            p
            for p in self.ids.to_list({pid: moment for pid, (moment, _) in known.items()}, missing)
            if p in pieces
        ]
        samples = list(pairwise([BEGINNING, *cut_points(times, max(1, int(page * 0.8))), result.window_end]))
        for lo, hi in [(p.start, p.end) for p in wanted] + [samples[engine.now().toordinal() % len(samples)]]:
            if await self._list_range(on_page, lo, min(hi, result.window_end)) is None:
                return
        if self.urls_moved:  # seen in the sample: every record, for its new URL
            for piece in [p for p in pieces if p not in wanted]:
                if await self._list_range(on_page, piece.start, min(piece.end, result.window_end)) is None:
                    return

    async def _list_every_record(self, on_page: OnPage) -> None:
        """List every record up to the window's end; proven, its ids are the id set (a photo edited
        since is looked up before it could count as deleted)."""
        everything = (BEGINNING, self.result.window_end)
        if await self._list_range(on_page, *everything) is not None and self.result.proven:
            self.ids = IdListing([IdPiece(*everything, set(self.seen))])

    async def _backfill(self, on_page: OnPage) -> None:
        """One turn of a first backfill: the changes since the checkpoint, then the next older
        slice that holds photos (a project's first turn: its newest slice), so that each project's
        newer photos come before the older ones of any when turns go to the newest (see
        `Engine.take_turns`). Empty slices are proven by their count alone, and the turn goes on
        past them within `TURN_REQUESTS`. Each proven slice is recorded at once, so a run stopped
        later keeps it. A slice that cannot be proven ends the turn, to be listed again; the rest
        below it is listed too, as one window, so that a server whose counts never add up still
        has every photo it shows mirrored (as a first listing did before it came in slices)."""
        result, engine = self.result, self.engine
        result.backfill_left, result.proven_back_to = True, self.frontier  # until a slice is proven
        target = slice_target(engine.settings.per_page)
        left = result.backfill_photos = engine.backlog.get(self.project.id)
        if self.checkpoint is None:  # the first turn: the newest slice ends the window now
            if left is None and (left := await self._count(None, result.window_end)) is None:
                return
            if (newest := await self._newest_slice(on_page, left, target)) is None:
                await self._rest(on_page, result.window_start)
                return
            (until, width), took = newest, True  # the newest slice is the turn's
            left = max(0, left - len(self.seen))
            self._count_left(left)
        else:
            await self._list(on_page)
            if not result.proven or (until := self.frontier) is None:
                return
            width, took = await self._width(until, target), False
        while until is not None and not took and self.spent < TURN_REQUESTS:
            if left is None and (left := await self._count(None, until)) is None:
                break
            start, count = await self._slice(until, left, width, target)
            if result.listing_error:
                break
            if count != 0:  # an empty slice is proven by its count, and the turn goes on
                before = len(self.seen)
                report = await self._list_range(on_page, start, until)
                if report is None or not report.proven:
                    await self._rest(on_page, start)
                    break
                count, took = len(self.seen) - before, True
            await self.store.set_backfill(self.project.id, start)
            result.proven_back_to = start
            left, width = max(0, left - count), next_width(width, count, target)
            until = start
            self._count_left(left)
        if until is None:
            result.backfill_left, result.backfill_photos = False, None
            self._count_left(0)

    async def _rest(self, on_page: OnPage, below: datetime | None) -> None:
        """After a slice that Procore answered but that could not be proven: list everything
        older than it in one listing, unproven or not (nothing of it is recorded as proven)."""
        if below is not None and self.result.listing_error is None:
            await self._list_range(on_page, None, below)

    async def _newest_slice(
        self, on_page: OnPage, left: int, target: int
    ) -> tuple[datetime | None, timedelta] | None:
        """List a project's newest slice, which ends now (with catch-up rounds, as any window),
        and record it as proven, checkpoint and all; the next slice's end and width, or None if
        it could not be proven."""
        result = self.result
        end = result.window_end
        start, _ = await self._slice(end, left, FIRST_SLICE, target)
        if result.listing_error:
            return None
        result.window_start = start
        await self._list(on_page)
        if not result.proven:
            return None
        await self.store.set_backfill(self.project.id, start, checkpoint=result.window_end)
        result.checkpoint_advanced, result.proven_back_to = True, start
        return start, next_width(end - start, len(self.seen), target) if start else FIRST_SLICE

    def _count_left(self, left: int | None) -> None:
        """Tell the result, the engine and the progress how many photos are still to be listed."""
        if left is not None:
            self.result.backfill_photos = self.engine.backlog[self.project.id] = left
            self.engine.progress.remaining(self.project.id, left)

    async def _count(self, start: datetime | None, end: datetime) -> int | None:
        """`Total` of `[start, end]` (one request); None when Procore failed (the listing error)
        or gave no `Total` (then the backfill's slices are sized blind: as if it held a slice)."""
        self.spent += 1
        try:
            page = await count_window(self.engine.api, self.query(), start, end, newest=start is None)
        except (ProcoreError, BadRecord) as exc:
            self.result.listing_error = str(exc)
            return None
        self.engine.saw_newest(page)
        if page.total is None:  # sized blind, and listed: only a listing can prove it
            return slice_target(self.engine.settings.per_page)
        if start is None:
            self._count_left(page.total)
        return page.total if page.total or not page.items else 1  # 1: listed to find out

    async def _slice(
        self, until: datetime, left: int, width: timedelta, target: int
    ) -> tuple[datetime | None, int]:
        """The start of the next slice down from `until` (None: from the beginning, the last one)
        and the photos it holds (a count each try; 0: Procore proved it empty). It is `width`
        wide, but reaches back at most `SLICE_REACH` times as far as the backfill has come from
        the company's newest photo, so turns given to the newest keep the whole company newest
        first whatever each project's density (such a slice holds less than `target` photos by
        that density, and is listed without a count: its listing costs what the count would);
        and it narrows while it holds over twice `target` photos. A slice that holds all the
        photos left is the last one; -1 photos: not counted."""
        newest = min(self.engine.newest or self.result.window_end, self.result.window_end)
        if until > newest:  # no photo of the company is up there to keep in order
            reach = until - newest + FIRST_SLICE
        else:
            reach = max(FIRST_SLICE, (newest - until) * SLICE_REACH)
        if width > reach and left > 0 and until - reach > BEGINNING:
            return until - reach, -1  # less than a slice's worth by the density so far: no count
        width = min(width, until - BEGINNING)
        while left > 0 and until - width > BEGINNING:
            start = until - width
            count = await self._count(start, until)
            if count is None:
                return start, 0
            if count >= left:
                break
            if count <= 2 * target or width <= MIN_SLICE:
                return start, count
            width = max(MIN_SLICE, width * (target / count))
        return None, -1  # the rest: its count is only the estimate `left`

    async def _width(self, until: datetime, target: int) -> timedelta:
        """The first slice's width in a later turn: as wide as the density of what the backfill
        listed so far fills with `target` photos (the database counts them, no request)."""
        assert self.checkpoint is not None
        span = max(self.checkpoint - until, MIN_SLICE)
        listed = await self.store.photos_since(self.project.id, until)
        return next_width(span, listed, target) if listed else span * SLICE_GROWTH

    async def _save_page(self, decisions: list[Decision], *, handing: bool) -> None:
        """Record a listed page in one transaction. `handing`: the signed URL of each photo to
        download goes along, for whichever worker claims it."""
        self.engine.work.guard.check()  # a worker that lost its lease must not write what it listed
        now = self.engine.now()
        await self.store.save_photos(
            [
                photo_row(
                    d.photo,
                    project_id=self.project.id,
                    rel_path=d.rel_path,
                    now=now,
                    fetch_url=d.photo.url if handing and d.download else None,
                )
                for d in decisions
                if d.change is not Change.STALE
            ],
            moved_urls=[d.photo.id for d in decisions if d.url_moved],
        )

    def _deletions(self) -> Deletions:
        engine = self.engine
        return Deletions(
            engine.api, self.store, engine.fs, engine.mirror, engine.settings.concurrency, engine.now
        )

    async def _finish(self, recorder: Recorder) -> None:
        """After the transfers: count what still waits, find deletions, move the checkpoint."""
        result = self.result
        await recorder.flush()
        result.waiting = await self.store.failing_count(self.project.id) - len(result.failures)
        if result.proven:
            if self.ids is not None:
                await self._deletions().reconcile(self.ids, result, force=self.force)
            await self.store.set_checkpoint(self.project.id, result.window_end, full=self.full)
            result.checkpoint_advanced = True

    async def _close(self, run_id: int, source: WorkSource, outcome: str) -> None:
        """Settle the source, then close the run's row, whatever the settling met (a flush the
        stop had cancelled): no run is left `running`."""
        try:
            await source.settle()
        finally:
            await self._record_end(run_id, outcome)

    async def _record_end(self, run_id: int, outcome: str) -> None:
        result = self.result
        errors = [f"{pid} {path}: {err}" for pid, path, err in result.failures[:100]]
        if result.listing_error:
            errors.insert(0, f"listing: {result.listing_error}")
        errors[:0] = [f"listing not proven: {u}" for u in result.unproven[:20]]
        errors[:0] = [f"unreadable record: {u}" for u in result.unreadable[:20]]
        await self.store.finish_run(
            run_id,
            finished_at=self.engine.now(),
            outcome=outcome,
            listed=result.listed,
            new=result.changes[Change.NEW],
            changed=result.changes[Change.REPLACED]
            + result.changes[Change.MOVED]
            + result.changes[Change.METADATA],
            downloaded=result.downloaded,
            bytes_=result.bytes,
            failed=len(result.failures),
            errors=errors,
        )
