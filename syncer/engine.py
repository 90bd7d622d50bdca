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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any, Protocol

from syncer.config import MirrorSettings, SyncSettings
from syncer.listing import BEGINNING, Lister
from syncer.mirror.fetch import Fetcher
from syncer.mirror.files import MirrorFS
from syncer.mirror.layout import Layout
from syncer.plan import Change, Decision, decide
from syncer.procore.api import ProcoreApi
from syncer.procore.http import TALLY, ProcoreError, RetryPolicy, Tally
from syncer.procore.models import BadRecord, Photo, Project
from syncer.procore.query import ImageQuery
from syncer.reconcile import Deletions, IdListing, IdPiece, cut_points, first_ids, id_pages, upstream_ids
from syncer.report import Progress
from syncer.result import ProjectResult
from syncer.store import Store, StoredPhoto, photo_row
from syncer.transfer import Guard, Job, Pool, Recorder, Transfer


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
    then the source drains into it and the pool closes. If anything fails or the run is
    cancelled, the source stops feeding and the pool is cancelled; either way the source settles
    (records what is done, hands back what is not), even during a cancellation."""
    try:
        yield
        await source.drain()
        await pool.close()
    except BaseException:
        await source.abort()
        await pool.cancel()
        raise
    finally:
        await asyncio.shield(source.settle())


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

    async def sync_project(
        self,
        project: Project,
        *,
        full: bool = False,
        dry_run: bool = False,
        force: bool = False,
        deadline: float | None = None,
    ) -> ProjectResult:
        """Sync one project; `deadline` (event-loop time) stops it cleanly, keeping what is done."""
        started = self.now()
        await self.fs.run(self.fs.check_state)
        checkpoint = await self.store.checkpoint(project.id)
        run = ProjectSync(self, project, checkpoint, started, dry_run=dry_run, full=full, force=force)
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
        dry_run: bool,
        full: bool,
        force: bool,
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.project = project
        self.checkpoint = checkpoint
        self.started = started
        start, end = engine.window(checkpoint, engine.procore_now())  # until Procore answers
        self.result = ProjectResult(project, start, end, dry_run=dry_run)
        self.full = full
        self.force = force
        self.seen: set[int] = set()
        """Ids listed so far in this run: a photo listed twice (shifted pages) is decided once."""
        self.listed: set[int] = set()
        """Ids the listings of this run reported, the stand-ins of unreadable records included."""
        self.ids: IdListing | None = None
        """A full run's id listing, once listed: where to list records, and the deletions."""
        self.urls_moved = 0
        """Photos listed in this run whose file URL moved (`Decision.url_moved`)."""

    def query(self) -> ImageQuery:
        return ImageQuery(project_id=self.project.id, filters=self.engine.settings.filters.to_filters())

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
        run_id = await self.store.start_run(
            self.project.id,
            started_at=self.started,
            window_start=result.window_start,
            window_end=result.window_end,
            full=self.full,
        )
        pool = engine.pool(self.project, result)
        source = engine.work.source(pool, seen=self.seen, settings=engine.settings)

        async def on_page(photos: list[Photo]) -> None:
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
                if opened:
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
            await asyncio.shield(self._close(run_id, outcome))

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

    async def _list(
        self,
        on_page: Callable[[list[Photo]], Awaitable[None]],
        piece: tuple[datetime, datetime] | None = None,
    ) -> bool:
        """List the window (or a `piece` of `updated_at` for a full run), handing each page to
        `on_page`; a failure becomes the listing error (and False)."""
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
            if piece is None:
                report = await lister.run(
                    result.window_start,
                    result.window_end,
                    now=lambda: engine.window(None, engine.procore_now())[1],  # for catch-up rounds
                )
                result.window_end = report.end or result.window_end
            else:
                report = await lister.run(*piece)
        except (ProcoreError, BadRecord) as exc:
            result.listing_error = str(exc)
            return False
        self.listed |= report.seen
        result.listed = len(self.listed)
        result.unproven += report.unproven
        result.listing_notes += report.ties
        result.unreadable += list(report.unreadable.values())
        return True

    async def _list_all(self, on_page: Callable[[list[Photo]], Awaitable[None]]) -> None:
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
        on_page: Callable[[list[Photo]], Awaitable[None]],
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
            if not await self._list(on_page, (lo, min(hi, result.window_end))):
                return
        if self.urls_moved:  # seen in the sample: every record, for its new URL
            for piece in [p for p in pieces if p not in wanted]:
                if not await self._list(on_page, (piece.start, min(piece.end, result.window_end))):
                    return

    async def _list_every_record(self, on_page: Callable[[list[Photo]], Awaitable[None]]) -> None:
        """List every record up to the window's end; proven, its ids are the id set (a photo edited
        since is looked up before it could count as deleted)."""
        everything = (BEGINNING, self.result.window_end)
        if await self._list(on_page, everything) and self.result.proven:
            self.ids = IdListing([IdPiece(*everything, {i for i in self.listed if i > 0})])

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

    async def _close(self, run_id: int, outcome: str) -> None:
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
