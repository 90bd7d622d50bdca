"""Syncing one project: list the window with proof, record each page, transfer in parallel.

Listing and transferring overlap: each page is recorded in the database and its work queued at
once into a bounded pool of tasks (`transfer.py`), so a million-photo project never holds a
million tasks. With several workers on PostgreSQL the pool is fed from the database instead:
downloads are claimed in batches, by whichever worker has room. The checkpoint moves to the
window's upper bound only when the listing was proven complete; failed files stay due in the
database and do not hold it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from syncer.config import MirrorSettings, SyncSettings
from syncer.listing import Lister
from syncer.membership import LeaseLost, Membership
from syncer.mirror.fetch import Fetcher, FetchError
from syncer.mirror.files import TRASH_DIR, MirrorFS, UnsafePath
from syncer.mirror.layout import Layout
from syncer.mirror.sidecar import sidecar_bytes, sidecar_path
from syncer.plan import Change, Decision, decide, photo_row
from syncer.procore.api import ProcoreApi
from syncer.procore.auth import AuthError
from syncer.procore.http import TALLY, ProcoreError, RetryPolicy, Tally
from syncer.procore.models import BadRecord, Photo, Project
from syncer.procore.query import ImageQuery
from syncer.reconcile import upstream_ids
from syncer.report import Progress
from syncer.store import Downloaded, Failed, Relocated, Store, Vanished
from syncer.transfer import Job, Pool, Recorder

log = logging.getLogger(__name__)

RETRY_MAX = timedelta(days=1)
POLL = 0.2
"""Seconds between looks at the database for work, when several workers share it."""
WRITING_ELSEWHERE = "another process is writing this photo (a worker that lost its lease?); tried again later"
REPEATED = "due again after this run already tried it (Procore may serve another file than it lists)"


def utcnow() -> datetime:
    return datetime.now(UTC)


def retry_at(now: datetime, attempts: int, base: float) -> datetime:
    """When a failed photo is next due: `base` (sync.retry_backoff), then doubling, at most a day."""
    return now + min(RETRY_MAX, timedelta(seconds=base) * (1 << min(attempts, 16)))


@dataclass
class ProjectResult:
    project: Project
    window_start: datetime | None
    window_end: datetime
    dry_run: bool = False
    listed: int = 0
    changes: Counter[Change] = field(default_factory=Counter)
    retried: int = 0
    """Photos due from earlier runs (failed before, or left by an interrupted run)."""
    downloaded: int = 0
    bytes: int = 0
    relocated: int = 0
    vanished: int = 0
    """Photos deleted in Procore between listing and download; marked deleted, not failed."""
    failures: list[tuple[int, str, str]] = field(default_factory=list)
    """(photo id, mirror path, error) of each photo that could not be mirrored."""
    listing_error: str | None = None
    unproven: list[str] = field(default_factory=list)
    checkpoint_advanced: bool = False
    deleted_upstream: int = 0
    """Photos a full run found gone from Procore and marked deleted."""
    trashed: int = 0
    removed: int = 0
    deletions_blocked: str | None = None
    """Why deletions were not applied although the run found some (the max_delete cap)."""
    deletions_unchecked: str | None = None
    """Why a full run could not tell which photos are gone (an id listing it could not prove)."""
    stopped: str | None = None
    """Why the run stopped before finishing (its time limit); the next run continues."""
    waiting: int = 0
    """Photos that failed in earlier runs and wait for their retry time: the mirror lacks them."""
    requests: int = 0
    seconds: float = 0.0
    helped: bool = False
    """Another worker listed the project; this one only downloaded its share."""

    def absorb(self, earlier: ProjectResult | None) -> ProjectResult:
        """This result with the transfers of an `earlier` one for the same project added in (a
        worker that helped with a project, then took it over)."""
        if earlier is not None:
            self.retried += earlier.retried
            self.downloaded += earlier.downloaded
            self.bytes += earlier.bytes
            self.relocated += earlier.relocated
            self.vanished += earlier.vanished
            self.failures[:0] = earlier.failures
            self.requests += earlier.requests
            self.seconds += earlier.seconds
        return self

    @property
    def ok(self) -> bool:
        return (
            not self.failures
            and self.listing_error is None
            and not self.unproven
            and not self.deletions_blocked
            and not self.stopped
            and not self.waiting
        )


class SyncEngine:
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
        now: Callable[[], datetime] = utcnow,
        retry: RetryPolicy | None = None,
        membership: Membership | None = None,
    ) -> None:
        self.api = api
        self.store = store
        self.fs = fs
        self.fetcher = fetcher
        self.layout = layout
        self.settings = settings
        self.mirror = mirror
        self.progress = progress
        self.now = now
        self.retry = retry or RetryPolicy()
        self.membership = membership
        """Set when several workers share a PostgreSQL database: downloads are then claimed
        from the database instead of queued straight from the listing."""

    def _pool(self, project: Project, result: ProjectResult) -> Pool:
        return Pool(
            self.store,
            concurrency=self.settings.concurrency,
            work=lambda pool: self._worker(pool, result, project),
            membership=self.membership,
        )

    def window(self, checkpoint: datetime | None, started: datetime) -> tuple[datetime | None, datetime]:
        end = (started - timedelta(seconds=self.settings.lag)).replace(microsecond=0)
        if checkpoint is None:
            return None, end
        return min(checkpoint - timedelta(seconds=self.settings.overlap), end), end

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
        checkpoint = None if full else await self.store.checkpoint(project.id)
        start, end = self.window(checkpoint, started)
        result = ProjectResult(project=project, window_start=start, window_end=end, dry_run=dry_run)
        if dry_run:
            await self._measured(result, self._plan_only(project, result), None)
        else:
            await self._measured(
                result, self._sync(project, result, full=full, force=force, started=started), deadline
            )
        return result

    async def help_project(self, project: Project, *, deadline: float | None = None) -> ProjectResult:
        """Download the project's due photos while another worker lists it, until none is left
        (several workers only). Returns once that worker let go of the project."""
        member = self.membership
        assert member is not None
        result = ProjectResult(project=project, window_start=None, window_end=self.now(), helped=True)
        member.doing[project.id] = "downloading"

        async def listing_over() -> bool:
            return await member.shared.lease_holder(project.id) is None

        async def help_() -> None:
            pool = self._pool(project, result)
            try:
                await self._feed(pool, project, result, None, listing_over)
                await pool.close()
            except BaseException:
                await pool.cancel()
                raise
            finally:
                await asyncio.shield(pool.settle(project.id, lister=False))

        try:
            await self._measured(result, help_(), deadline)
        finally:
            member.doing.pop(project.id, None)
        return result

    @staticmethod
    async def _measured(
        result: ProjectResult, work: Coroutine[Any, Any, None], deadline: float | None
    ) -> None:
        """Run `work`, counting its requests and time into `result`; stop it at `deadline`."""
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

    def _render(self, photo: Photo, project: Project) -> str:
        return self.layout.render(photo, project_name=project.name, project_id=project.id)

    async def _decisions(self, photos: list[Photo], project: Project, seen: set[int]) -> list[Decision]:
        fresh = []
        for photo in photos:
            if photo.id not in seen:
                seen.add(photo.id)
                fresh.append(photo)
        stored = await self.store.stored_photos([p.id for p in fresh])
        return [decide(p, stored.get(p.id), self._render(p, project)) for p in fresh]

    def _query(self, project: Project) -> ImageQuery:
        return ImageQuery(project_id=project.id, filters=self.settings.filters.to_filters())

    async def _plan_only(self, project: Project, result: ProjectResult) -> None:
        seen: set[int] = set()

        async def on_page(photos: list[Photo]) -> None:
            for d in await self._decisions(photos, project, seen):
                result.changes[d.change] += 1

        await self._list(project, result, on_page)
        if result.listing_error is None:
            due = await self.store.due_downloads(project.id, self.now())
            result.retried = sum(1 for d in due if d.id not in seen)

    async def _list(
        self, project: Project, result: ProjectResult, on_page: Callable[[list[Photo]], Awaitable[None]]
    ) -> None:
        """List the window, handing each page to `on_page`; a failure becomes the listing error."""
        try:
            if not result.dry_run:
                await self.store.save_albums(project.id, await self.api.albums(project.id))
            report = await Lister(
                self.api, self._query(project), per_page=self.settings.per_page, on_page=on_page
            ).run(result.window_start, result.window_end)
            result.listed, result.unproven = len(report.seen), report.unproven
        except (ProcoreError, BadRecord) as exc:
            result.listing_error = str(exc)

    async def _save_page(self, decisions: list[Decision], project: Project) -> None:
        """Record a listed page in one transaction. With several workers, the signed URL of each
        photo to download goes along, for whichever worker claims it."""
        if self.membership is not None:
            self.membership.check()  # a worker that lost its lease must not write what it listed
        now, handing = self.now(), self.membership is not None
        await self.store.save_photos(
            [
                photo_row(
                    d.photo,
                    project_id=project.id,
                    rel_path=d.rel_path,
                    now=now,
                    fetch_url=d.photo.url if handing and d.download else None,
                )
                for d in decisions
                if d.change is not Change.STALE
            ]
        )

    async def _sync(
        self, project: Project, result: ProjectResult, *, full: bool, force: bool, started: datetime
    ) -> None:
        run_id = await self.store.start_run(
            project.id,
            started_at=started,
            window_start=result.window_start,
            window_end=result.window_end,
            full=full,
        )
        member = self.membership
        pool = self._pool(project, result)
        seen: set[int] = set()
        queued: set[int] = set()
        listing_done = asyncio.Event()
        feeder: asyncio.Task[None] | None = None
        # A page's worth ahead of each worker's queue, so the downloads never wait for the next page.
        backlog = (self.settings.per_page + self.settings.concurrency * 4) * (
            await member.shared.live_count() if member else 1
        )

        async def enqueue(job: Job, size: int | None) -> None:
            queued.add(job.photo_id)
            self.progress.queued(1, size or 0)
            await pool.put(job)

        async def on_page(photos: list[Photo]) -> None:
            decisions = await self._decisions(photos, project, seen)
            await self._save_page(decisions, project)
            for d in decisions:
                result.changes[d.change] += 1
                if d.relocate or (d.download and member is None):
                    job = Job(d.photo.id, d.rel_path, d.photo, d.stored, download=d.download)
                    await enqueue(job, d.photo.size if d.download else 0)
            if feeder is not None:
                await self._hold_listing(project, feeder, backlog)

        async def listing_over() -> bool:
            return listing_done.is_set()

        outcome = "failed"
        try:
            if member is not None:
                member.doing[project.id] = "listing"
                feeder = asyncio.create_task(self._feed(pool, project, result, seen, listing_over))
            await self._list(project, result, on_page)
            if feeder is None:
                for due in await self.store.due_downloads(project.id, self.now()):
                    if due.id not in queued:
                        result.retried += 1
                        await enqueue(
                            Job(due.id, due.rel_path, None, None, download=True, attempts=due.attempts),
                            due.size,
                        )
            else:
                assert member is not None
                member.doing[project.id] = "downloading"
                listing_done.set()
                await feeder
            await pool.close()
            await self._finish(project, result, pool.recorder, full=full, force=force)
            outcome = "ok" if result.ok else "incomplete"
        except BaseException as exc:
            outcome = (
                "interrupted" if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt) else "failed"
            )
            if feeder is not None:
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)
            await pool.cancel()
            raise
        finally:
            await asyncio.shield(self._close_run(run_id, pool, result, outcome))

    async def _feed(
        self,
        pool: Pool,
        project: Project,
        result: ProjectResult,
        seen: set[int] | None,
        listing_over: Callable[[], Awaitable[bool]],
    ) -> None:
        """Claim the project's due photos in batches into the pool until none is left anywhere:
        the listing is over, nothing is claimable, and no live worker holds one still in flight
        (a worker that dies gives its claims back, and they are claimed here)."""
        member = self.membership
        assert member is not None
        batch = self.settings.concurrency
        claimed: set[int] = set()
        while True:
            member.check()
            if pool.fatal:
                raise pool.fatal[0]
            if pool.queue.qsize() >= batch:
                await asyncio.sleep(POLL / 10)
                continue
            over = await listing_over()  # asked before claiming, so no row listed after it is missed
            claims = await member.shared.claim(project.id, batch, self.now())
            if not claims and pool.unfinished == 0:
                await pool.recorder.flush()  # idle here: let the other workers see what is done
                if over and not await member.shared.held_due(project.id):
                    # A claim that expired since the first try is claimable now; else all is done.
                    claims = await member.shared.claim(project.id, batch, self.now())
                    if not claims:
                        return
            if not claims:
                await asyncio.sleep(POLL)
                continue
            for claim in claims:
                job = Job(claim.id, claim.rel_path, claim.photo, claim.stored, True, claim.attempts)
                if claim.id in claimed:
                    # Each photo is tried once per run, as without PostgreSQL. Due again after a
                    # download here means Procore serves another file than it lists; fetching it
                    # again at once could go on for ever.
                    if all(failed_id != claim.id for failed_id, _, _ in result.failures):
                        await self._fail(job, REPEATED, pool.recorder, result)
                    else:
                        await pool.recorder.add(Failed(claim.id, REPEATED, self._retry_at(job)))
                    continue
                claimed.add(claim.id)
                if seen is not None and claim.id not in seen:
                    result.retried += 1
                self.progress.queued(1, claim.size or 0)
                await pool.put(job)

    async def _hold_listing(self, project: Project, feeder: asyncio.Task[None], backlog: int) -> None:
        """Let the listing run only `backlog` photos ahead of the downloads, so the signed URLs it
        hands over are still fresh when a worker claims them."""
        member = self.membership
        assert member is not None
        while await member.shared.unclaimed_due(project.id, self.now()) > backlog:
            if feeder.done():
                feeder.result()  # its error, if it failed
                return
            await asyncio.sleep(POLL)

    async def _finish(
        self, project: Project, result: ProjectResult, recorder: Recorder, *, full: bool, force: bool
    ) -> None:
        """After the transfers: count what still waits, find deletions, move the checkpoint."""
        await recorder.flush()
        result.waiting = await self.store.failing_count(project.id) - len(result.failures)
        if result.listing_error is None and not result.unproven:
            if full:
                await self._reconcile(project, result, force=force)
            await self.store.set_checkpoint(project.id, result.window_end, full=full)
            result.checkpoint_advanced = True

    async def _reconcile(self, project: Project, result: ProjectResult, *, force: bool) -> None:
        """Mark photos gone from Procore as deleted, then apply `mirror.on_delete` to their files.

        Runs only after a proven listing, on a proven id set, within the `max_delete` cap, and
        each deletion is confirmed by a direct lookup."""
        listing = await upstream_ids(self.api, self._query(project), await self.store.live_times(project.id))
        if listing.ids is None:
            result.deletions_unchecked = listing.problem
            return
        known = await self.store.live_ids(project.id)
        gone = sorted(known - listing.ids)
        cap = self.mirror.delete_cap(len(known))
        if len(gone) > cap and not force:
            result.deletions_blocked = (
                f"{len(gone)} of {len(known)} photos are gone from Procore, more than mirror.max_delete "
                f"({self.mirror.max_delete}, {cap} photos) allows; none was marked deleted. "
                "If that is right, run again with --force"
            )
            return
        confirmed = await self._confirm_gone(project, gone)
        await self.store.mark_deleted(confirmed, self.now())
        result.deleted_upstream = len(confirmed)
        if self.mirror.on_delete != "keep":
            await self._apply_on_delete(project, result)

    async def _confirm_gone(self, project: Project, candidates: list[int]) -> list[int]:
        """The candidates Procore answers 404 for when asked one by one.

        A photo can be missing from the id listing and still exist: it stopped matching
        `sync.filters`, or it has no `updated_at` for a range to match. Only a 404 is a deletion."""
        limit = asyncio.Semaphore(self.settings.concurrency)

        async def gone(photo_id: int) -> bool:
            async with limit:
                try:
                    await self.api.image(project.id, photo_id)
                except ProcoreError as exc:
                    return exc.status == 404
                except BadRecord:
                    return False
                return False

        answers = await asyncio.gather(*(gone(i) for i in candidates))
        return [i for i, is_gone in zip(candidates, answers, strict=True) if is_gone]

    async def _apply_on_delete(self, project: Project, result: ProjectResult) -> None:
        files = await self.store.deleted_files(project.id)
        if self.mirror.on_delete == "trash":
            day = self.now().strftime("%Y-%m-%d")
            moved: list[tuple[int, str]] = []
            for photo_id, path in files:
                target = f"{TRASH_DIR}/{day}/{path}"
                for source, dest in ((path, target), (sidecar_path(path), sidecar_path(target))):
                    with contextlib.suppress(FileNotFoundError):
                        await self.fs.move(source, dest)
                moved.append((photo_id, target))
            await self.store.record_trashed(moved)
            result.trashed = len(moved)
        else:
            for _, path in files:
                await self.fs.remove(path)
                await self.fs.remove(sidecar_path(path))
            await self.store.record_removed([photo_id for photo_id, _ in files])
            result.removed = len(files)
        log.info(
            "project %s: %s %d files of photos deleted in Procore",
            project.id,
            "moved to the trash" if self.mirror.on_delete == "trash" else "removed",
            len(files),
        )

    async def _close_run(self, run_id: int, pool: Pool, result: ProjectResult, outcome: str) -> None:
        await pool.settle(result.project.id, lister=True)
        errors = [f"{pid} {path}: {err}" for pid, path, err in result.failures[:100]]
        if result.listing_error:
            errors.insert(0, f"listing: {result.listing_error}")
        errors[:0] = [f"listing not proven: {u}" for u in result.unproven[:20]]
        await self.store.finish_run(
            run_id,
            finished_at=self.now(),
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

    async def _worker(self, pool: Pool, result: ProjectResult, project: Project) -> None:
        while (job := await pool.queue.get()) is not None:
            try:
                if pool.fatal:
                    continue
                if self.membership is not None:
                    self.membership.check()
                if job.download:
                    await self._download(job, pool.recorder, result, project)
                else:
                    await self._relocate(job, pool.recorder, result, project)
            except (AuthError, LeaseLost) as exc:
                pool.fatal.append(exc)
            except (OSError, UnsafePath) as exc:
                await self._fail(job, f"{type(exc).__name__}: {exc}", pool.recorder, result)
            finally:
                pool.unfinished -= 1
                self.progress.finished()

    async def _fail(self, job: Job, error: str, recorder: Recorder, result: ProjectResult) -> None:
        log.warning("photo %s (%s) failed: %s", job.photo_id, job.rel_path, error)
        result.failures.append((job.photo_id, job.rel_path, error))
        await recorder.add(Failed(job.photo_id, error, self._retry_at(job)))

    def _retry_at(self, job: Job) -> datetime:
        return retry_at(self.now(), job.attempts, self.settings.retry_backoff)

    async def _download(self, job: Job, recorder: Recorder, result: ProjectResult, project: Project) -> None:
        if self.membership is None:  # the project's file lock keeps other processes away
            await self._fetch_and_install(job, recorder, result, project)
            return
        async with self.fs.writing(str(job.photo_id)) as alone:
            if alone:
                await self._fetch_and_install(job, recorder, result, project)
                return
        await self._fail(job, WRITING_ELSEWHERE, recorder, result)

    async def _fetch_and_install(
        self, job: Job, recorder: Recorder, result: ProjectResult, project: Project
    ) -> None:
        photo, error = job.photo, "not attempted"
        for attempt in range(self.retry.attempts):
            try:
                if photo is None or photo.url is None:
                    photo = await self.api.image(project.id, job.photo_id)
                if photo.url is None:
                    raise FetchError("Procore gave no download URL for this photo", retry=False)
                what = f"photo {photo.id}"
                fetched = await self.fetcher.fetch(
                    photo.url,
                    expected_size=photo.size,
                    part_name=f"{photo.id}.part",
                    file_key=photo.file_key,
                    what=what,
                )
                self.progress.received(fetched.size)
                if self.membership is not None:
                    self.membership.check()  # after a long download: is the claim still ours?
                rel = self._render(photo, project)
                when = photo.when
                await self.fs.install(
                    rel,
                    tmp=fetched.tmp,
                    data=fetched.data,
                    mtime=when.timestamp() if when else None,
                    sidecar=(sidecar_path(rel), self._sidecar(photo, project, fetched.size, fetched.sha256)),
                )
                old = job.stored.local_path if job.stored else None
                if old and old != rel:
                    await self.fs.remove(old)
                    await self.fs.remove(sidecar_path(old))
                result.downloaded += 1
                result.bytes += fetched.size
                await recorder.add(
                    Downloaded(
                        id=photo.id,
                        local_path=rel,
                        file_key=photo.file_key,
                        size=fetched.size,
                        sha256=fetched.sha256,
                        sidecar_of=photo.updated_at,
                        at=self.now(),
                    )
                )
                return
            except FetchError as exc:
                error = str(exc)
                if not exc.retry:
                    break
                if exc.refresh:
                    photo = None  # a fresh record brings a freshly signed URL; no need to wait
                else:
                    await asyncio.sleep(exc.wait if exc.wait is not None else self.retry.backoff(attempt))
            except (ProcoreError, BadRecord) as exc:
                error = str(exc)
                if isinstance(exc, ProcoreError) and exc.status == 404:
                    log.info("photo %s was deleted in Procore after it was listed", job.photo_id)
                    result.vanished += 1
                    await recorder.add(Vanished(job.photo_id, self.now()))
                    return
                await asyncio.sleep(self.retry.backoff(attempt))
        await self._fail(job, error, recorder, result)

    @staticmethod
    def _sidecar(photo: Photo, project: Project, size: int | None, sha256: str | None) -> bytes:
        return sidecar_bytes(
            raw=photo.raw, project_id=project.id, project_name=project.name, size=size, sha256=sha256
        )

    async def _relocate(self, job: Job, recorder: Recorder, result: ProjectResult, project: Project) -> None:
        stored, photo = job.stored, job.photo
        assert stored is not None and photo is not None
        source = stored.local_path or stored.trashed_path  # in place, or in the trash to restore
        assert source is not None
        try:
            if source != job.rel_path:
                await self.fs.move(source, job.rel_path)
                await self.fs.remove(sidecar_path(source))
        except FileNotFoundError:
            log.warning("photo %s is missing from the mirror at %s; downloading it again", photo.id, source)
            await self._download(replace(job, download=True, stored=None), recorder, result, project)
            return
        await self.fs.write_durably(
            sidecar_path(job.rel_path), self._sidecar(photo, project, stored.local_size, stored.sha256)
        )
        result.relocated += 1
        await recorder.add(Relocated(photo.id, job.rel_path, photo.updated_at))
