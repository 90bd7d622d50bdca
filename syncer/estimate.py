"""`syncer estimate`: what a first backfill and a day of incrementals cost, at the rate budget.

Procore gives a company a budget of requests an hour and per spike window (its documented
example: 3,600 an hour and 25 per 10 s), shared with every other integration of the company;
this process spends `procore.workers_share` of it. Time is what the budget allows, not what the
network could do: with files counted, a first backfill of a million photos is a million requests.
Procore does not document whether file downloads count, so every figure is given both ways.

The counts are Procore's own `Total`s, one request per project for its photos (with
`sync.filters`) and one for those changed in the last day; nothing is written, and neither the
database nor the mirror is needed.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from syncer.config import Every, Settings
from syncer.listing import count_window, slice_target, slices_to_reach
from syncer.procore.api import ProcoreApi
from syncer.procore.http import TALLY, ProcoreError, Tally
from syncer.procore.models import BadRecord, Photo, Project
from syncer.procore.query import ImageQuery
from syncer.schedule import period_of
from syncer.words import plural

DAY = timedelta(days=1)


@dataclass(frozen=True)
class Budget:
    """The requests this process may send to Procore, and the page size its listing asks for."""

    hourly: int
    spike: int
    spike_window: float
    share: float = 1.0
    per_page: int = 1000

    @classmethod
    def of(cls, settings: Settings) -> Budget:
        p = settings.procore
        return cls(p.hourly_limit, p.spike_limit, p.spike_window, p.workers_share, settings.sync.per_page)

    @property
    def per_hour(self) -> float:
        return self.hourly * self.share

    @property
    def spike_rate(self) -> float:
        """Requests a second the spike window allows."""
        return self.spike * self.share / self.spike_window

    def seconds(self, requests: float) -> float:
        """How long `requests` take from a fresh budget: each hour's allowance at the spike
        window's pace, then the wait for the next hour (if the spike window does not bind)."""
        if requests <= 0:
            return 0.0
        if self.spike_rate * 3600 <= self.per_hour:
            return requests / self.spike_rate
        hours = math.ceil(requests / self.per_hour) - 1
        return hours * 3600 + (requests - hours * self.per_hour) / self.spike_rate

    def describe(self) -> str:
        share = f" x workers_share {self.share:g}" if self.share != 1 else ""
        return (
            f"{plural(self.hourly, 'request')} an hour{share}, {self.spike * self.share:g} per "
            f"{self.spike_window:g} s"
        )


def turns_a_day(schedule: str | Every, timezone: str) -> int:
    """How often `schedule.incremental` brings a changing project round in a day."""
    return max(1, math.floor(DAY.total_seconds() / period_of(schedule, timezone)))


def backfill_listing(photos: int, per_page: int, age: timedelta | None = None) -> int:
    """Listing requests of a project's first backfill whose oldest photo is `age` old: its count,
    and per slice (by photos, or by how far back a slice may reach) a count to size it, the
    turn's look for changes and a page, plus the pages beyond one a slice."""
    slices = max(1, math.ceil(photos / slice_target(per_page)))
    if photos and age is not None:
        slices = max(slices, slices_to_reach(age))
    return 1 + 3 * slices + max(0, math.ceil(photos / per_page) - slices)


@dataclass
class Counted:
    project: Project
    photos: int
    changed: int
    """Photos shown as updated in the last 24 hours: the day's changes."""
    age: timedelta | None = None
    """How old its oldest photo is (by `created_at`, never later than `updated_at`)."""


@dataclass
class Estimate:
    company_id: int
    budget: Budget
    turns: int
    """Incremental turns a day per project (`schedule.incremental`)."""
    schedule: str
    projects: list[Counted] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Projects Procore would not count: the figures leave them out."""
    requests: int = 0
    """What counting took."""

    @property
    def photos(self) -> int:
        return sum(c.photos for c in self.projects)

    @property
    def backfill_listing(self) -> int:
        return sum(backfill_listing(c.photos, self.budget.per_page, c.age) for c in self.projects)

    @property
    def day_listing(self) -> int:
        """A request per project per turn, and the pages the day's changes add."""
        per_page = self.budget.per_page
        return self.turns * len(self.projects) + sum(math.ceil(c.changed / per_page) for c in self.projects)

    @property
    def day_files(self) -> int:
        """A download per changed photo at most (an edit of metadata downloads nothing)."""
        return sum(c.changed for c in self.projects)

    def figures(self) -> dict[str, Any]:
        budget = self.budget
        backfill, day = self.backfill_listing, self.day_listing
        return {
            "company_id": self.company_id,
            "projects": len(self.projects),
            "photos": self.photos,
            "changed_last_day": self.day_files,
            "budget": {
                "hourly_limit": budget.hourly,
                "spike_limit": budget.spike,
                "spike_window_seconds": budget.spike_window,
                "workers_share": budget.share,
                "per_page": budget.per_page,
            },
            "first_backfill": {
                "listing_requests": backfill,
                "file_requests": self.photos,
                "seconds_files_counted": round(budget.seconds(backfill + self.photos), 1),
                "seconds_files_not_counted": round(budget.seconds(backfill), 1),
            },
            "day_of_incrementals": {
                "schedule": self.schedule,
                "turns_per_project": self.turns,
                "listing_requests": day,
                "file_requests": self.day_files,
                "seconds_files_counted": round(budget.seconds(day + self.day_files), 1),
                "seconds_files_not_counted": round(budget.seconds(day), 1),
            },
            "counting_requests": self.requests,
            "errors": self.errors,
        }


def render_estimate(estimate: Estimate) -> str:
    from syncer.report import human_seconds

    f = estimate.figures()
    backfill, day = f["first_backfill"], f["day_of_incrementals"]

    def both(part: dict[str, Any]) -> list[str]:
        counted = plural(part["listing_requests"] + part["file_requests"], "request")
        listing = plural(part["listing_requests"], "request")
        return [
            f"  file requests counted:     {counted}, {human_seconds(part['seconds_files_counted'])}",
            f"  file requests not counted: {listing}, {human_seconds(part['seconds_files_not_counted'])} "
            "(and the downloads' own time)",
        ]

    lines = [
        f"company {f['company_id']}: {plural(f['projects'], 'project')}, {plural(f['photos'], 'photo')} "
        f"({plural(f['changed_last_day'], 'photo')} changed in the last 24 hours)",
        f"budget: {estimate.budget.describe()}; pages of {plural(estimate.budget.per_page, 'photo')} "
        "(sync.per_page)",
        f"first backfill: {plural(backfill['listing_requests'], 'listing request')} and "
        f"{plural(backfill['file_requests'], 'file request')}",
        *both(backfill),
        f"a day of incrementals ({day['schedule']}, {plural(day['turns_per_project'], 'turn')} a project): "
        f"{plural(day['listing_requests'], 'listing request')} and "
        f"{plural(day['file_requests'], 'file request')}",
        *both(day),
        *(
            ["  more than a day's budget even with file requests free: turns come less often than scheduled"]
            if day["seconds_files_not_counted"] > DAY.total_seconds()
            else []
        ),
        f"counting took {plural(f['counting_requests'], 'request')}",
        *(f"not counted: {error}" for error in estimate.errors),
    ]
    return "\n".join(lines)


async def estimate(settings: Settings) -> Estimate:
    """Count the configured company's projects and photos, and what syncing them costs."""
    from syncer.runner import Selection, procore_client

    schedule = settings.schedule.incremental
    described = f"every {schedule.every:g} s" if isinstance(schedule, Every) else f"cron '{schedule}'"
    result = Estimate(
        settings.procore.company_id,
        Budget.of(settings),
        turns_a_day(schedule, settings.schedule.timezone),
        described,
    )
    filters = settings.sync.filters.to_filters()
    tally = Tally()
    counting = TALLY.set(tally)
    try:
        async with procore_client(settings, connections=4) as api:
            projects, result.errors = await Selection(settings, api).projects()
            for project in projects:
                await _count(api, project, ImageQuery(project_id=project.id, filters=filters), result)
    finally:
        TALLY.reset(counting)
        result.requests = tally.requests
    return result


async def _count(api: ProcoreApi, project: Project, query: ImageQuery, into: Estimate) -> None:
    """Count one project's photos and its last day's changes (two requests) into `into`."""
    now = datetime.now(UTC) + timedelta(seconds=api.http.pacer.clock_offset)
    try:
        everything = await count_window(api, query, None, now)
        day = await count_window(api, query, now - DAY, now)
    except (ProcoreError, BadRecord) as exc:
        into.errors.append(f"project {project.id}: {exc}")
        return
    if everything.total is None or day.total is None:
        into.errors.append(f"project {project.id}: Procore's answer gave no Total")
        return
    oldest = None
    if everything.items:
        with contextlib.suppress(BadRecord):
            oldest = Photo.from_api(everything.items[0]).created_at
    age = now - oldest if oldest is not None else None
    into.projects.append(Counted(project, everything.total, day.total, age))
