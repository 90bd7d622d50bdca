"""Which photos still exist upstream, proven, so deletions are never guessed.

`ids_only` is cheap but pages the same unstable order as every listing. So the id set is listed
in pieces of `updated_at` cut from the database's own knowledge of the project: each piece holds
about one page of known photos, and a piece counts only when its distinct ids match `Total`.
Pieces go oldest first and the open-ended newest piece last: a photo edited while this runs moves
into that last piece, which is listed after the move, so no photo can fall between two pieces.
A piece that never proves itself makes the whole answer `None`, and nothing is deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from syncer.listing import BEGINNING, FAR_FUTURE, SECOND
from syncer.procore.api import ProcoreApi
from syncer.procore.query import ImageQuery, Range

IDS_PER_PAGE = 1000
PASSES = 3


@dataclass
class IdListing:
    ids: set[int] | None
    """Every id upstream, or None when some piece could not be proven."""
    requests: int = 0
    problem: str | None = None


def cut_points(times: Sequence[datetime | None], chunk: int) -> list[datetime]:
    """Seconds at which to start a new piece so each holds about `chunk` of the known photos."""
    known = sorted(t.replace(microsecond=0) for t in times if t is not None)
    points: list[datetime] = []
    for i in range(chunk, len(known), chunk):
        if (not points or known[i] > points[-1]) and known[i] > BEGINNING:
            points.append(known[i])
    return points


async def upstream_ids(
    api: ProcoreApi, query: ImageQuery, known_times: Sequence[datetime | None]
) -> IdListing:
    result = IdListing(ids=set())
    first = await api.ids_page(query, page=1, per_page=IDS_PER_PAGE)
    result.requests += 1
    if first.total is not None and first.next_url is None and len(set(first.items)) == first.total:
        result.ids = set(first.items)  # the whole project fits one page: a consistent snapshot
        return result
    chunk = max(1, int((first.per_page or IDS_PER_PAGE) * 0.8))
    starts = [BEGINNING, *cut_points(known_times, chunk)]
    ends = [s - SECOND for s in starts[1:]] + [FAR_FUTURE]
    for lo, hi in zip(starts, ends, strict=True):
        piece = replace(query, filters=replace(query.filters, updated_at=Range(lo, hi)))
        ids = await _prove(api, piece, result)
        if ids is None:
            result.ids = None
            result.problem = (
                f"the ids updated {lo:%Y-%m-%dT%H:%M:%S}..{hi:%Y-%m-%dT%H:%M:%S} did not match Total"
            )
            return result
        assert result.ids is not None
        result.ids |= ids
    return result


async def _prove(api: ProcoreApi, query: ImageQuery, result: IdListing) -> set[int] | None:
    for _ in range(PASSES):
        seen: set[int] = set()
        totals: set[int | None] = set()
        page_no = 1
        first_total: int | None = None
        while True:
            page = await api.ids_page(query, page=page_no, per_page=IDS_PER_PAGE)
            result.requests += 1
            first_total = page.total if page_no == 1 else first_total
            totals.add(page.total)
            seen.update(page.items)
            if page.is_last(page_no, asked=IDS_PER_PAGE, first_total=first_total):
                break
            page_no += 1
        if len(totals) == 1 and None not in totals and len(seen) == next(iter(totals)):
            return seen
    return None
