"""Which project the daemon syncs next, and whether the rate budget lets it keep the schedule.

One queue holds every project. A project whose first backfill is under way (newest first, a
slice a turn: `engine.py`) is due again as soon as its turn ends, taking turns with the others;
any other project is due one interval after its last turn began; the
interval is the schedule's period (`schedule.incremental`) for a project that changed in the last
day, and longer the longer it has been quiet (`slowdown`, at most `schedule.quiet_slowdown`
times). The next turn goes to the project furthest past its due time, measured in its own
intervals, so every project comes round, the most stale first, and a quiet project never waits
behind a busy one for more than its own interval.

Full reconciles (`schedule.full`) share the queue: each project is reconciled once per period of
`schedule.full`, the projects never reconciled spread evenly across the first period, and at most
half the parallel turns (at least one) are reconciles, so incremental turns never stop.

From what turns cost (requests and seconds, a moving average per project and kind) and the
budget the pacer observed, `Outlook` says how long a round of every project takes at best; when
that is longer than the schedule asks, the daemon is behind schedule and says so.

Everything here is plain arithmetic on an injected clock (event-loop seconds), so the daemon
decides nothing the tests cannot replay.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from apscheduler.triggers.cron import CronTrigger

from syncer.config import Every, Schedule

QUIET = ((timedelta(days=1), 1), (timedelta(days=7), 2), (timedelta(days=30), 4))
"""A project whose newest change is younger than the first figure comes round every `slowdown`
periods; beyond the last, `schedule.quiet_slowdown` periods."""
BEHIND = 1.1
"""The achievable cycle, as a multiple of the schedule's, past which the daemon is behind."""
CAUGHT_UP = 1.0
"""... and back under which it has caught up (apart, so the verdict does not flap)."""
SMOOTHING = 0.3
"""Weight of a turn's cost in its project's moving average."""
SAMPLE_FIRES = 50


def period_of(schedule: Schedule, timezone: str) -> float:
    """Seconds between turns a schedule asks for: `every`, or a cron expression's mean gap over
    its next fire times (`0 3 * * 0` is a week)."""
    if isinstance(schedule, Every):
        return schedule.every
    trigger = CronTrigger.from_crontab(schedule, timezone=timezone)
    first = previous = trigger.get_next_fire_time(None, datetime.now(trigger.timezone))
    assert first is not None
    fires = 0
    while fires < SAMPLE_FIRES and previous - first < timedelta(days=28):
        following = trigger.get_next_fire_time(previous, previous + timedelta(seconds=1))
        if following is None:
            break
        previous, fires = following, fires + 1
    return (previous - first).total_seconds() / fires if fires else 86400.0


def slowdown(last_change: datetime | None, now: datetime, *, most: int) -> int:
    """How many periods a project waits between incremental turns, by the age of its newest
    change: 1 within a day, 2 within a week, 4 within 30 days, else `most` (also for a project
    without photos). Never more than `most`."""
    if last_change is None:
        return most
    age = now - last_change
    for younger_than, factor in QUIET:
        if age < younger_than:
            return min(factor, most)
    return most


@dataclass
class Cost:
    """What a turn of one kind costs one project, as a moving average."""

    requests: float = 1.0
    seconds: float = 0.0
    turns: int = 0

    def add(self, requests: int, seconds: float) -> None:
        if self.turns == 0:
            self.requests, self.seconds = float(requests), seconds
        else:
            self.requests += SMOOTHING * (requests - self.requests)
            self.seconds += SMOOTHING * (seconds - self.seconds)
        self.turns += 1


@dataclass
class Entry:
    project_id: int
    last_turn: float
    """When its last incremental (or full) turn began, event-loop seconds; -inf: not since start
    and not known to be synced."""
    full_due: float
    last_change: datetime | None
    busy: str | None = None
    """The kind of the turn running now."""
    backfilling: bool = False
    """Its first backfill is not done: it is due again as soon as its turn ends."""
    incremental: Cost = field(default_factory=Cost)
    full: Cost = field(default_factory=Cost)


@dataclass(frozen=True)
class Turn:
    project_id: int
    kind: str
    """"incremental" or "full"."""


@dataclass(frozen=True)
class Outlook:
    """The round the budget allows against the round the schedule asks."""

    period: float
    """Seconds the schedule asks between two turns of a project that changes."""
    cycle: float
    """Seconds between two turns of such a project that the budget and the parallel turns allow."""
    rate: float | None
    """Requests a second this process may spend, as observed."""
    requests: float
    """Requests one period's turns cost, as measured."""
    seconds: float
    """Seconds one period's turns take, one after the other, as measured."""
    parallel: int

    @property
    def ratio(self) -> float:
        return self.cycle / self.period

    @property
    def budget_bound(self) -> bool:
        """Whether the rate budget, rather than the parallel turns, sets the cycle."""
        return bool(self.rate) and self.requests / (self.rate or 1.0) >= self.seconds / self.parallel


class Queue:
    """Every project's place in the daemon's round; the daemon asks it what to run next."""

    def __init__(
        self,
        *,
        period: float,
        full_period: float | None,
        quiet_slowdown: int,
        parallel: int,
        started: float,
    ) -> None:
        self.period = period
        self.full_period = full_period
        self.quiet_slowdown = quiet_slowdown
        self.parallel = parallel
        self.started = started
        self.entries: dict[int, Entry] = {}

    def configure(
        self, *, period: float, full_period: float | None, quiet_slowdown: int, parallel: int
    ) -> None:
        """A reloaded schedule; the projects keep their places."""
        if full_period != self.full_period:
            for entry in self.entries.values():
                entry.full_due = self._full_due(entry.full_due - (self.full_period or 0.0), full_period)
        self.period, self.full_period = period, full_period
        self.quiet_slowdown, self.parallel = quiet_slowdown, parallel

    def _full_due(self, last_full: float, full_period: float | None) -> float:
        return math.inf if full_period is None else last_full + full_period

    def update(
        self,
        project_ids: Iterable[int],
        *,
        now: float,
        synced_ago: Mapping[int, float],
        full_ago: Mapping[int, float],
        last_change: Mapping[int, datetime | None],
        backfilling: Iterable[int] = (),
    ) -> None:
        """The projects to sync now. A new one takes its place from how long ago it was last synced
        and reconciled (seconds, from the database; absent: never); projects no longer wanted
        leave the queue."""
        wanted = list(dict.fromkeys(project_ids))
        for gone in set(self.entries) - set(wanted):
            del self.entries[gone]
        fresh = [pid for pid in wanted if pid not in self.entries]
        never = [pid for pid in fresh if pid not in full_ago]
        for pid in fresh:
            if pid in full_ago:
                full_due = self._full_due(now - full_ago[pid], self.full_period)
            else:  # never reconciled: spread across the first period, not all at once
                spread = (self.full_period or 0.0) * (never.index(pid) + 1) / (len(never) + 1)
                full_due = now + spread if self.full_period is not None else math.inf
            self.entries[pid] = Entry(
                pid,
                last_turn=now - synced_ago[pid] if pid in synced_ago else -math.inf,
                full_due=full_due,
                last_change=last_change.get(pid),
            )
        for pid in wanted:
            if pid in last_change and last_change[pid] is not None:
                self.entries[pid].last_change = last_change[pid]
        for pid in set(backfilling) & set(self.entries):
            self.entries[pid].backfilling = True

    def interval(self, entry: Entry, wall: datetime) -> float:
        return self.period * slowdown(entry.last_change, wall, most=self.quiet_slowdown)

    def _lateness(self, entry: Entry, now: float, wall: datetime) -> float:
        """How far past its due time the project's incremental turn is, in its own intervals
        (negative: not yet due)."""
        if entry.last_turn == -math.inf:
            return math.inf
        if entry.backfilling:  # due at once, in turn with the others: counted from its last turn
            return (now - entry.last_turn) / self.period
        interval = self.interval(entry, wall)
        return (now - entry.last_turn - interval) / interval

    def next(self, now: float, wall: datetime) -> Turn | None:
        """The turn to start now, if a slot is free and some project is due: the latest first."""
        free, fulls_allowed = self._slots()
        if not free:
            return None
        best: tuple[float, Turn] | None = None
        for entry in self.entries.values():
            if entry.busy:
                continue
            late, kind = self._lateness(entry, now, wall), "incremental"
            if fulls_allowed and now >= entry.full_due:
                # A reconcile also brings the project up to date: it takes the project's place,
                # as late as its incremental turn or, counted in periods, as late as it is.
                late, kind = max(late, (now - entry.full_due) / self.period), "full"
            if late >= 0 and (best is None or late > best[0]):
                best = (late, Turn(entry.project_id, kind))
        return None if best is None else best[1]

    def _slots(self) -> tuple[bool, bool]:
        """Whether a slot is free, and whether a reconcile may take it (at most half the slots)."""
        running = [e.busy for e in self.entries.values() if e.busy]
        reconciling = len(running) - running.count("incremental")
        fulls_allowed = self.full_period is not None and reconciling < max(1, self.parallel // 2)
        return len(running) < self.parallel, fulls_allowed

    def wake_at(self, now: float, wall: datetime) -> float:
        """When `next` could next start a turn (event-loop seconds; `now` if it can now). Never
        while every slot is busy, and never for a reconcile the slots do not allow: only a turn's
        end changes that, and it wakes the dispatcher itself. (Counting those as due made the
        dispatcher spin, a whole core, for as long as the daemon was behind.)"""
        free, fulls_allowed = self._slots()
        if not free:
            return math.inf
        soonest = math.inf
        for entry in self.entries.values():
            if entry.busy:
                continue
            soonest = min(soonest, self._due(entry, wall), entry.full_due if fulls_allowed else math.inf)
        return max(now, soonest)

    def _due(self, entry: Entry, wall: datetime) -> float:
        return entry.last_turn if entry.backfilling else entry.last_turn + self.interval(entry, wall)

    def started_turn(self, turn: Turn, now: float) -> None:
        entry = self.entries[turn.project_id]
        entry.busy = turn.kind
        entry.last_turn = now
        if turn.kind == "full" and self.full_period is not None:
            entry.full_due = now + self.full_period

    def finished_turn(
        self,
        turn: Turn,
        *,
        requests: int,
        seconds: float,
        changed_at: datetime | None,
        backfill_left: bool = False,
    ) -> None:
        """A turn ended; `changed_at` is when a change was found in it (None: none);
        `backfill_left`: the project's first backfill goes on in its next turn."""
        entry = self.entries.get(turn.project_id)
        if entry is None:  # left the queue while it ran
            return
        entry.busy, entry.backfilling = None, backfill_left
        (entry.full if turn.kind == "full" else entry.incremental).add(requests, seconds)
        if changed_at is not None and (entry.last_change is None or changed_at > entry.last_change):
            entry.last_change = changed_at

    def outlook(self, rate: float | None, wall: datetime) -> Outlook:
        """The achievable cycle: the schedule's period, stretched by as much as the requests one
        period's turns need exceed what the budget gives in a period, or as much as their seconds
        exceed what the parallel turns can run in one."""
        requests = seconds = 0.0
        for entry in self.entries.values():
            share = 1.0 / slowdown(entry.last_change, wall, most=self.quiet_slowdown)
            requests += entry.incremental.requests * share
            seconds += entry.incremental.seconds * share
            if self.full_period is not None:
                requests += entry.full.requests * self.period / self.full_period
                seconds += entry.full.seconds * self.period / self.full_period
        stretch = max(1.0, seconds / (self.parallel * self.period))
        if rate:
            stretch = max(stretch, requests / (rate * self.period))
        return Outlook(self.period, self.period * stretch, rate, requests, seconds, self.parallel)

    def staleness(self, now: float) -> dict[int, float]:
        """Seconds since each project's last turn began (inf: none since start, none known)."""
        return {pid: now - e.last_turn for pid, e in self.entries.items()}

    def next_turns(self, now: float, wall: datetime) -> dict[int, float]:
        """When each idle project falls due (event-loop seconds; a running one: None is left out)."""
        return {pid: min(self._due(e, wall), e.full_due) for pid, e in self.entries.items() if not e.busy}
