"""Listing a window of photos completely, with proof.

Procore pages with offsets over an order that is unstable among equal sort keys, and rows edited
or deleted while pages are fetched shift the pages, so paging alone can repeat some photos and skip
others. A *piece* of the window (a range of `updated_at` and of `created_at`) counts as proven when
one pass over it returned as many distinct photos as `Total` said, with `Total` the same on every
page. Because the window's upper bound is in the past, edits and deletions only ever take photos
out of a piece, never add them; so an unchanged `Total` with that many distinct ids means nothing
was missed.

Procore shows times in whole seconds but may store them finer, and whether a range's end is
inclusive is unknown. So a piece is a range of whole seconds `[a, b]` asked as exactly that, and
it holds every photo shown at seconds `a` to `b - 1` whichever way the server compares (a photo
shown at `b - 1` may be stored at `b - 0.4`); neighbouring pieces share their boundary second. A
server with inclusive ends and whole-second storage also puts the photos shown at `b` in the
piece, so pieces can overlap: what they prove is a set of ids, never a sum of counts. A window
`[start, end]` is asked as `[start, end + 1s]` for the same reason, and the next one starts at
`end` again.

A piece that fails is split at the `created_at` values where its pages began (the listing is
sorted by `created_at`), so each sub-piece holds about one page and is proven by one request. A
piece too dense to split that way is cut by `updated_at`, then by `created_at`, around the seconds
its photos were seen in, down to one second each. Past that (more photos than a page holds share
one second of both: a bulk import or a bulk edit), passes are repeated and their union confirmed
with `filters[id]` against `Total` (see `_prove_ties`).

"Photos only leave a piece" holds once Procore's clock has passed the piece's end by a second;
until then a photo edited now could enter it and hide a photo the shifted pages skipped. One page
is one answer, so a piece that fits one page is proven at once; a longer pass over a piece that
recent is cut short, and the piece is split at the newest second that is safe (the stretch after
it is seconds long, and waited for only when it holds more than a page).

Photos edited while the window is listed move past its end. So when the first pass over the
window was not proven at once (something moved, or the window was long), the stretch from its end
to now is listed too, as a catch-up round, up to `CATCH_UP_ROUNDS` times; the checkpoint then
moves to the end of the last round.

A record whose id cannot be read fails itself, not its page: it counts in a pass under a stand-in
id made from its content (the same in every pass, so the proof still adds up), every readable
photo of its page is handed on, and the report names it, which leaves the window not proven.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any, TypeVar

from syncer.config import DEFAULT_BUDGET
from syncer.procore.api import Page, ProcoreApi
from syncer.procore.models import BadRecord, Photo
from syncer.procore.query import ImageQuery, Range
from syncer.words import plural

log = logging.getLogger(__name__)

BEGINNING = datetime(2000, 1, 1, tzinfo=UTC)
"""The lower bound of a full listing; no Procore photo is older."""
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)
TIE_PASSES = 12
"""Passes over a piece that no time can split, before it is reported not proven. With 100 per
page, 250 photos in one second are all seen after about 7 passes (21 requests)."""
ID_CHECK_CHUNK = 50
"""Ids per `filters[id]` request when a union of passes is confirmed: about 2 KB of URL, well
within what servers take in a request line and what the answer's `Link` header repeats."""
CATCH_UP_ROUNDS = 3
MIN_BUDGET = 1000
MAX_PASS_PAGES = 10_000
"""Pages of a pass without a `Total` (which `Page.is_last` cannot bound) before it ends unproven:
its `Link: next` chain can be endless."""

OnPage = Callable[[list[Photo]], Awaitable[None]]

SLICE_PHOTOS = 1000
"""About how many photos one slice of a first backfill holds (a turn's worth of downloads)..."""
SLICE_PAGES = 10
"""...and at most this many pages of `sync.per_page`: a slice costs a bounded number of requests."""
FIRST_SLICE = timedelta(days=7)
"""How far back a project's first slice reaches, unless that holds too many photos."""
MIN_SLICE = timedelta(hours=1)
SLICE_GROWTH = 16
"""The most a slice may widen over the one before it (older photos are often sparser)."""
SLICE_REACH = 0.5
"""A slice reaches back at most half as far again as the backfill has come from the company's
newest photo (the age of what is listed grows at most 1.5 times a slice): with turns given to the
project whose unlisted photos are the newest, a company's photos are mirrored newest first within
that factor of age, however sparse some projects are. Time above the company's newest photo is
passed freely. (1.0 halves the turns of a sparse project, but in the bench the newest tenth of
the photos then takes a fifth of the backfill's time instead of a sixth.)"""


def slice_target(per_page: int) -> int:
    """Photos one backfill slice should hold: about a turn's worth, a bounded number of pages."""
    return max(1, min(SLICE_PHOTOS, SLICE_PAGES * per_page))


def slices_to_reach(age: timedelta) -> int:
    """Slices a backfill takes to reach photos `age` old, each reaching at most `SLICE_REACH`
    times as far again as the ones before it (the first: `FIRST_SLICE`)."""
    slices, covered = 1, FIRST_SLICE
    while covered < age:
        covered += max(FIRST_SLICE, covered * SLICE_REACH)
        slices += 1
    return slices


def next_width(width: timedelta, photos: int, target: int) -> timedelta:
    """The width of the next slice, from one of `width` that held `photos`: as wide as that
    density fills with `target` photos, growing at most `SLICE_GROWTH` times."""
    scaled = width * (target / photos) if photos else width * SLICE_GROWTH
    return max(MIN_SLICE, min(scaled, width * SLICE_GROWTH, FAR_FUTURE - BEGINNING))


async def count_window(
    api: ProcoreApi, query: ImageQuery, start: datetime | None, end: datetime, *, newest: bool = False
) -> Page:
    """One page of one photo over the range `Lister.run(start, end)` lists, asked as it asks it
    (`[start, end + 1s]`): its `Total` counts the range in one request, and an answer with a
    `Total` of 0 and no photo proves the range empty, as the listing's own first page would. The
    photo it shows is the oldest created (`newest`: the newest): how far back a project goes, or
    where its photos end."""
    piece = Piece(_floor(start or BEGINNING), _floor(end) + SECOND)
    counted = replace(
        query,
        sort="-created_at" if newest else "created_at",
        filters=replace(query.filters, updated_at=Range(piece.updated_from, piece.updated_to)),
    )
    return await api.images_page(counted, page=1, per_page=1)


def span(start: datetime, end: datetime) -> str:
    """A range of `updated_at` as Procore is asked for it, in UTC, and saying so."""
    return f"{start:%Y-%m-%dT%H:%M:%S}..{end:%Y-%m-%dT%H:%M:%S} UTC"


@dataclass(frozen=True)
class Piece:
    """Ranges of whole seconds, asked as they are: the photos shown at `updated_from` up to
    `updated_to - 1s` are in it whichever way Procore compares (see the module's docstring)."""

    updated_from: datetime
    updated_to: datetime
    created_from: datetime = BEGINNING
    created_to: datetime = FAR_FUTURE

    def describe(self) -> str:
        return f"updated {span(self.updated_from, self.updated_to)}"

    @property
    def any_created(self) -> bool:
        """No `created_at` filter: photos Procore keeps without a `created_at` are in it too."""
        return (self.created_from, self.created_to) == (BEGINNING, FAR_FUTURE)


@dataclass
class Pass:
    """One pass over a listing, page by page: what it saw and what `Total` said on each page."""

    distinct: set[int] = field(default_factory=set)
    totals: set[int | None] = field(default_factory=set)
    pages: int = 0
    last_total: int | None = None
    """`Total` on the last page read: the newest count."""
    cut_short: bool = False
    """Stopped after its first page (see `paged_pass`): it proves nothing."""

    @property
    def proven(self) -> bool:
        """Every page gave the same `Total`, and the pass saw exactly that many distinct ids."""
        return (
            not self.cut_short
            and len(self.totals) == 1
            and None not in self.totals
            and len(self.distinct) == next(iter(self.totals))
        )


P = TypeVar("P", bound=Pass)


async def paged_pass(
    into: P,
    get_page: Callable[[int], Awaitable[Page]],
    *,
    take: Callable[[Page], Awaitable[list[int]]],
    one_page_only: bool = False,
) -> P:
    """Read pages 1, 2, ... until the last, adding each page's ids (what `take` makes of the page)
    and its `Total` to `into`. The one paged proof, used by the listing and by reconcile.
    `one_page_only`: a listing that needs a second page is cut short instead."""
    page_no, first_total, widest = 1, None, 1
    while True:
        page = await get_page(page_no)
        if page_no == 1:
            first_total = page.total
        widest = max(widest, len(page.items))
        into.pages += 1
        into.totals.add(page.total)
        into.last_total = page.total
        into.distinct.update(await take(page))
        if page.is_last(page_no, widest=widest, first_total=first_total):
            return into
        if one_page_only:
            into.cut_short = True
            return into
        if first_total is None and page_no >= MAX_PASS_PAGES:
            return into  # without a Total it proves nothing anyway
        page_no += 1


@dataclass
class PiecePass(Pass):
    """A pass over a piece of the window, with what splitting the piece needs."""

    starts: list[datetime | None] = field(default_factory=list)
    """`created_at` of the first photo of each page, for splitting."""
    sorted_ok: bool = True
    updated: set[datetime] = field(default_factory=set)
    created: set[datetime] = field(default_factory=set)


@dataclass(frozen=True)
class Proof:
    ids: frozenset[int] | None
    """The photos the piece was proven to hold (some may have left it since), or None if it
    could not be proven."""
    at_once: bool = False
    """Proven without anything moving while it was read."""


@dataclass
class ListingReport:
    requests: int = 0
    pieces: int = 0
    splits: int = 0
    unproven: list[str] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    end: datetime | None = None
    """Where the proven listing ends: the window's end, or the end of the last catch-up round.
    Every photo shown at that second or before, and not edited since the listing began, was
    listed."""
    ties: list[str] = field(default_factory=list)
    """How each piece that no time could split was proven, with what it cost."""
    unreadable: dict[int, str] = field(default_factory=dict)
    """Records without a readable id, by stand-in id (`stand_in`): what each was and why."""

    @property
    def proven(self) -> bool:
        return not self.unproven and not self.unreadable


def stand_in(item: Any) -> int:
    """A negative id for a record without a readable one, made from its content: the same record
    gets the same stand-in in every pass, so it is counted once, as `Total` counts it."""
    try:
        text = json.dumps(item, sort_keys=True, default=repr)
    except (TypeError, ValueError):  # keys of mixed types cannot be sorted
        text = repr(item)
    return -1 - int.from_bytes(hashlib.sha256(text.encode(errors="replace")).digest()[:7], "big")


def describe_unreadable(item: Any, error: BadRecord) -> str:
    """One line naming an unreadable record by what it has besides an id."""
    hints = []
    if isinstance(item, dict):
        for key in ("filename", "created_at", "updated_at"):
            if isinstance(value := item.get(key), str) and value:
                hints.append(f"{key} {value[:80]!r}")
    return f"{error}{' (' + ', '.join(hints) + ')' if hints else ''}"


class OutOfBudget(Exception):
    """The listing spent its `sync.listing_budget`: what was seen is kept, nothing is proven."""


def _floor(value: datetime) -> datetime:
    return value.replace(microsecond=0)


def _split_range(lo: datetime, hi: datetime, seen: set[datetime]) -> list[tuple[datetime, datetime]]:
    """Cut the range `[lo, hi]` (two seconds or more) where the photos seen in it lie, so that
    dense seconds end up alone; the parts share their boundaries.

    Around a single seen second the cut is three-way (before, the second, after); otherwise at
    the median seen second. Photos shown at `hi` itself (a server that holds range ends) are cut
    off as `[hi - 1s, hi]`. Parts with no photo cost one request each to prove empty.
    """
    values = sorted(v for v in seen if lo <= v <= hi)
    if not values:
        cuts = [_floor(lo + (hi - lo) / 2)]
    elif values[0] == values[-1]:
        cuts = [values[0], values[0] + SECOND] if values[0] < hi else [hi - SECOND]
    else:
        cuts = [min(values[len(values) // 2], hi - SECOND)]  # above values[0]: they are distinct
    edges = [lo, *(c for c in cuts if lo < c < hi), hi]
    return list(pairwise(edges))


class Lister:
    def __init__(
        self,
        api: ProcoreApi,
        query: ImageQuery,
        *,
        per_page: int,
        on_page: OnPage,
        clock: Callable[[], datetime],
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        """`clock`: now on Procore's clock, never ahead of it (see `Pacer.clock_offset`). `budget`:
        `sync.listing_budget`, so that a server whose `Total` never matches (or whose links never
        end) costs a bounded number of requests, not an endless split."""
        self.api = api
        self.query = replace(query, sort="created_at")
        self.per_page = per_page
        self.on_page = on_page
        self.clock = clock
        self.budget = budget
        self.allowed: int | None = None
        """Requests this listing may send, set from the first `Total` it reads."""
        self.report = ListingReport()

    async def run(
        self, start: datetime | None, end: datetime, *, now: Callable[[], datetime] | None = None
    ) -> ListingReport:
        """List every photo shown with `updated_at` from `start` to `end` (whole seconds, both
        included), then, if the window moved while it was listed, up to `now()` in catch-up
        rounds; `report.proven` says if it is sure."""
        lo, last = _floor(start or BEGINNING), _floor(end)
        for _ in range(1 + CATCH_UP_ROUNDS):
            try:
                settled = (await self._prove(Piece(lo, last + SECOND))).at_once
            except OutOfBudget:
                self.report.unproven.append(
                    f"{Piece(lo, last + SECOND).describe()}: gave up after "
                    f"{plural(self.report.requests, 'request')} (sync.listing_budget {self.budget}); "
                    "Procore's Total never matched what it listed"
                )
                break
            self.report.end = last
            later = _floor(now()) if now is not None else last
            if settled or later <= last:
                break
            lo, last = last, later
        return self.report

    def _settled(self, piece: Piece) -> bool:
        """No photo can enter the piece any more: Procore's clock is a second past its end."""
        return self.clock() >= piece.updated_to + SECOND

    async def _settle(self, piece: Piece) -> None:
        """Wait until no photo can enter the piece (a few seconds at most: only pieces that end
        at the window's end are ever that recent)."""
        wait = (piece.updated_to + SECOND - self.clock()).total_seconds()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _prove(self, piece: Piece) -> Proof:
        """Prove the piece, or record it unproven."""
        result = await self._pass(piece)
        if result.proven:
            self.report.pieces += 1
            return Proof(frozenset(result.distinct), at_once=True)
        if result.cut_short:
            return await self._prove_recent(piece)
        subpieces = self._split(piece, result)
        if not subpieces:
            return Proof(await self._prove_ties(piece, result))
        self.report.splits += 1
        log.debug(
            "piece %s not proven (%s distinct, Total %s); splitting in %d",
            piece.describe(),
            len(result.distinct),
            result.totals,
            len(subpieces),
        )
        ids = await self._prove_all(subpieces)
        if piece.any_created and not subpieces[0].any_created and ids is not None:
            # A photo without `created_at` is in no `created_at` range: if the piece holds more
            # than its `created_at` pieces did, prove it again in pieces that keep such photos.
            whole = await self._count(piece)
            if whole is not None and whole > len(ids):
                log.info(
                    "listing: %s holds photos without created_at; listing it by updated_at", piece.describe()
                )
                if piece.updated_to - piece.updated_from > SECOND:
                    pieces = _split_range(piece.updated_from, piece.updated_to, result.updated)
                    ids = await self._prove_all(
                        [replace(piece, updated_from=a, updated_to=b) for a, b in pieces]
                    )
                else:
                    ids = await self._prove_ties(piece, result)
        return Proof(ids)

    async def _prove_recent(self, piece: Piece) -> Proof:
        """A piece of more than a page that photos may still enter: split off the part that is
        settled now, and prove the recent seconds after it (waiting for them if need be)."""
        cut = _floor(self.clock()) - SECOND
        if cut <= piece.updated_from:
            await self._settle(piece)
            return await self._prove(piece)
        older, recent = (
            await self._prove(replace(piece, updated_to=cut)),
            await self._prove(replace(piece, updated_from=cut)),
        )
        if older.ids is None or recent.ids is None:
            return Proof(None)
        return Proof(older.ids | recent.ids, at_once=older.at_once and recent.at_once)

    async def _prove_all(self, pieces: list[Piece]) -> frozenset[int] | None:
        """Prove each piece; the photos in them all, or None if one could not be proven."""
        proofs = [(await self._prove(piece)).ids for piece in pieces]
        if any(ids is None for ids in proofs):
            return None
        return frozenset().union(*(ids for ids in proofs if ids is not None))

    def _spend(self, total: int | None = None) -> None:
        """Count one request against the budget, which the first `Total` read sets."""
        self.report.requests += 1
        if self.allowed is None:
            pages = min(-(-(total or 0) // self.per_page), MAX_PASS_PAGES)  # a huge Total lifts no bound
            self.allowed = max(MIN_BUDGET, self.budget * pages)
        if self.report.requests >= self.allowed:
            raise OutOfBudget

    async def _count(self, piece: Piece) -> int | None:
        """`Total` of the piece now (one request for one photo)."""
        page = await self.api.images_page(self._piece_query(piece), page=1, per_page=1)
        self._spend(page.total)
        return page.total

    async def _prove_ties(self, piece: Piece, first: PiecePass) -> frozenset[int] | None:
        """Prove a piece whose photos all share one second of both times, so no split can part
        them and each request orders them anew: pass again until the union of what the passes saw
        reaches `Total`, then confirm that union with `filters[id]` (`_confirm`)."""
        await self._settle(piece)  # the confirmation counts on photos only leaving the piece
        union, requests = set(first.distinct), self.report.requests - first.pages
        latest = first
        for passes in range(1, TIE_PASSES + 1):
            enough = latest.last_total is not None and len(union) >= latest.last_total
            if enough and (confirmed := await self._confirm(piece, union)) is not None:
                self.report.pieces += 1
                cost = self.report.requests - requests
                self.report.ties.append(
                    f"{piece.describe()}: {plural(confirmed, 'photo')} in one second, proven by "
                    f"{plural(passes, 'pass', 'passes')} and an id check ({plural(cost, 'request')})"
                )
                log.info("listing: %s", self.report.ties[-1])
                return frozenset(union)
            if passes < TIE_PASSES:
                latest = await self._pass(piece)
                union |= latest.distinct
        self.report.unproven.append(
            f"{piece.describe()}: {plural(len(union), 'photo')} seen in "
            f"{plural(TIE_PASSES, 'pass', 'passes')}, Procore reported {latest.last_total}"
        )
        return None

    async def _confirm(self, piece: Piece, union: set[int]) -> int | None:
        """How many photos the piece holds, if every one of them is in `union` (else None).

        `Total` of the piece is read first, then the piece is counted within `union`, a chunk of
        ids at a time. Photos only ever leave a settled piece, so if the chunks add up to the
        first `Total`, nothing in the piece was missing from the union."""
        query = self._piece_query(piece)
        whole = await self._count(piece)
        if whole is None:
            return None
        counted, ids = 0, sorted(union)
        for at in range(0, len(ids), ID_CHECK_CHUNK):
            chunk = replace(query, filters=replace(query.filters, id=ids[at : at + ID_CHECK_CHUNK]))
            page = await self.api.images_page(chunk, page=1, per_page=1)
            self._spend(page.total)
            if page.total is None:
                return None
            counted += page.total
        return whole if counted == whole else None

    def _piece_query(self, piece: Piece) -> ImageQuery:
        return replace(
            self.query,
            filters=replace(
                self.query.filters,
                updated_at=Range(piece.updated_from, piece.updated_to),
                created_at=None if piece.any_created else Range(piece.created_from, piece.created_to),
            ),
        )

    async def _pass(self, piece: Piece) -> PiecePass:
        query = self._piece_query(piece)
        result = PiecePass()
        previous: datetime | None = None

        async def take(page: Page) -> list[int]:
            nonlocal previous
            photos, unreadable = [], []
            for item in page.items:
                try:
                    photos.append(Photo.from_api(item))
                except BadRecord as exc:
                    unreadable.append(stand_in(item))
                    self.report.unreadable.setdefault(unreadable[-1], describe_unreadable(item, exc))
            result.starts.append(photos[0].created_at if photos else None)
            for photo in photos:
                if photo.created_at is None or (previous is not None and photo.created_at < previous):
                    result.sorted_ok = False
                previous = photo.created_at or previous
                if photo.updated_at is not None:
                    result.updated.add(_floor(photo.updated_at))
                if photo.created_at is not None:
                    result.created.add(_floor(photo.created_at))
            ids = [p.id for p in photos]
            self.report.seen.update(ids)
            if photos:
                await self.on_page(photos)
            self._spend(page.total)  # after the page is handed on: what was listed is kept
            return ids + unreadable

        return await paged_pass(
            result,
            lambda n: self.api.images_page(query, page=n, per_page=self.per_page),
            take=take,
            one_page_only=not self._settled(piece),
        )

    @staticmethod
    def _split(piece: Piece, result: PiecePass) -> list[Piece]:
        if result.pages > 1 and result.sorted_ok:
            bounds = sorted(
                {s for s in result.starts[1:] if s is not None and piece.created_from < s < piece.created_to}
            )
            if bounds:
                edges = [piece.created_from, *bounds, piece.created_to]
                return [replace(piece, created_from=lo, created_to=hi) for lo, hi in pairwise(edges)]
        if piece.updated_to - piece.updated_from > SECOND:
            return [
                replace(piece, updated_from=lo, updated_to=hi)
                for lo, hi in _split_range(piece.updated_from, piece.updated_to, result.updated)
            ]
        if piece.created_to - piece.created_from > SECOND:
            return [
                replace(piece, created_from=lo, created_to=hi)
                for lo, hi in _split_range(piece.created_from, piece.created_to, result.created)
            ]
        return []
