"""What a person sees: a progress bar on a terminal, periodic log lines elsewhere, and summaries."""

from __future__ import annotations

import json
import logging
import sys
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Protocol

from syncer.errors import ExitCode
from syncer.log import terminal_json, terminal_lines
from syncer.plan import Change
from syncer.result import Left, ProjectResult, RunSummary
from syncer.words import human_time, plural

if TYPE_CHECKING:
    from syncer.estimate import Budget
    from syncer.gallery import GalleryReport

log = logging.getLogger("syncer")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    minutes, seconds = divmod(int(s), 60)
    hours, minutes = divmod(minutes, 60)
    if hours >= 48:
        return f"{hours // 24}d{hours % 24:02d}h{minutes:02d}m"
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class Progress(Protocol):
    tally: Tally
    """What the run has queued and done so far."""

    def expect(self, project_ids: Iterable[int], *, budget: Budget | None = None) -> None: ...
    def listed(self, project_id: int) -> None: ...
    def remaining(self, project_id: int, photos: int) -> None:
        """A project's first backfill has `photos` still to list (its counted part of the total)."""

    def queued(self, photos: int, size: int) -> None: ...
    def received(self, size: int) -> None: ...
    def finished(self, photos: int = 1) -> None: ...
    def __enter__(self) -> Progress: ...
    def __exit__(self, *exc: object) -> None: ...


RATE_WINDOW = 10.0
"""Seconds of history behind the shown rate: long enough to smooth over photos landing whole,
short enough to follow a change of pace."""


class Tally:
    """What a run has queued and done so far, and how it reads: the one text behind the bar and
    the periodic log line. The total is known once every project's listing has ended or its
    first backfill's photos still to list are counted; until then the run says so instead of
    showing a bar that fills up and jumps back."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.projects: set[int] = set()
        """The projects this run lists; the total is known once each listing has ended."""
        self.listings_done: set[int] = set()
        self.unlisted: dict[int, int] = {}
        """Photos each project in its first backfill has still to list, from Procore's count."""
        self.budget: Budget | None = None
        """The rate budget, for an ETA that counts the requests left, not only the bytes."""
        self.photos_total = self.photos_done = 0
        self.bytes_total = self.bytes_done = 0
        self._samples: deque[tuple[float, int]] = deque([(clock(), 0)])

    @property
    def total_known(self) -> bool:
        return self.projects <= self.listings_done | set(self.unlisted)

    def sample(self) -> None:
        """Note the bytes done now (at most four times a second): what `rate` looks back on."""
        now = self.clock()
        samples = self._samples
        if now - samples[-1][0] >= 0.25:
            samples.append((now, self.bytes_done))
            while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
                samples.popleft()

    def rate(self) -> float | None:
        """Bytes per second over the last RATE_WINDOW seconds (never below 0: a failed attempt
        takes its bytes back); None before a second has passed."""
        self.sample()
        then, done = self._samples[0]
        elapsed = self.clock() - then
        return max(0.0, (self.bytes_done - done) / elapsed) if elapsed >= 1.0 else None

    def describe(self) -> str:
        rate = self.rate()
        speed = f"{human_bytes(rate)}/s" if rate is not None else "rate not known yet"
        if not self.total_known:
            done = len(self.listings_done & self.projects)
            return (
                f"listing {done}/{plural(len(self.projects), 'project')} · {self.photos_done:,}/"
                f"{plural(self.photos_total, 'photo')} so far · {human_bytes(self.bytes_done)} · {speed} · "
                "total not known yet"
            )
        unlisted = sum(self.unlisted.values())
        photos = self.photos_total + unlisted
        mean = self.bytes_total / self.photos_total if self.photos_total else 0.0
        size = self.bytes_total + unlisted * mean  # photos not listed yet: of the mean size so far
        left = size - self.bytes_done
        eta = self.eta(left, rate, unlisted)
        about = "~" if unlisted and mean else ""
        return (
            f"{self.photos_done:,}/{plural(photos, 'photo')} · {human_bytes(self.bytes_done)}/"
            f"{about}{human_bytes(size)} · {speed}" + (f" · ETA {human_seconds(eta)}" if eta else "")
        )

    def left(self) -> Left:
        """What is still to do, for a run that stops here: queued photos not done (a job is done
        at its outcome: `Transfer.run`), the bytes of theirs still to come, what Procore's counts
        say is not listed yet, and the listings that did not end."""
        return Left(
            photos=max(0, self.photos_total - self.photos_done),
            bytes=max(0, self.bytes_total - self.bytes_done),
            unlisted=sum(self.unlisted.values()),
            listings=len(self.projects - self.listings_done),
        )

    def eta(self, left: float, rate: float | None, unlisted: int) -> float | None:
        """Seconds until done: the bytes left at the rate of the last seconds, or, where longer,
        the requests left at the rate budget (a page per `per_page` photos not listed yet, and a
        request per photo to download: Procore does not say that file requests are free)."""
        by_bytes = left / rate if rate is not None and rate > 0 and left > 0 else None
        by_budget = None
        if self.budget is not None:
            requests = unlisted / self.budget.per_page + unlisted + self.photos_total - self.photos_done
            by_budget = self.budget.seconds(requests) if requests > 0 else None
        known = [t for t in (by_bytes, by_budget) if t is not None]
        return max(known) if known else None


class _Counting(ABC):
    """Keeps the tally; subclasses say what a change shows."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.tally = Tally(clock)

    @abstractmethod
    def _changed(self) -> None: ...

    def expect(self, project_ids: Iterable[int], *, budget: Budget | None = None) -> None:
        self.tally.projects.update(project_ids)
        self.tally.budget = budget or self.tally.budget
        self._changed()

    def remaining(self, project_id: int, photos: int) -> None:
        self.tally.unlisted[project_id] = photos
        self._changed()

    def listed(self, project_id: int) -> None:
        self.tally.listings_done.add(project_id)
        self._changed()

    def queued(self, photos: int, size: int) -> None:
        self.tally.photos_total += photos
        self.tally.bytes_total += size
        self._changed()

    def received(self, size: int) -> None:
        self.tally.bytes_done += size
        self._changed()

    def finished(self, photos: int = 1) -> None:
        self.tally.photos_done += photos
        self._changed()


class LogProgress(_Counting):
    """For cron and services: a line every `every` seconds while photos are moving. A daemon's
    turn that lists nothing new still reports (the listing ended), and a line then would say
    only that nothing is going on: none is written while nothing is listed or due."""

    def __init__(self, every: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.every = every
        self._last = clock()

    def _changed(self) -> None:
        self.tally.sample()  # the logged rate is the last 10 s's, not the time since the last line
        now, tally = self.tally.clock(), self.tally
        moving = not tally.total_known or tally.photos_done < tally.photos_total
        if moving and now - self._last >= self.every:
            self._last = now
            log.info("progress: %s", self.tally.describe())

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class BarProgress(_Counting):
    """For a terminal: a bar over the bytes queued once the total is known (a pulse while the
    listing goes on), with the tally's text beside it, redrawn by rich a few times a second."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import BarColumn, ProgressColumn, Task
        from rich.progress import Progress as RichProgress
        from rich.text import Text

        tally = self.tally

        class Described(ProgressColumn):
            max_refresh = 0.5  # the rate and ETA change at most twice a second: digits a person can read

            def render(self, task: Task) -> Text:
                return Text(tally.describe())

        self._bar = RichProgress(
            BarColumn(bar_width=24),
            Described(),
            console=Console(stderr=True),
            transient=True,
            refresh_per_second=4,
        )
        self._task = self._bar.add_task("", total=None)

    def _changed(self) -> None:
        t = self.tally
        if not t.total_known:
            self._bar.update(self._task, total=None)
        elif t.bytes_total:
            self._bar.update(self._task, total=t.bytes_total, completed=t.bytes_done)
        else:  # no sizes stated: the bar counts photos
            self._bar.update(self._task, total=max(t.photos_total, 1), completed=t.photos_done)

    def __enter__(self) -> BarProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()


def make_progress(*, enabled: bool | None = None) -> Progress:
    if enabled is None:
        enabled = sys.stderr.isatty()
    return BarProgress() if enabled else LogProgress()


def _counts(*parts: tuple[int, str]) -> str:
    """The non-zero counts, comma-separated: `3 new, 1 moved`."""
    return ", ".join(f"{n:,} {label}" for n, label in parts if n)


def _are(count: int, which: str) -> str:
    """`1 photo listed here is`, `3 photos listed here are`."""
    return f"{plural(count, 'photo')} {which} {'is' if count == 1 else 'are'}"


def _reason(photo_id: int, error: str) -> str:
    """A failure's reason without the photo it is about, which the line already names."""
    return error.removeprefix(f"photo {photo_id}: ")


def _backfill_note(r: ProjectResult) -> str:
    """What a first backfill still has to list, and that the next run goes on with it."""
    if r.proven_back_to is None:
        return "first backfill not done: no slice proven yet; the next run goes on"
    older = f" ({plural(r.backfill_photos, 'photo')})" if r.backfill_photos is not None else ""
    return (
        f"first backfill not done: listed newest first back to {human_time(r.proven_back_to)}; "
        f"older photos{older} still to list, the next run goes on"
    )


def _project_lines(r: ProjectResult) -> list[str]:
    c = r.changes
    head = f"{r.project.name} ({r.project.id})"
    took = f"{plural(r.requests, 'request')} in {human_seconds(r.seconds)}"
    fetch = c[Change.NEW] + c[Change.REPLACED] + r.retried
    if r.dry_run:
        would = _counts(
            (c[Change.MOVED] + c[Change.RESTORED], "to move"),
            (c[Change.METADATA], "to update metadata"),
            (r.would_delete, "gone from Procore to mark deleted"),
        )
        lines = [
            f"{head}: {plural(r.listed, 'photo')} listed; would download {plural(fetch, 'photo')}"
            + (f" ({human_bytes(r.would_bytes)})" if r.would_bytes else "")
            + (
                f": {_counts((c[Change.NEW], 'new'), (c[Change.REPLACED], 'replaced'), (r.retried, 'due'))}"
                if fetch
                else ""
            )
            + (f"; {would}" if would else "")
        ]
    elif r.helped:
        done = _counts((r.downloaded, f"downloaded ({human_bytes(r.bytes)})"), (len(r.failures), "failed"))
        lines = [f"{head}: listed by another worker; this one {done or 'had nothing to do'}; {took}"]
    else:
        changes = _counts(
            (c[Change.NEW], "new"),
            (c[Change.REPLACED], "replaced"),
            (c[Change.MOVED], "moved"),
            (c[Change.METADATA], "metadata-only"),
            (c[Change.RESTORED], "restored"),
        )
        done = _counts(
            (r.downloaded, f"downloaded ({human_bytes(r.bytes)})"),
            (r.adopted, "already in the mirror (hashed, not fetched)"),
            (r.relocated, "updated in place"),
            (r.vanished, "deleted in Procore meanwhile"),
            (len(r.failures), "failed"),
        )
        listed = f"{plural(r.listed, 'photo')} listed" + (f" ({changes})" if changes else ", nothing changed")
        lines = [f"{head}: {listed}" + (f"; {done}" if done else "") + f"; {took}"]
    notes = [
        (r.deleted_upstream or r.trashed or r.removed)
        and f"{plural(r.deleted_upstream, 'photo')} gone from Procore marked deleted"
        + (
            f"; {_counts((r.trashed, 'moved to the trash'), (r.removed, 'removed'))}"
            if r.trashed or r.removed
            else ""
        ),
        r.elsewhere and f"{_are(r.elsewhere, 'listed here')} also in another project and kept in its folder",
        r.deletions_blocked and f"deletions stopped: {r.deletions_blocked}",
        r.deletions_unchecked and f"deletions not checked: {r.deletions_unchecked}",
        r.stopped,
        r.backfill_left and _backfill_note(r),
        r.waiting
        and f"{_are(r.waiting, 'that failed before')} not mirrored yet and wait for the next try "
        "(`syncer status` lists them, `syncer retry-failed` tries them now)",
        r.listing_error and f"listing failed: {r.listing_error}",
        *(f"listing: {note}" for note in r.listing_notes),
        *(f"listing not proven complete: {problem}" for problem in r.unproven),
        *(f"a record Procore listed cannot be read, so it is not mirrored: {u}" for u in r.unreadable[:20]),
        len(r.unreadable) > 20 and f"... and {plural(len(r.unreadable) - 20, 'more unreadable record')}",
        not r.dry_run
        and not r.helped
        and not r.checkpoint_advanced
        and "checkpoint kept where it was; the next run lists this window again",
        *(f"failed: photo {pid} -> {path}: {_reason(pid, error)}" for pid, path, error in r.failures[:20]),
        len(r.failures) > 20 and f"... and {len(r.failures) - 20:,} more (`syncer status` lists them)",
    ]
    return lines + [f"  {note}" for note in notes if note]


def render_summary(summary: RunSummary) -> str:
    """The run summary: one block per project, then the totals, counting only what happened."""
    lines = [line for r in summary.results for line in _project_lines(r)]
    lines.extend(summary.errors)
    projects = plural(len(summary.results), "project")
    took = f"in {human_seconds(summary.seconds)}"
    if summary.results and all(r.dry_run for r in summary.results):
        fetch = sum(r.changes[Change.NEW] + r.changes[Change.REPLACED] + r.retried for r in summary.results)
        size = sum(r.would_bytes for r in summary.results)
        moves = sum(r.changes[Change.MOVED] + r.changes[Change.RESTORED] for r in summary.results)
        metadata = sum(r.changes[Change.METADATA] for r in summary.results)
        gone = sum(r.would_delete for r in summary.results)
        would = [f"download {plural(fetch, 'photo')}" + (f" ({human_bytes(size)})" if size else "")]
        would += [f"move {plural(moves, 'photo')}"] * bool(moves)
        would += [f"update the metadata of {plural(metadata, 'photo')}"] * bool(metadata)
        would += [f"mark {plural(gone, 'photo')} gone from Procore deleted"] * bool(gone)
        dry = "dry run, nothing written" + (
            f", INTERRUPTED ({summary.interrupted})" if summary.interrupted else ""
        )
        lines.append(f"{dry}: {projects}; a sync would {', '.join(would)}, {took}")
        return terminal_lines(lines)
    downloaded = sum(r.downloaded for r in summary.results)
    size = sum(r.bytes for r in summary.results)
    failed = sum(len(r.failures) for r in summary.results)
    rate = f" at {human_bytes(size / summary.seconds)}/s" if size and summary.seconds > 0 else ""
    fetched = f"{plural(downloaded, 'photo')} downloaded" + (f" ({human_bytes(size)}{rate})" if size else "")
    failures = f", {failed:,} failed" if failed else ""
    lines.append(f"{_verdict(summary)}: {projects}, {fetched}{failures} {took}")
    if summary.left is not None:
        lines.append(f"left for the next run: {_left(summary.left)}")
    if summary.gallery is not None:
        lines.append(_gallery_line(summary.gallery))
    return terminal_lines(lines)


def _outcome(summary: RunSummary) -> str:
    if summary.interrupted:
        return "interrupted"
    return "complete" if summary.exit_code == ExitCode.OK else "incomplete"


def _verdict(summary: RunSummary) -> str:
    """The total line's first words: `complete`, or in capitals how the run fell short."""
    outcome = _outcome(summary)
    if outcome == "interrupted":
        return f"INTERRUPTED ({summary.interrupted})"
    return outcome if outcome == "complete" else outcome.upper()


def _left(left: Left) -> str:
    """What a run stopped before its end leaves to the next one, from its tallies."""
    parts = [
        left.photos
        and f"{plural(left.photos, 'photo')} listed and not in the mirror yet"
        + (f" ({human_bytes(left.bytes)} to download)" if left.bytes else ""),
        left.unlisted and f"about {plural(left.unlisted, 'photo')} not listed yet",
        left.listings and f"{plural(left.listings, 'project')} not listed to the end",
    ]
    return "; ".join(part for part in parts if part) or "nothing to list or download"


def _gallery_line(report: GalleryReport) -> str:
    """The gallery's build, apart from the sync's figures: its own time, and where to open it."""
    made = f"{plural(report.pages, 'project page')} written, {plural(report.thumbnails, 'thumbnail')} made"
    return f"gallery: {made} in {human_seconds(report.seconds)}; open {report.index.absolute().as_uri()}"


def summary_document(summary: RunSummary) -> dict[str, Any]:
    """The run summary as one JSON object, for `--log-format json`: every count, every failure."""
    return {
        "event": "summary",
        "outcome": _outcome(summary),
        "interrupted": summary.interrupted,
        "left": asdict(summary.left) if summary.left else None,
        "exit_code": int(summary.exit_code),
        "seconds": round(summary.seconds, 3),
        "errors": summary.errors,
        "gallery": str(summary.gallery.index) if summary.gallery else None,
        "gallery_build": {
            "seconds": round(summary.gallery.seconds, 3),
            "pages": summary.gallery.pages,
            "thumbnails": summary.gallery.thumbnails,
        }
        if summary.gallery
        else None,
        "projects": [
            {
                "id": r.project.id,
                "name": r.project.name,
                "dry_run": r.dry_run,
                "listed": r.listed,
                "changes": {str(change): n for change, n in r.changes.items() if n},
                "downloaded": r.downloaded,
                "bytes": r.bytes,
                "would_download_bytes": r.would_bytes,
                "would_mark_deleted": r.would_delete,
                "due_from_earlier_runs": r.retried,
                "adopted": r.adopted,
                "updated_in_place": r.relocated,
                "deleted_in_procore_meanwhile": r.vanished,
                "deleted_upstream": r.deleted_upstream,
                "trashed": r.trashed,
                "removed": r.removed,
                "waiting": r.waiting,
                "requests": r.requests,
                "seconds": round(r.seconds, 3),
                "checkpoint_advanced": r.checkpoint_advanced,
                "backfill_left": r.backfill_left,
                "backfill_proven_back_to": r.proven_back_to.isoformat() if r.proven_back_to else None,
                "backfill_photos_left": r.backfill_photos,
                "listing_error": r.listing_error,
                "unproven": r.unproven,
                "unreadable": r.unreadable,
                "stopped": r.stopped,
                "deletions_blocked": r.deletions_blocked,
                "failures": [
                    {"id": pid, "path": path, "error": _reason(pid, error)} for pid, path, error in r.failures
                ],
            }
            for r in summary.results
        ],
    }


def render_summary_json(summary: RunSummary) -> str:
    return terminal_json(json.dumps(summary_document(summary), ensure_ascii=False))
