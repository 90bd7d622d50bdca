"""Deletions: which photos are gone from Procore, proven, and what happens to their files.

Only a full run that proved its listing gets here. `ids_only` is cheap but pages the same
unstable order as every listing. So the id set is listed in pieces of `updated_at` cut from the
database's own knowledge of the project: each piece holds about one page of known photos, and a
piece counts only when its distinct ids match `Total`. Pieces go oldest first and the open-ended
newest piece last: a photo edited while this runs moves into that last piece, which is listed
after the move, so no photo can fall between two pieces. A piece that never proves itself makes
the whole answer `None`, and nothing is deleted.

The same pieces tell a full run where to list records at all (`IdListing.to_list`): only where
an id is unknown to the database, a recorded file is missing from the mirror, or the ids could not
be proven. A reconcile of a project the database knows well costs its id pages, not its records.

Then the photos known but not upstream are confirmed one by one (only a 404 is a deletion), the
`mirror.max_delete` cap is applied, and `mirror.on_delete` decides their files: keep, trash or
delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import pairwise

from syncer.config import MirrorSettings
from syncer.listing import BEGINNING, FAR_FUTURE, Pass, paged_pass, span
from syncer.mirror.files import TRASH_DIR, MirrorFS, UnsafePath
from syncer.procore.api import Page, ProcoreApi
from syncer.procore.http import ProcoreError
from syncer.procore.models import BadRecord, Project
from syncer.procore.query import ImageQuery, Range
from syncer.result import ProjectResult
from syncer.store import Store
from syncer.words import plural

log = logging.getLogger(__name__)

IDS_PER_PAGE = 2000
"""Ids asked per page: Procore advises at most 2,000 a page; an id costs a few bytes, a record a
kilobyte, so where it gives more ids than records a page, a reconcile costs fewer requests."""
PASSES = 3


@dataclass(eq=False)  # pieces are told apart by identity, not by their (large) id sets
class IdPiece:
    start: datetime
    end: datetime
    ids: set[int] | None
    """The ids updated in [start, end], or None when they could not be proven."""

    def holds(self, moment: datetime) -> bool:
        return self.start <= moment <= self.end


@dataclass
class IdListing:
    pieces: list[IdPiece]

    @property
    def ids(self) -> set[int] | None:
        """Every id upstream, or None when some piece could not be proven."""
        if any(piece.ids is None for piece in self.pieces):
            return None
        return set().union(*(piece.ids or set() for piece in self.pieces))

    @property
    def problem(self) -> str | None:
        for piece in self.pieces:
            if piece.ids is None:
                return f"the ids updated {span(piece.start, piece.end)} did not match Total"
        return None

    def to_list(self, known: Mapping[int, datetime | None], missing: Sequence[datetime]) -> list[IdPiece]:
        """The pieces whose records a reconcile lists: those whose ids could not be proven, those
        holding an id the database does not know, and those holding the `updated_at` of a file
        missing from the mirror (listed for its fresh URL). Elsewhere the database already holds
        every id upstream; ids it holds that are not upstream are deletions, looked up one by one."""
        return [
            piece
            for piece in self.pieces
            if piece.ids is None
            or any(i not in known for i in piece.ids)
            or any(piece.holds(moment) for moment in missing)
        ]


def cut_points(times: Sequence[datetime | None], chunk: int) -> list[datetime]:
    """Seconds at which to start a new piece so each holds about `chunk` of the known photos."""
    known = sorted(t.replace(microsecond=0) for t in times if t is not None)
    points: list[datetime] = []
    for i in range(chunk, len(known), chunk):
        if (not points or known[i] > points[-1]) and known[i] > BEGINNING:
            points.append(known[i])
    return points


async def first_ids(api: ProcoreApi, query: ImageQuery) -> Page:
    """The first page of the project's ids: its `Total`, and how many ids a page holds."""
    return await api.ids_page(query, page=1, per_page=IDS_PER_PAGE)


def _fits(first: Page) -> bool:
    return first.total is not None and first.next_url is None and len(set(first.items)) == first.total


def _chunk(first: Page) -> int:
    return max(1, int((first.per_page or len(first.items) or IDS_PER_PAGE) * 0.8))


def id_pages(first: Page, known: int) -> int:
    """Requests `upstream_ids` will take after `first` (each piece proven at once)."""
    return 0 if _fits(first) else known // _chunk(first) + 1


async def upstream_ids(
    api: ProcoreApi, query: ImageQuery, known_times: Sequence[datetime | None], first: Page | None = None
) -> IdListing:
    """The ids upstream, in pieces of about a page of the known photos each, every piece proven
    against its `Total` (or marked unproven, and the others listed all the same)."""
    first = first or await first_ids(api, query)
    if _fits(first):  # the whole project fits one page: a consistent snapshot
        return IdListing([IdPiece(BEGINNING, FAR_FUTURE, set(first.items))])
    edges = [BEGINNING, *cut_points(known_times, _chunk(first)), FAR_FUTURE]
    pieces = []
    for lo, hi in pairwise(edges):  # sharing their boundaries, as listing pieces do
        piece = replace(query, filters=replace(query.filters, updated_at=Range(lo, hi)))
        pieces.append(IdPiece(lo, hi, await _prove(api, piece)))
    return IdListing(pieces)


async def _prove(api: ProcoreApi, query: ImageQuery) -> set[int] | None:
    async def take(page: Page) -> list[int]:
        return page.items

    for _ in range(PASSES):
        done = await paged_pass(
            Pass(),
            lambda n: api.ids_page(query, page=n, per_page=IDS_PER_PAGE),
            take=take,
        )
        if done.proven:
            return done.distinct
    return None


@dataclass
class Deletions:
    """Finding and applying the deletions of one full run of one project."""

    api: ProcoreApi
    store: Store
    fs: MirrorFS
    mirror: MirrorSettings
    concurrency: int
    now: Callable[[], datetime]

    async def reconcile(self, listing: IdListing, result: ProjectResult, *, force: bool) -> None:
        """Mark photos gone from Procore as deleted, then apply `mirror.on_delete` to their files;
        a dry run (`result.dry_run`) only counts them, in `result.would_delete`.

        Runs only after a proven listing, on a proven id set (`listing`, listed before the
        records), within the `max_delete` cap, and each deletion is confirmed by a direct lookup."""
        project = result.project
        upstream = listing.ids
        if upstream is None:
            result.deletions_unchecked = listing.problem
            return
        known = await self.store.live_ids(project.id)
        gone = sorted(known - upstream)
        cap = self.mirror.delete_cap(len(known))
        if len(gone) > cap and not force:
            result.deletions_blocked = (
                f"{len(gone):,} of {plural(len(known), 'photo')} {'is' if len(gone) == 1 else 'are'} gone "
                f"from Procore, more than mirror.max_delete ({self.mirror.max_delete}, "
                f"{plural(cap, 'photo')}) allows; none was marked deleted. If that is right, run again "
                "with --force"
            )
            return
        confirmed = await self._confirm_gone(project, gone)
        if result.dry_run:  # the lookups only read: what a real run would mark, it counts
            result.would_delete = len(confirmed)
            return
        await self.store.mark_deleted(confirmed, self.now())
        result.deleted_upstream = len(confirmed)
        if self.mirror.on_delete != "keep":
            await self._apply_on_delete(project, result)

    async def _confirm_gone(self, project: Project, candidates: list[int]) -> list[int]:
        """The candidates Procore answers 404 for when asked one by one.

        A photo can be missing from the id listing and still exist: it stopped matching
        `sync.filters`, or it has no `updated_at` for a range to match. Only a 404 is a deletion."""
        limit = asyncio.Semaphore(self.concurrency)

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
            try:
                for photo_id, path in files:
                    target = f"{TRASH_DIR}/{day}/{path}"
                    sidecars = zip(self.fs.sidecars.paths(path), self.fs.sidecars.paths(target), strict=True)
                    for source, dest in ((path, target), *sidecars):
                        with contextlib.suppress(FileNotFoundError):
                            await self.fs.move(source, dest)
                    moved.append((photo_id, target))
            except UnsafePath as exc:  # a link planted in the trash: leave the rest where they are
                result.deletions_blocked = (
                    f"{exc}; {plural(len(files) - len(moved), 'file')} of deleted photos stay in place "
                    "until the link is removed"
                )
            await self.store.record_trashed(moved)
            result.trashed = len(moved)
        else:
            for _, path in files:
                for each in (path, *self.fs.sidecars.paths(path)):
                    await self.fs.remove(each)
            await self.store.record_removed([photo_id for photo_id, _ in files])
            result.removed = len(files)
        log.info(
            "project %s: %s %s of photos deleted in Procore",
            project.id,
            "moved to the trash" if self.mirror.on_delete == "trash" else "removed",
            plural(len(files), "file"),
        )
