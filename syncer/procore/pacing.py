"""One rate-limit budget shared by every request the process sends to Procore.

Procore reports the window closest to running out in `X-Rate-Limit-Limit/-Remaining/-Reset`.
The pacer spends `Remaining` and, at zero, holds every caller until the window ends; a 429 or 503
pauses everyone for `Retry-After`. Requests already in flight when an answer arrives are not yet
counted in it, so they are taken off the reported budget.

`Reset` is in whole seconds, rounded up: read as it is, it wastes half a second of every window
on average, a fifth of a short one. But a window opens with the first request it counts (the one
whose answer says `Remaining` = limit - 1), so each such request bounds the window's length (at
most `Reset` minus when it was sent), and the next window ends at most that long after its first
request is answered. The bound is used only once two windows agree on it (windows that open at
fixed times would not), and never more than the second of rounding before `Reset`.

Several workers of one company see the same company-wide budget in their answers. Each spends
only its `share` of what it sees (`procore.workers_share`), and, since what it sees is a little
old by the time it acts on it, also at most its share of each window's limit: together they stay
within the budget whatever the others' timing.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime

Sleep = Callable[[float], Awaitable[None]]
SPREAD = 1.5
"""How far apart two bounds on a window's length may be (the second of rounding, plus time for
the round trips) for the pacer to trust them."""
SUCCESSIVE = 4.0
"""Two resets of one limit at most this many times the longest time to reset seen apart are taken
for successive windows (an hourly window first seen with 15 minutes left still counts)."""


def _header_number(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw.strip())
    except ValueError:
        return None


def retry_after_seconds(headers: Mapping[str, str], *, now: float) -> float | None:
    """`Retry-After` as seconds, whether sent as a number or as an HTTP date."""
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    raw = raw.strip()
    if raw.replace(".", "", 1).isdigit():
        return float(raw)
    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - now)
    except (TypeError, ValueError):
        return None


class Pacer:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        share: float = 1.0,
    ) -> None:
        self._clock = clock
        self.share = share
        self._wall = wall
        self._sleep = sleep
        self._jitter = jitter
        self._lock = asyncio.Lock()
        self._remaining: float | None = None
        self._reset_at = 0.0
        self._paused_until = 0.0
        self._in_flight = 0
        self._window_end: float | None = None
        """The server's `Reset` of the window the answers report."""
        self._spans: dict[float, tuple[float, float, int]] = {}
        """For each window limit seen: the lowest and highest bound on such a window's length that
        its first requests gave (seconds), and how many there were."""
        self._opened: tuple[float, float, float] | None = None
        """(limit, Reset, the latest it can have opened on our clock) of the last window whose first
        request's answer was seen."""
        self._window_sent = 0
        """Requests sent in that window, as far as can be told; with a share below 1 at most
        `share * limit`."""
        self._offset: float | None = None
        """Server clock minus ours, from `Date`: the highest sample seen, since `Date` is truncated
        to whole seconds and so only ever errs low."""
        self._lengths: dict[float, tuple[float, float, float]] = {}
        """For each window limit seen: (the longest time to its reset an answer gave, the last
        `Reset` seen, the shortest gap between two successive `Reset`s): how long such a window
        lasts, for `sustained_rate`."""
        self.limit: float | None = None
        self.reported_remaining: float | None = None
        self.throttled = 0
        """429 answers seen; a well-paced run keeps this near zero."""
        self.waited = 0.0
        """Seconds callers were held for the budget."""

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold one unit of budget for the duration of one request; gives the time it is sent, for
        `observe`."""
        await self._acquire()
        self._in_flight += 1
        try:
            yield self._clock()
        finally:
            self._in_flight -= 1

    async def _acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                wait = 0.0
                if now < self._paused_until:
                    wait = self._paused_until - now
                elif (self._spent() or self._over_quota()) and now < self._reset_at:
                    # Several processes sharing a budget wake at scattered moments, not all at once.
                    wait = self._reset_at - now + (0.2 * self._jitter() if self.share < 1 else 0.0)
                if wait <= 0:
                    break
                self.waited += wait
                await self._sleep(wait)
            if self._clock() >= self._reset_at:
                # A new window: the next answer tells its budget; what is still out may count in it.
                self._remaining = None
                self._window_sent = self._in_flight
            elif self._remaining is not None:
                self._remaining -= 1
            self._window_sent += 1

    def _spent(self) -> bool:
        return self._remaining is not None and self._remaining <= 0

    def _over_quota(self) -> bool:
        return self.share < 1 and self.limit is not None and self._window_sent >= self.share * self.limit

    def observe(self, headers: Mapping[str, str], *, sent: float | None = None) -> None:
        """Learn the budget from an answer's headers (any status: errors count too); `sent` is
        when its request went out (from `slot`)."""
        server_now = self._server_now(headers)  # every Date sharpens the clock estimate
        remaining = _header_number(headers, "X-Rate-Limit-Remaining")
        reset = _header_number(headers, "X-Rate-Limit-Reset")
        self.limit = _header_number(headers, "X-Rate-Limit-Limit") or self.limit
        if remaining is None or reset is None:
            return
        self.reported_remaining = remaining
        now = self._clock()
        reset_at = now + max(0.0, reset - server_now)
        if self._window_end is not None and reset > self._window_end:
            self._window_sent = self._in_flight  # this answer comes from a new window
        self._window_end = reset
        limit = self.limit
        if limit is not None:
            self._learn_length(limit, reset, reset - server_now)
        if limit is not None and sent is not None and remaining == limit - 1:
            # The window's first request: it opened between `sent` and now.
            low, high, count = self._spans.get(limit, (math.inf, -math.inf, 0))
            self._spans[limit] = (min(low, reset_at - sent), max(high, reset_at - sent), count + 1)
            self._opened = (limit, reset, now)
        if limit is not None and self._opened is not None and self._opened[:2] == (limit, reset):
            reset_at = max(reset_at - 1.0, min(reset_at, self._opened[2] + self._span(limit)))
        self._reset_at = reset_at
        # This request is still counted as in flight; the others were sent but not yet counted.
        # Each other worker may spend a request or so from a view of the budget one answer older
        # than this one, so a shared budget keeps that much in reserve.
        reserve = 1 / self.share - 1
        self._remaining = remaining * self.share - max(0, self._in_flight - 1) - reserve

    def _learn_length(self, limit: float, reset: float, to_reset: float) -> None:
        longest, last, gap = self._lengths.get(limit, (0.0, reset, math.inf))
        longest = max(longest, to_reset)
        if reset > last + SPREAD and reset - last <= SUCCESSIVE * longest:
            # The next window of this limit, and by the look of it the one right after: windows
            # lie at least a length apart, and much further apart some went unseen between them.
            gap = min(gap, reset - last)
        self._lengths[limit] = (longest, max(last, reset), gap)

    def sustained_rate(self) -> float | None:
        """Requests a second this process may send for as long as it likes: the tightest of the
        windows seen (limit over length), times its share; None before any answer told a budget.

        A window lasts at least the longest time to its reset an answer gave, and at most the gap
        between the resets of two successive windows. Procore reports only the window closer to
        running out, so an hourly window is seen only as it runs low: until two successive ones
        were seen, its length is taken short, and the rate too generous."""
        rates = [
            limit / (gap if math.isfinite(gap) else longest)
            for limit, (longest, _, gap) in self._lengths.items()
            if longest > 0
        ]
        return min(rates) * self.share if rates else None

    def _span(self, limit: float) -> float:
        """The longest a window of `limit` can last, if its first requests agree: windows that
        open with their first request give samples within a second (the rounding) of each other;
        samples that spread wider mean windows are not opened that way, and are not used."""
        low, high, count = self._spans.get(limit, (math.inf, -math.inf, 0))
        return low if count >= 2 and high - low <= SPREAD else math.inf

    def _server_now(self, headers: Mapping[str, str]) -> float:
        """The server's clock, so `Reset` is read without our clock's skew.

        One `Date` is up to a second behind (whole seconds, truncated); the best of many samples
        is within milliseconds, which is worth about 5% of a 10-second window's budget."""
        now = self._wall()
        date = headers.get("Date")
        if date:
            try:
                sample = parsedate_to_datetime(date).timestamp() - now
            except (TypeError, ValueError):
                sample = None
            if sample is not None and (self._offset is None or sample > self._offset):
                self._offset = sample
        return now + (self._offset or 0.0)

    @property
    def knows_clock(self) -> bool:
        """Whether an answer's `Date` has told Procore's clock yet."""
        return self._offset is not None

    @property
    def clock_offset(self) -> float:
        """Procore's clock minus ours in seconds, as far as the `Date` headers seen tell (never
        more than the truth: each sample errs low); 0 before any answer."""
        return self._offset or 0.0

    def pause(self, seconds: float) -> None:
        """Hold every caller for `seconds` plus jitter (after a 429 or 503)."""
        until = self._clock() + seconds + self._jitter()
        self._paused_until = max(self._paused_until, until)

    def reset_in(self) -> float | None:
        """Seconds until the reported window resets, if an answer said so."""
        if self._remaining is None:
            return None
        return max(0.0, self._reset_at - self._clock())
