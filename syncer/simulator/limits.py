"""Procore's two rate-limit windows: an hourly one and a short spike one, both counting every request."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Window:
    limit: int
    length: float
    started: float = 0.0
    used: int = 0

    def roll(self, now: float) -> None:
        if now >= self.started + self.length:
            self.started = now
            self.used = 0

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    @property
    def resets_at(self) -> float:
        return self.started + self.length


class RateLimits:
    def __init__(
        self,
        *,
        hourly: int,
        spike: int,
        spike_window: float = 10.0,
        hourly_window: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.windows = [Window(hourly, hourly_window), Window(spike, spike_window)]
        self._clock = clock

    def take(self) -> tuple[bool, dict[str, str]]:
        """Count one request; (allowed, headers for the window closest to running out). A refused
        request counts too, as Procore counts every request, errors included."""
        now = self._clock()
        for w in self.windows:
            w.roll(now)
        allowed = all(w.remaining > 0 for w in self.windows)
        for w in self.windows:
            w.used += 1
        tight = min(self.windows, key=lambda w: (w.remaining, w.resets_at))
        headers = {
            "X-Rate-Limit-Limit": str(tight.limit),
            "X-Rate-Limit-Remaining": str(tight.remaining),
            "X-Rate-Limit-Reset": str(math.ceil(tight.resets_at)),
        }
        return allowed, headers
