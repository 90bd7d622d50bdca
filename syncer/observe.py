"""What the daemon tells its operator: health, Prometheus metrics and status over HTTP.

Metrics live in the daemon's own registry. Counters move when a run ends; the live values (the
rate-limit budget, 429s seen, checkpoint ages) are read at scrape time from the parts that own them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from syncer.procore.pacing import Pacer
from syncer.result import ProjectResult
from syncer.schedule import Outlook


@dataclass
class Health:
    unhealthy_after: int
    scheduler_running: bool = False
    failing: dict[int, int] = field(default_factory=dict)
    """Consecutive failed runs per project."""
    checkpoints: dict[int, datetime | None] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    """Each project's name, so a person reading /healthz or a dashboard need not look ids up."""
    auth_failing: bool = False
    mirror_missing: str | None = None
    """Why the mirror root is not the mirror (a share that went away), while it is not."""
    behind: str | None = None
    """While the budget cannot keep the schedule: the achievable cycle against the asked one."""

    def record(self, project_id: int, ok: bool) -> None:
        self.failing[project_id] = 0 if ok else self.failing.get(project_id, 0) + 1

    def problems(self) -> list[str]:
        found = [] if self.scheduler_running else ["the scheduler is not running"]
        if self.auth_failing:
            found.append("Procore refuses the credentials")
        if self.mirror_missing:
            found.append(self.mirror_missing)
        if self.behind:
            found.append(self.behind)
        found += [
            f"{self.describe(pid)}: {n} failed runs in a row"
            for pid, n in self.failing.items()
            if n >= self.unhealthy_after
        ]
        return found

    def describe(self, project_id: int) -> str:
        name = self.names.get(project_id)
        return f"project {project_id} ({name})" if name else f"project {project_id}"


class _LiveValues(Collector):
    def __init__(self, pacer: Callable[[], Pacer], health: Health, round_: Callable[[], Outlook]) -> None:
        self._pacer = pacer
        self._health = health
        self._round = round_

    def collect(self) -> Iterator[Any]:
        pacer = self._pacer()
        throttled = GaugeMetricFamily("syncer_rate_limited_responses", "429 answers seen since start")
        throttled.add_metric([], pacer.throttled)
        yield throttled
        waited = GaugeMetricFamily("syncer_rate_limit_wait_seconds", "Seconds spent waiting for the budget")
        waited.add_metric([], pacer.waited)
        yield waited
        remaining = GaugeMetricFamily(
            "syncer_rate_limit_remaining", "Requests left in Procore's tightest window"
        )
        if pacer.reported_remaining is not None:
            remaining.add_metric([], pacer.reported_remaining)
        yield remaining
        age = GaugeMetricFamily(
            "syncer_checkpoint_age_seconds",
            "How far behind now each project's checkpoint is",
            labels=["project"],
        )
        now = time.time()
        ages = [now - c.timestamp() for c in self._health.checkpoints.values() if c is not None]
        for pid, checkpoint in self._health.checkpoints.items():
            if checkpoint is not None:
                age.add_metric([str(pid)], now - checkpoint.timestamp())
        yield age
        stalest = GaugeMetricFamily(
            "syncer_stalest_project_seconds", "How far behind now the stalest project's checkpoint is"
        )
        if ages:
            stalest.add_metric([], max(ages))
        yield stalest
        outlook = self._round()
        cycle = GaugeMetricFamily(
            "syncer_round_seconds",
            "Seconds between turns of a changing project: as the schedule asks, and as achievable",
            labels=["as"],
        )
        cycle.add_metric(["asked"], outlook.period)
        cycle.add_metric(["achievable"], outlook.cycle)
        yield cycle
        failing = GaugeMetricFamily(
            "syncer_consecutive_failed_runs", "Failed runs in a row", labels=["project"]
        )
        for pid, n in self._health.failing.items():
            failing.add_metric([str(pid)], n)
        yield failing
        # the usual info-metric join: `... * on(project) group_left(name) syncer_project_info`
        info = GaugeMetricFamily(
            "syncer_project_info", "Each project's name, by its id", labels=["project", "name"]
        )
        for pid, name in self._health.names.items():
            info.add_metric([str(pid), name], 1)
        yield info


class Metrics:
    def __init__(self, pacer: Callable[[], Pacer], health: Health, round_: Callable[[], Outlook]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter("syncer_runs", "Runs finished", ["project", "kind", "outcome"], registry=r)
        self.listed = Counter("syncer_photos_listed", "Photos listed", ["project"], registry=r)
        self.downloaded = Counter("syncer_photos_downloaded", "Photos downloaded", ["project"], registry=r)
        self.failed = Counter("syncer_photos_failed", "Photo downloads that failed", ["project"], registry=r)
        self.bytes = Counter("syncer_downloaded_bytes", "Bytes of photos downloaded", ["project"], registry=r)
        self.duration = Histogram(
            "syncer_run_duration_seconds",
            "Run durations",
            ["project", "kind"],
            registry=r,
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600),
        )
        r.register(_LiveValues(pacer, health, round_))

    def record(self, result: ProjectResult, kind: str, outcome: str) -> None:
        pid = str(result.project.id)
        self.runs.labels(pid, kind, outcome).inc()
        self.listed.labels(pid).inc(result.listed)
        self.downloaded.labels(pid).inc(result.downloaded)
        self.failed.labels(pid).inc(len(result.failures))
        self.bytes.labels(pid).inc(result.bytes)
        self.duration.labels(pid, kind).observe(result.seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def web_app(
    metrics: Metrics, health: Health, status: Callable[[], Awaitable[dict[str, Any]]]
) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        problems = health.problems()
        return web.json_response(
            {"status": "unhealthy" if problems else "ok", "problems": problems},
            status=503 if problems else 200,
        )

    async def metrics_page(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status_page(_: web.Request) -> web.Response:
        return web.json_response(await status())

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/status", status_page)
    return app
