"""What a person sees: a progress bar on a terminal, periodic log lines elsewhere, and summaries."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Protocol

from syncer.plan import Change
from syncer.result import ProjectResult, RunSummary

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
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class Progress(Protocol):
    def queued(self, photos: int, size: int) -> None: ...
    def received(self, size: int) -> None: ...
    def finished(self, photos: int = 1) -> None: ...
    def __enter__(self) -> Progress: ...
    def __exit__(self, *exc: object) -> None: ...


@dataclass
class LogProgress:
    """For cron and services: a line every `every` seconds while photos are moving."""

    every: float = 30.0
    photos_total: int = 0
    photos_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    _started: float = field(default_factory=time.monotonic)
    _last: float = field(default_factory=time.monotonic)

    def queued(self, photos: int, size: int) -> None:
        self.photos_total += photos
        self.bytes_total += size

    def received(self, size: int) -> None:
        self.bytes_done += size
        self._maybe_log()

    def finished(self, photos: int = 1) -> None:
        self.photos_done += photos
        self._maybe_log()

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            rate = self.bytes_done / max(now - self._started, 1e-9)
            log.info(
                "progress: %d/%d photos, %s/%s, %s/s",
                self.photos_done,
                self.photos_total,
                human_bytes(self.bytes_done),
                human_bytes(self.bytes_total),
                human_bytes(rate),
            )

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class BarProgress:
    """For a terminal: one bar over the bytes queued, with rate and ETA; photo counts beside it."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._bar.add_task("", total=0)
        self._photos_total = 0
        self._photos_done = 0
        self._bytes_total = 0

    def _describe(self) -> None:
        self._bar.update(self._task, description=f"photos {self._photos_done}/{self._photos_total}")

    def queued(self, photos: int, size: int) -> None:
        self._photos_total += photos
        self._bytes_total += size
        self._bar.update(self._task, total=self._bytes_total)
        self._describe()

    def received(self, size: int) -> None:
        self._bar.advance(self._task, size)

    def finished(self, photos: int = 1) -> None:
        self._photos_done += photos
        self._describe()

    def __enter__(self) -> BarProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()


def make_progress(*, enabled: bool | None = None) -> Progress:
    if enabled is None:
        enabled = sys.stderr.isatty()
    return BarProgress() if enabled else LogProgress()


def _project_lines(r: ProjectResult) -> list[str]:
    c = r.changes
    head = f"{r.project.name} (project {r.project.id})"
    if r.dry_run:
        lines = [
            f"{head}: would download {c[Change.NEW] + c[Change.REPLACED] + r.retried} "
            f"(new {c[Change.NEW]}, replaced {c[Change.REPLACED]}, due from earlier runs {r.retried}), "
            f"would update {c[Change.MOVED] + c[Change.METADATA]}; {r.listed} listed"
        ]
    elif r.helped:
        lines = [
            f"{head}: listed by another worker; this one downloaded {r.downloaded} "
            f"({human_bytes(r.bytes)}), {len(r.failures)} failed; "
            f"{r.requests} requests in {human_seconds(r.seconds)}"
        ]
    else:
        lines = [
            f"{head}: {r.listed} listed, {c[Change.NEW]} new, {c[Change.REPLACED]} replaced, "
            f"{c[Change.MOVED]} moved, {c[Change.METADATA]} metadata-only, {c[Change.RESTORED]} restored; "
            f"{r.downloaded} downloaded ({human_bytes(r.bytes)}), "
            + (f"{r.adopted} already in the mirror (hashed, not fetched), " if r.adopted else "")
            + f"{r.relocated} updated in place, "
            + (f"{r.vanished} deleted in Procore meanwhile, " if r.vanished else "")
            + f"{len(r.failures)} failed; {r.requests} requests in {human_seconds(r.seconds)}"
        ]
    notes = [
        (r.deleted_upstream or r.trashed or r.removed)
        and f"{r.deleted_upstream} photos gone from Procore marked deleted; "
        f"{r.trashed} files moved to the trash, {r.removed} removed",
        r.elsewhere
        and f"{r.elsewhere} photos listed here are also in another project and stay in its folder",
        r.deletions_blocked and f"deletions stopped: {r.deletions_blocked}",
        r.deletions_unchecked and f"deletions not checked: {r.deletions_unchecked}",
        r.stopped,
        r.waiting
        and f"{r.waiting} photos that failed before are not mirrored yet and wait for their next try "
        "(`syncer status` lists them, `syncer retry-failed` tries them now)",
        r.listing_error and f"listing failed: {r.listing_error}",
        *(f"listing: {note}" for note in r.listing_notes),
        *(f"listing not proven complete: {problem}" for problem in r.unproven),
        not r.dry_run
        and not r.helped
        and not r.checkpoint_advanced
        and "checkpoint kept where it was; the next run lists this window again",
        *(f"failed: photo {pid} -> {path}: {error}" for pid, path, error in r.failures[:20]),
        len(r.failures) > 20 and f"... and {len(r.failures) - 20} more (see `syncer status`)",
    ]
    return lines + [f"  {note}" for note in notes if note]


def render_summary(summary: RunSummary) -> str:
    """The run summary: one block per project, then the totals. Failures are named."""
    lines = [line for r in summary.results for line in _project_lines(r)]
    lines.extend(f"error: {e}" for e in summary.errors)
    downloaded = sum(r.downloaded for r in summary.results)
    size = sum(r.bytes for r in summary.results)
    failed = sum(len(r.failures) for r in summary.results)
    rate = size / summary.seconds if summary.seconds > 0 else 0.0
    verdict = "complete" if summary.exit_code == 0 else "INCOMPLETE"
    lines.append(
        f"{verdict}: {len(summary.results)} projects, {downloaded} photos downloaded "
        f"({human_bytes(size)}, {human_bytes(rate)}/s), {failed} failed, in {human_seconds(summary.seconds)}"
    )
    return "\n".join(lines)
