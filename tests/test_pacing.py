"""The rate-limit budget on its own (`Pacer`), on a fake clock: when callers are held, for how long,
and what each answer teaches it. The pacing of real requests is in `test_procore_client.py`."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from syncer.procore.pacing import Pacer, retry_after_seconds

WINDOW = {"X-Rate-Limit-Limit": "25", "X-Rate-Limit-Reset": "1010"}


def fake_clock_pacer(share: float = 1.0, jitter: float = 0.0) -> tuple[Pacer, list[float]]:
    """A pacer on a fake clock that starts at 1000 s; returns it and the list of its sleeps."""
    now = [1000.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(clock=lambda: now[0], wall=lambda: now[0], sleep=sleep, jitter=lambda: jitter, share=share)
    return pacer, slept


async def test_pacer_holds_callers_until_the_reset_when_the_budget_is_spent() -> None:
    pacer, slept = fake_clock_pacer()
    pacer.observe({"X-Rate-Limit-Limit": "25", "X-Rate-Limit-Remaining": "1", "X-Rate-Limit-Reset": "1007"})
    async with pacer.slot():
        pass
    assert slept == []
    async with pacer.slot():
        pass
    assert slept == [7.0]


async def test_a_pacer_with_a_share_spends_only_its_part_of_the_budget() -> None:
    pacer, slept = fake_clock_pacer(share=0.25)  # one of four workers seeing the company's budget
    pacer.observe({"X-Rate-Limit-Limit": "25", "X-Rate-Limit-Remaining": "20", "X-Rate-Limit-Reset": "1010"})
    for _ in range(20 // 4 - 3):  # a quarter, less one request for each other worker's older view
        async with pacer.slot():
            pass
    assert slept == []
    async with pacer.slot():
        pass
    assert slept == [10.0]


async def test_a_pacer_with_a_share_sends_at_most_its_share_of_each_windows_limit() -> None:
    pacer, slept = fake_clock_pacer(share=0.5)  # one of two workers; a window allows 25 requests
    window = {"X-Rate-Limit-Limit": "25", "X-Rate-Limit-Reset": "1010"}
    pacer.observe({**window, "X-Rate-Limit-Remaining": "25"})
    await take(pacer, 10)
    # Its own ten requests are counted; the other worker's are still on their way.
    pacer.observe({**window, "X-Rate-Limit-Remaining": "15"})
    await take(pacer, 3)
    assert slept == []
    await take(pacer)
    assert slept == [10.0], "its 14th request waits for the next window, though the last answer said 15"


async def test_pacer_reads_reset_against_the_servers_clock() -> None:
    pacer, slept = fake_clock_pacer()
    # The server's clock is 100 s ahead of ours: Reset means "10 s from now", not "110 s".
    pacer.observe(
        {"X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": "1110", "Date": "Thu, 01 Jan 1970 00:18:20 GMT"}
    )
    async with pacer.slot():
        pass
    assert slept == [10.0]


async def test_pacer_learns_the_servers_clock_finer_than_whole_second_dates() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(clock=lambda: now[0], wall=lambda: now[0], sleep=sleep, jitter=lambda: 0.0)

    def answer(at: float, **limits: str) -> None:  # our clock and the server's agree; Date is truncated
        now[0] = at
        pacer.observe({"Date": formatdate(int(at), usegmt=True), **limits})

    answer(1000.95)
    answer(1001.02)
    answer(1001.90, **{"X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": "1011"})
    async with pacer.slot():
        pass
    assert len(slept) == 1 and abs(slept[0] - 9.12) < 0.01, slept  # one Date alone would say 10.0


async def take(pacer: Pacer, count: int = 1) -> None:
    for _ in range(count):
        async with pacer.slot():
            pass


@pytest.mark.parametrize(("value", "seconds"), [("7", 7.0), (" 1.5 ", 1.5), ("0", 0.0)])
def test_retry_after_in_seconds_is_read_as_a_number(value: str, seconds: float) -> None:
    assert retry_after_seconds({"Retry-After": value}, now=0.0) == seconds


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    at = 1_700_000_000
    assert retry_after_seconds({"Retry-After": formatdate(at + 30, usegmt=True)}, now=at) == 30.0
    assert retry_after_seconds({"Retry-After": formatdate(at - 30, usegmt=True)}, now=at) == 0.0


@pytest.mark.parametrize("headers", [{}, {"Retry-After": "soon"}, {"Retry-After": "1.2.3"}])
def test_a_missing_or_unreadable_retry_after_is_none(headers: dict[str, str]) -> None:
    assert retry_after_seconds(headers, now=0.0) is None


async def test_a_pause_holds_every_caller_for_its_length_and_jitter() -> None:
    pacer, slept = fake_clock_pacer(jitter=0.5)
    pacer.pause(5)
    await take(pacer, 2)
    assert slept == [5.5]
    assert pacer.waited == 5.5


async def test_a_shorter_pause_does_not_cut_a_longer_one_short() -> None:
    pacer, slept = fake_clock_pacer()
    pacer.pause(10)
    pacer.pause(2)
    await take(pacer)
    assert slept == [10.0]


async def test_after_the_reset_callers_go_until_an_answer_tells_the_new_budget() -> None:
    pacer, slept = fake_clock_pacer()
    pacer.observe({**WINDOW, "X-Rate-Limit-Remaining": "0"})
    await take(pacer, 5)
    assert slept == [10.0], "held once, until the reset"
    assert pacer.reset_in() is None


async def test_requests_in_flight_are_taken_off_the_budget_an_answer_reports() -> None:
    pacer, slept = fake_clock_pacer()
    async with pacer.slot(), pacer.slot(), pacer.slot():
        # Three requests out; the first one's answer says 3 left, not counting the two others.
        pacer.observe({**WINDOW, "X-Rate-Limit-Remaining": "3"})
    await take(pacer)
    assert slept == []
    await take(pacer)
    assert slept == [10.0]


async def test_an_answer_without_a_budget_changes_nothing_but_the_limit() -> None:
    pacer, slept = fake_clock_pacer()
    pacer.observe({**WINDOW, "X-Rate-Limit-Remaining": "0"})
    pacer.observe({"X-Rate-Limit-Limit": "30", "X-Rate-Limit-Remaining": "not a number"})
    assert pacer.limit == 30
    assert pacer.reported_remaining == 0
    await take(pacer)
    assert slept == [10.0]


async def test_the_time_to_the_reset_is_known_once_an_answer_says_it_and_never_negative() -> None:
    pacer, _ = fake_clock_pacer()
    assert pacer.reset_in() is None
    pacer.observe({**WINDOW, "X-Rate-Limit-Remaining": "5"})
    assert pacer.reset_in() == 10.0
    pacer.observe({**WINDOW, "X-Rate-Limit-Reset": "990", "X-Rate-Limit-Remaining": "5"})
    assert pacer.reset_in() == 0.0


def test_the_clock_offset_is_zero_until_a_date_is_seen_and_ignores_an_unreadable_one() -> None:
    pacer, _ = fake_clock_pacer()
    assert pacer.clock_offset == 0.0
    pacer.observe({"Date": "yesterday"})
    assert pacer.clock_offset == 0.0
    pacer.observe({"Date": formatdate(1100, usegmt=True)})  # the fake clock reads 1000
    assert pacer.clock_offset == 100.0
    pacer.observe({"Date": formatdate(1050, usegmt=True)})
    assert pacer.clock_offset == 100.0, "the highest sample: a Date only ever errs low"


async def test_a_shared_budget_counts_a_new_windows_requests_afresh() -> None:
    pacer, slept = fake_clock_pacer(share=0.5)
    pacer.observe({"X-Rate-Limit-Limit": "25", "X-Rate-Limit-Reset": "1010", "X-Rate-Limit-Remaining": "25"})
    await take(pacer, 12)  # its share of the window, less its reserve
    pacer.observe({"X-Rate-Limit-Limit": "25", "X-Rate-Limit-Reset": "1020", "X-Rate-Limit-Remaining": "25"})
    await take(pacer, 3)
    assert slept == [], "the new window's share is its own"


async def test_workers_sharing_a_budget_wake_a_jittered_moment_after_the_reset() -> None:
    pacer, slept = fake_clock_pacer(share=0.5, jitter=1.0)
    pacer.observe({**WINDOW, "X-Rate-Limit-Remaining": "0"})
    await take(pacer)
    assert slept == [10.2], "up to 0.2 s after the reset, so many workers do not wake at once"


async def test_a_process_alone_on_its_budget_wakes_at_the_reset() -> None:
    pacer, slept = fake_clock_pacer(jitter=1.0)
    pacer.observe({**WINDOW, "X-Rate-Limit-Remaining": "0"})
    await take(pacer)
    assert slept == [10.0], "one process's callers are let through one at a time anyway"


def clocked_pacer() -> tuple[Pacer, list[float], list[float]]:
    """A pacer on a fake clock the test moves; returns it, the clock and the list of sleeps."""
    now = [1000.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    return Pacer(clock=lambda: now[0], wall=lambda: now[0], sleep=sleep, jitter=lambda: 1.0), now, slept


async def test_a_window_opened_by_a_seen_request_ends_no_later_than_the_shortest_window_bound() -> None:
    """Reset is rounded up to a whole second. A request sent at 1000.0 that opened a window
    reported to reset at 1010 bounds every such window to 10 s; the next window, opened by a
    request answered at 1010.3, is over by 1020.3, not at its reported Reset of 1021."""
    pacer, now, slept = clocked_pacer()
    first = {"X-Rate-Limit-Limit": "25", "X-Rate-Limit-Remaining": "24"}
    pacer.observe({**first, "X-Rate-Limit-Reset": "1010"}, sent=1000.0)
    now[0] = 1010.3
    pacer.observe({**first, "X-Rate-Limit-Reset": "1021"}, sent=1010.25)
    pacer.observe({"X-Rate-Limit-Limit": "25", "X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": "1021"})
    await take(pacer)
    assert slept == [pytest.approx(10.0)]


async def test_a_window_whose_first_request_was_not_seen_is_held_until_its_reset() -> None:
    pacer, now, slept = clocked_pacer()
    pacer.observe({**WINDOW, "X-Rate-Limit-Remaining": "24"}, sent=999.0)  # bounds a window to 11 s
    now[0] = 1010.3
    pacer.observe({"X-Rate-Limit-Limit": "25", "X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": "1021"})
    await take(pacer)
    assert slept == [pytest.approx(10.7)]


async def test_the_bound_of_one_window_is_not_applied_to_a_window_of_another_limit() -> None:
    """The hourly window reported once the spike window is not the tighter one."""
    pacer, now, slept = clocked_pacer()
    pacer.observe({**WINDOW, "X-Rate-Limit-Remaining": "24"}, sent=1000.0)
    now[0] = 1010.3
    hourly = {"X-Rate-Limit-Limit": "3600", "X-Rate-Limit-Reset": "4600"}
    pacer.observe({**hourly, "X-Rate-Limit-Remaining": "3599"}, sent=1010.2)
    pacer.observe({**hourly, "X-Rate-Limit-Remaining": "0"})
    await take(pacer)
    assert slept == [pytest.approx(4600 - 1010.3)]


async def test_a_pause_under_a_second_is_waited_too() -> None:
    pacer, slept = fake_clock_pacer()
    pacer.pause(0.5)
    await take(pacer)
    assert slept == [0.5]


@pytest.mark.parametrize(
    "headers",
    [{"X-Rate-Limit-Remaining": "0"}, {"X-Rate-Limit-Reset": "1010"}],
    ids=["no-reset", "no-remaining"],
)
async def test_half_a_budget_is_no_budget(headers: dict[str, str]) -> None:
    pacer, slept = fake_clock_pacer()
    pacer.observe(headers)
    await take(pacer, 3)
    assert slept == [] and pacer.reset_in() is None


async def test_a_shared_pacer_sends_before_any_answer_told_it_a_budget() -> None:
    pacer, slept = fake_clock_pacer(share=0.5)
    await take(pacer, 3)
    assert slept == []
    assert (pacer.limit, pacer.reported_remaining, pacer.reset_in()) == (None, None, None), (
        "nothing to report yet"
    )


async def test_the_time_callers_were_held_adds_up() -> None:
    pacer, _ = fake_clock_pacer()
    pacer.pause(2)
    await take(pacer)
    pacer.pause(3)
    await take(pacer)
    assert pacer.waited == 5.0


async def test_a_bound_learned_from_the_hourly_window_is_not_applied_to_the_spike_window() -> None:
    pacer, now, slept = clocked_pacer()
    hourly = {"X-Rate-Limit-Limit": "3600", "X-Rate-Limit-Reset": "4600"}
    pacer.observe({**hourly, "X-Rate-Limit-Remaining": "3599"}, sent=1000.0)
    now[0] = 1005.0
    pacer.observe({"X-Rate-Limit-Limit": "25", "X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": "1010"})
    await take(pacer)
    assert slept == [pytest.approx(5.0)]


async def test_bounds_that_disagree_are_not_used() -> None:
    """Windows that open at fixed times, not with their first request: the first requests seen
    fall anywhere in them, so their bounds spread, and the pacer keeps to Reset."""
    pacer, now, slept = clocked_pacer()
    first = {"X-Rate-Limit-Limit": "25", "X-Rate-Limit-Remaining": "24"}
    pacer.observe({**first, "X-Rate-Limit-Reset": "1010"}, sent=1007.0)  # bound 3 s
    now[0] = 1010.1
    pacer.observe({**first, "X-Rate-Limit-Reset": "1020"}, sent=1010.0)  # bound 10 s
    pacer.observe({"X-Rate-Limit-Limit": "25", "X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": "1020"})
    await take(pacer)
    assert slept == [pytest.approx(9.9)]


async def test_a_learned_bound_never_ends_a_window_more_than_a_second_before_its_reset() -> None:
    pacer, now, slept = clocked_pacer()
    first = {"X-Rate-Limit-Limit": "25", "X-Rate-Limit-Remaining": "24"}
    pacer.observe({**first, "X-Rate-Limit-Reset": "1010"}, sent=1000.0)  # bound 10 s
    now[0] = 1010.0
    pacer.observe({**first, "X-Rate-Limit-Reset": "1020"}, sent=1009.9)  # bound 10.1 s
    now[0] = 1019.65
    pacer.observe({**first, "X-Rate-Limit-Reset": "1031"}, sent=1019.6)  # bound 11.4 s: they still agree
    pacer.observe({"X-Rate-Limit-Limit": "25", "X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": "1031"})
    await take(pacer)
    assert slept == [pytest.approx(10.35)], "held to 1030 (Reset less the second of rounding), not 1029.65"


def limits(limit: int, remaining: int, reset: float) -> dict[str, str]:
    return {
        "X-Rate-Limit-Limit": str(limit),
        "X-Rate-Limit-Remaining": str(remaining),
        "X-Rate-Limit-Reset": str(int(reset)),
    }


def test_the_sustained_rate_is_unknown_before_any_budget_is_seen() -> None:
    pacer, _ = fake_clock_pacer()
    assert pacer.sustained_rate() is None


def test_the_sustained_rate_of_a_short_window_is_its_limit_over_its_length() -> None:
    pacer, _ = fake_clock_pacer()
    pacer.observe(limits(25, 24, 1010))  # the window's first request: 10 s to its reset
    assert pacer.sustained_rate() == 2.5


def test_an_hourly_window_seen_only_as_it_runs_low_is_known_once_two_successive_ones_were_seen() -> None:
    now = [1000.0]
    pacer = Pacer(clock=lambda: now[0], wall=lambda: now[0])
    pacer.observe(limits(3600, 20, 1000 + 1200))  # 20 minutes left in the hour
    assert pacer.sustained_rate() == 3.0  # taken short: 3,600 in at least 1,200 s
    now[0] += 3600
    pacer.observe(limits(3600, 20, 1000 + 1200 + 3600))  # the next hour, also running low
    assert pacer.sustained_rate() == 1.0


def test_the_tightest_window_sets_the_sustained_rate() -> None:
    pacer, _ = fake_clock_pacer()
    pacer.observe(limits(25, 24, 1010))
    pacer.observe(limits(3600, 20, 1000 + 1200))
    assert pacer.sustained_rate() == 2.5


def test_windows_far_apart_do_not_pass_for_successive_ones() -> None:
    now = [1000.0]
    pacer = Pacer(clock=lambda: now[0], wall=lambda: now[0])
    pacer.observe(limits(3600, 20, 1000 + 1200))
    now[0] += 5 * 3600  # hours unseen between them
    pacer.observe(limits(3600, 20, 1000 + 1200 + 5 * 3600))
    assert pacer.sustained_rate() == 3.0


def test_the_sustained_rate_is_this_workers_share() -> None:
    pacer, _ = fake_clock_pacer(share=0.25)
    pacer.observe(limits(25, 24, 1010))
    assert pacer.sustained_rate() == 0.625
