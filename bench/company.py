"""A company of many projects on one rate budget: what the budget buys, in requests and in rounds.

Procore's documented budget (3,600 requests an hour, 25 per 10 s) is scaled in time by `speed`:
the hourly window lasts 3600/speed seconds with the same 3,600 requests, the short window allows
25 x speed per 10 s (its length kept, so `X-Rate-Limit-Reset`, whole seconds, stays meaningful),
and the daemon's schedule (every 15 minutes) is divided by `speed` too. Every figure says what it
cost in requests, counted by the simulator.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench.database import database
from bench.harness import Figure, Sim, run_syncer, scratch, simulator

SCHEDULE = 900.0
"""The default incremental schedule, `*/15 * * * *`, in seconds."""
HOURLY, SPIKE, SPIKE_WINDOW = 3600, 25, 10.0


def company_config(sim: Sim, folder: Path, **sections: Any) -> Path:
    config = {
        "procore": sim.procore,
        "database": {"url": "sqlite:///state/syncer.db"},
        "mirror": {"root": "mirror"},
        "sync": {"concurrency": 8, "per_page": 1000},
        **sections,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def noop_round(sim: Sim, projects: int) -> Figure:
    """A no-op `syncer sync` over every project, after a first one: requests per project, the
    projects listing included."""
    with scratch() as folder:
        config = company_config(sim, folder)
        run_syncer(config)
        before = sim.api_requests()
        run_syncer(config)
        per_project = (sim.api_requests() - before) / projects
    figure = Figure(
        f"company {projects} projects: requests per quiet project in a no-op round (token, projects too)",
        [per_project],
        "requests",
        "<= 1.05",
    )
    figure.passed = per_project <= 1.05
    return figure


def reconcile_cost(photos: int, ids_per_page: int) -> list[Figure]:
    """A reconcile (`--full`) of a mirror the database knows (every request it sends, the token's
    included), against listing every record (a first sync's listing requests, measured in the
    same run): requests per 1,000 photos. Records are asked 1,000 a page; whether Procore gives
    more ids than records a page is unknown, so the server's cap is part of the figure's name."""
    with (
        simulator(
            photos=photos, projects=5, photo_size=500, max_per_page=ids_per_page, free_file_requests=True
        ) as sim,
        scratch() as folder,
    ):
        config = company_config(sim, folder)
        before = sim.listing_requests()
        run_syncer(config)
        first = sim.listing_requests() - before
        before = sim.api_requests()
        run_syncer(config, "--full")
        full = sim.api_requests() - before
    name = f"company reconcile of {photos} photos in 5 projects, pages of up to {ids_per_page}"
    return [
        Figure(f"{name}: requests per 1,000 photos", [full * 1000 / photos], "requests"),
        Figure(f"{name}: requests / a listing of every record (first sync)", [full / first], "x"),
    ]


def status_of(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30) as answer:
        document: dict[str, Any] = json.load(answer)
        return document


def daemon_round(projects: int, speed: float, seconds: float) -> list[Figure]:
    """A real daemon over `projects` quiet projects for `seconds`, after a first `syncer sync`
    (their backfill), the budget and schedule scaled by `speed`: the cycle it says it can keep
    against the schedule, and the stalest project's age against that cycle at the end."""
    period = SCHEDULE / speed
    company = {"photos": projects, "projects": projects, "photo_size": 500, "free_file_requests": True}
    schedule = {"incremental": {"every": f"{period}s"}, "full": None, "quiet_slowdown": 1}
    with scratch() as folder:
        with simulator(**company, spike_limit=10**9, hourly_limit=10**9) as first:  # the same company
            run_syncer(company_config(first, folder))  # the first backfill: the round is measured settled
        with simulator(
            **company,
            hourly_limit=HOURLY,
            hourly_window=3600 / speed,
            spike_limit=int(SPIKE * speed),
            spike_window=SPIKE_WINDOW,
        ) as sim:
            port = free_port()
            config = company_config(sim, folder, schedule=schedule, http={"listen": f"127.0.0.1:{port}"})
            log = (folder / "daemon.log").open("wb")
            proc = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "syncer", "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                before = sim.api_requests()
                time.sleep(seconds)
                document = status_of(port)
                spent = sim.api_requests() - before
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
                log.close()
    cycle = document["schedule"]["achievable_cycle_seconds"]
    ages = [p["staleness_seconds"] for p in document["projects"] if p["staleness_seconds"] is not None]
    synced = len(ages)
    stalest = max(ages) if ages and synced == projects else math.inf
    label = (
        f"company daemon, {projects} projects, budget and schedule {speed:g}x faster "
        f"(3,600 per {3600 / speed:g} s, {int(SPIKE * speed)} per 10 s; every {period:g} s), {seconds:g} s"
    )
    ratio = Figure(f"{label}: achievable cycle / schedule", [cycle / period], "x")
    ratio.passed = None
    stale = Figure(
        f"{label}: stalest project's age / achievable cycle ({synced} synced, {spent} requests)",
        [stalest / cycle],
        "x",
        "<= 1.2",
    )
    stale.passed = stalest <= 1.2 * cycle
    return [ratio, stale]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def company(scale: dict[str, Any], _aria2c: str | None) -> list[Figure]:
    setting = scale["company"]
    projects = setting["projects"]
    figures = []
    with simulator(
        photos=projects * 2, projects=projects, photo_size=500, max_per_page=1000, free_file_requests=True
    ) as sim:
        figures.append(noop_round(sim, projects))
    for cap in setting["caps"]:  # the ids a page a server gives: 1,000 as records, or more
        figures += reconcile_cost(setting["reconcile_photos"], cap)
    figures += daemon_round(projects, setting["speed"], setting["seconds"])
    return figures + database(scale, None)  # the status and the bytes a photo at the company's size
