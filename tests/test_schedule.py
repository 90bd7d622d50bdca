"""The daemon's round (`schedule.Queue`) on a fake clock: who goes next, how often, and whether the
budget keeps the schedule. The daemon tests check the same from outside, with a real process."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from syncer.config import Every
from syncer.schedule import Queue, Turn, period_of, slowdown

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
PERIOD = 900.0


def queue(
    projects: int, *, full_period: float | None = None, parallel: int = 1, quiet: int = 8, changed: float = 0
) -> Queue:
    """A queue of `projects` synced `changed` days after their last change; never reconciled."""
    q = Queue(period=PERIOD, full_period=full_period, quiet_slowdown=quiet, parallel=parallel, started=0.0)
    q.update(
        range(1, projects + 1),
        now=0.0,
        synced_ago={pid: 0.0 for pid in range(1, projects + 1)},
        full_ago={},
        last_change={pid: NOW - timedelta(days=changed) for pid in range(1, projects + 1)},
    )
    return q


def run_round(q: Queue, until: float, *, turn_seconds: float, requests: int = 1) -> list[tuple[float, Turn]]:
    """Drive the queue as the daemon does, each turn taking `turn_seconds`; the turns started."""
    started: list[tuple[float, Turn]] = []
    running: list[tuple[float, Turn]] = []
    now = 0.0
    while now < until:
        while (turn := q.next(now, NOW)) is not None:
            q.started_turn(turn, now)
            started.append((now, turn))
            running.append((now + turn_seconds, turn))
        now = min([*(end for end, _ in running), q.wake_at(now, NOW)])
        for end, turn in [r for r in running if r[0] <= now]:
            running.remove((end, turn))
            q.finished_turn(turn, requests=requests, seconds=turn_seconds, changed_at=None)
    return started


def test_a_weekly_cron_is_a_week_and_every_is_its_seconds() -> None:
    assert period_of("0 3 * * 0", "UTC") == 7 * 86400
    assert period_of("*/15 * * * *", "Europe/Berlin") == 900
    assert period_of(Every(every=42), "UTC") == 42


@pytest.mark.parametrize(("age_days", "expected"), [(0.5, 1), (3, 2), (20, 4), (31, 8), (400, 8), (None, 8)])
def test_a_quiet_project_comes_round_less_often_by_the_age_of_its_last_change(
    age_days: float | None, expected: int
) -> None:
    changed = None if age_days is None else NOW - timedelta(days=age_days)
    assert slowdown(changed, NOW, most=8) == expected


def test_quiet_slowdown_caps_the_rule_and_1_turns_it_off() -> None:
    assert slowdown(NOW - timedelta(days=20), NOW, most=3) == 3
    assert slowdown(None, NOW, most=1) == 1


def test_a_project_never_synced_goes_first() -> None:
    q = queue(3)
    q.update([1, 2, 3, 4], now=10.0, synced_ago={}, full_ago={}, last_change={})
    assert q.next(10.0, NOW) == Turn(4, "incremental")


def test_every_project_comes_round_the_most_stale_first() -> None:
    q = queue(3)
    q.entries[1].last_turn, q.entries[2].last_turn, q.entries[3].last_turn = -100.0, -300.0, -200.0
    order = []
    q.parallel = 3
    while (turn := q.next(PERIOD, NOW)) is not None:
        q.started_turn(turn, PERIOD)
        order.append(turn.project_id)
    assert order == [2, 3, 1]


def test_when_the_turns_cannot_keep_up_no_project_waits_more_than_one_round() -> None:
    # 20 projects of 100 s turns, one at a time: a round takes 2,000 s against a 900 s schedule.
    q = queue(20)
    started = run_round(q, 20_000.0, turn_seconds=100.0)
    by_project: dict[int, list[float]] = {}
    for at, turn in started:
        by_project.setdefault(turn.project_id, []).append(at)
    gaps = [b - a for times in by_project.values() for a, b in itertools.pairwise(times)]
    assert len(by_project) == 20
    assert max(gaps) <= 2000.0 * 1.2


def test_a_busy_project_is_polled_more_often_than_a_quiet_one() -> None:
    q = queue(2)
    q.entries[2].last_change = NOW - timedelta(days=60)
    turns = Counter(turn.project_id for _, turn in run_round(q, 8 * PERIOD + 10, turn_seconds=1.0))
    assert turns[1] == 8
    assert turns[2] == 1


def test_reconciles_are_spread_across_the_period_each_project_once() -> None:
    week = 7 * 86400.0
    q = queue(6, full_period=week, parallel=2)
    fulls = [(at, t.project_id) for at, t in run_round(q, week, turn_seconds=10.0) if t.kind == "full"]
    assert sorted(pid for _, pid in fulls) == [1, 2, 3, 4, 5, 6]
    times = sorted(at for at, _ in fulls)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= week / 7 * 0.9  # one a seventh of the week apart, not all at once


def test_incremental_turns_go_on_while_a_project_is_reconciled() -> None:
    q = queue(3, full_period=7 * 86400.0, parallel=2)
    for entry in q.entries.values():
        entry.full_due = 0.0  # every reconcile due at once
    first = q.next(PERIOD, NOW)
    assert first is not None
    q.started_turn(first, PERIOD)
    second = q.next(PERIOD, NOW)
    assert first.kind == "full"
    assert second is not None
    assert second.kind == "incremental"


def test_while_every_slot_is_busy_only_a_turns_end_wakes_the_dispatcher() -> None:
    q = queue(3)
    q.started_turn(Turn(1, "incremental"), PERIOD)
    assert q.next(2 * PERIOD, NOW) is None  # projects 2 and 3 are due, the one slot is busy
    assert q.wake_at(2 * PERIOD, NOW) == math.inf


def test_a_reconcile_the_slots_do_not_allow_does_not_wake_the_dispatcher() -> None:
    q = queue(3, full_period=7 * 86400.0, parallel=2)
    for entry in q.entries.values():
        entry.full_due = 0.0
    q.started_turn(Turn(1, "full"), 10.0)  # half the slots reconcile: no second full until it ends
    assert q.next(10.0, NOW) is None
    assert q.wake_at(10.0, NOW) == PERIOD, "when the incremental turns of 2 and 3 fall due"


def test_the_achievable_cycle_is_the_period_while_the_budget_suffices() -> None:
    q = queue(100)
    for entry in q.entries.values():
        entry.incremental.add(1, 0.5)
    outlook = q.outlook(rate=1.0, wall=NOW)  # 100 requests a period; the budget gives 900
    assert outlook.cycle == PERIOD


def test_the_achievable_cycle_stretches_with_the_requests_a_round_costs() -> None:
    q = queue(1000, changed=0)
    for entry in q.entries.values():
        entry.incremental.add(2, 0.5)
    outlook = q.outlook(rate=1.0, wall=NOW)  # 2,000 requests a period at 900 a period
    assert outlook.cycle == pytest.approx(2000.0)
    assert outlook.budget_bound


def test_quiet_projects_cost_the_budget_only_their_share() -> None:
    q = queue(1000, changed=60)  # all quiet: each comes round every 8 periods
    outlook = q.outlook(rate=1.0, wall=NOW)
    assert outlook.requests == pytest.approx(125.0)
    assert outlook.cycle == PERIOD


def test_slow_turns_stretch_the_cycle_when_the_parallel_turns_are_the_limit() -> None:
    q = queue(10, parallel=2)
    for entry in q.entries.values():
        entry.incremental.add(1, 300.0)
    outlook = q.outlook(rate=10.0, wall=NOW)  # 3,000 s of turns a period on 2 slots
    assert outlook.cycle == pytest.approx(1500.0)
    assert not outlook.budget_bound


def test_projects_in_their_first_backfill_take_turns_as_soon_as_a_slot_is_free() -> None:
    q = queue(3)
    for pid in (1, 2):
        q.entries[pid].backfilling = True
    q.entries[1].last_turn, q.entries[2].last_turn = 10.0, 5.0
    turn = q.next(20.0, NOW)  # project 3 is not due for another 880 s
    assert turn == Turn(2, "incremental"), "the backfill whose last turn is the oldest"
    q.started_turn(turn, 20.0)
    q.finished_turn(turn, requests=3, seconds=1.0, changed_at=None, backfill_left=False)
    assert q.next(21.0, NOW) == Turn(1, "incremental")
    assert q.wake_at(21.0, NOW) == 21.0


def test_a_due_project_goes_before_a_backfill_that_just_had_its_turn() -> None:
    q = queue(2)
    q.entries[1].backfilling, q.entries[1].last_turn = True, PERIOD + 50
    q.entries[2].last_turn = -10.0  # due 10 s ago
    assert q.next(PERIOD + 60, NOW) == Turn(2, "incremental")
