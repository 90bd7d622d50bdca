"""What a run found and did: plain data, filled in by the engine and read by the summary, the
daemon's log lines, its metrics and the tests. Nothing here does any work."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from syncer.errors import ExitCode
from syncer.plan import Change
from syncer.procore.models import Project

if TYPE_CHECKING:
    from syncer.gallery import GalleryReport


@dataclass
class ProjectResult:
    project: Project
    window_start: datetime | None
    window_end: datetime
    dry_run: bool = False
    listed: int = 0
    changes: Counter[Change] = field(default_factory=Counter)
    elsewhere: int = 0
    """Listed photos another project of the company already holds (data moved between projects):
    left with that project, not moved or fetched again on every run."""
    retried: int = 0
    """Photos due from earlier runs (failed before, or left by an interrupted run)."""
    would_bytes: int = 0
    """A dry run: the stated sizes of the listed photos a sync would download."""
    would_delete: int = 0
    """A dry run with --full: photos gone from Procore that a sync would mark deleted."""
    downloaded: int = 0
    bytes: int = 0
    adopted: int = 0
    """Photos found already in the mirror (hashed against their sidecar) and recorded unfetched."""
    relocated: int = 0
    vanished: int = 0
    """Photos deleted in Procore between listing and download; marked deleted, not failed."""
    failures: list[tuple[int, str, str]] = field(default_factory=list)
    """(photo id, mirror path, error) of each photo that could not be mirrored."""
    listing_error: str | None = None
    unproven: list[str] = field(default_factory=list)
    listing_notes: list[str] = field(default_factory=list)
    """What proving the listing cost where it took more than splitting (photos tied in time)."""
    unreadable: list[str] = field(default_factory=list)
    """Records Procore listed without a readable id, each named: not mirrored, and the window stays
    unproven until they can be read."""
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
    backfill_left: bool = False
    """The project's first backfill is not done: older photos are still to be listed. Each run
    (a turn) lists the new changes, then the next older slices within a bounded budget; run it
    again until this is False."""
    proven_back_to: datetime | None = None
    """While backfill is left: how far back the listing is proven (photos updated before it are
    not listed yet); None when not one slice is proven yet."""
    backfill_photos: int | None = None
    """While backfill is left: about how many photos are still to be listed (from `Total`)."""

    def absorb(self, earlier: ProjectResult | None) -> ProjectResult:
        """This result with the counts of an `earlier` one for the same project added in (a worker
        that helped with a project, then took it over; the turns of a backfill)."""
        if earlier is not None:
            self.listed += earlier.listed
            self.changes.update(earlier.changes)
            self.elsewhere += earlier.elsewhere
            self.listing_notes[:0] = earlier.listing_notes
            self.retried += earlier.retried
            self.downloaded += earlier.downloaded
            self.bytes += earlier.bytes
            self.adopted += earlier.adopted
            self.relocated += earlier.relocated
            self.vanished += earlier.vanished
            again = {photo_id for photo_id, _, _ in self.failures}  # tried again: its latest error
            self.failures[:0] = [f for f in earlier.failures if f[0] not in again]
            self.requests += earlier.requests
            self.seconds += earlier.seconds
        return self

    @property
    def proven(self) -> bool:
        """The window was listed completely and every record in it read: the checkpoint may move."""
        return self.listing_error is None and not self.unproven and not self.unreadable

    @property
    def ok(self) -> bool:
        """The run did all it set out to: for a turn of a first backfill, its slice."""
        return (
            not self.failures
            and self.proven
            and not self.deletions_blocked
            and not self.stopped
            and not self.waiting
        )

    @property
    def complete(self) -> bool:
        """The project is mirrored completely: the run was ok and no backfill is left."""
        return self.ok and not self.backfill_left


INTERRUPTED_TURN = "interrupted; the next run continues from here"
"""The note of a project whose turn an interruption cut short."""


class Turns:
    """A one-shot run's results as they stand, project by project: its turns that ended, added
    up, and the turn going on. A turn cut short by Ctrl-C or SIGTERM returns nothing, so results
    are kept here as they are made: an interrupted run's summary is made of them."""

    def __init__(self) -> None:
        self.ended: dict[int, ProjectResult] = {}
        self.going: dict[int, ProjectResult] = {}

    def begin(self, result: ProjectResult) -> None:
        """A turn starts, its result to be filled in."""
        self.going[result.project.id] = result

    def end(self, result: ProjectResult) -> ProjectResult:
        """A turn ended: its result, with the project's earlier turns added in."""
        project_id = result.project.id
        if self.going.get(project_id) is result:
            del self.going[project_id]
        self.ended[project_id] = result.absorb(self.ended.get(project_id))
        return self.ended[project_id]

    def results(self, projects: Iterable[Project]) -> list[ProjectResult]:
        """Each project's result so far, in the order of `projects` (those not begun left out);
        a turn still going was cut short, and says so."""
        for result in list(self.going.values()):
            result.stopped = result.stopped or INTERRUPTED_TURN
            self.end(result)
        return [self.ended[p.id] for p in projects if p.id in self.ended]


@dataclass(frozen=True)
class Left:
    """What a run stopped before its end (Ctrl-C, SIGTERM, sync.max_duration) left to the next."""

    photos: int
    """Photos listed and queued that are not in the mirror yet."""
    bytes: int
    """What of their stated sizes is still to download."""
    unlisted: int
    """Photos not listed yet, as far as Procore's counts tell (first backfills)."""
    listings: int
    """Projects whose listing did not come to its end."""


@dataclass
class RunSummary:
    results: list[ProjectResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Problems outside any one project (a configured project that is not visible, say)."""
    seconds: float = 0.0
    """How long the run took to sync, the gallery's build left out (it has its own time)."""
    gallery: GalleryReport | None = None
    """What the gallery's build did, when the run brought it up to date (`gallery.enabled`)."""
    interrupted: str | None = None
    """What stopped the run before its end (`Ctrl-C`, `SIGTERM`), if anything did."""
    left: Left | None = None
    """What the run left to the next one, when it stopped before its end (interrupted, or a
    project stopped at sync.max_duration)."""

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        ok = not self.errors and all(r.complete for r in self.results)
        return ExitCode.OK if ok else ExitCode.INCOMPLETE
