"""`syncer run` as a real process: scheduled runs, metrics, signals, locks and notifications."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from syncer.config import load_settings
from syncer.errors import ExitCode
from syncer.simulator import Simulator
from tests.conftest import assert_byte_exact, db_rows, write_config
from tests.test_cli import spawn, syncer
from tests.test_crash import BIG, assert_no_torn_files

EVERY_SECOND = {"incremental": {"every": "1s"}, "full": None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Running:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    async def get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.port}{path}") as r,
        ):
            return r.status, await r.text()

    async def runs(self, outcome: str = "ok", kind: str = "incremental") -> dict[str, float]:
        """syncer_runs_total by project for one kind and outcome, read from /metrics."""
        try:
            _, text = await self.get("/metrics")
        except aiohttp.ClientError:
            return {}
        found = {}
        for line in text.splitlines():
            if (
                line.startswith("syncer_runs_total{")
                and f'kind="{kind}"' in line
                and f'outcome="{outcome}"' in line
            ):
                project = line.split('project="')[1].split('"')[0]
                found[project] = float(line.rsplit(" ", 1)[1])
        return found

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


async def eventually(check: Callable[[], Any], within: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@asynccontextmanager
async def daemon(config: Path, folder: Path) -> AsyncIterator[Running]:
    port = load_settings(config).http.listen
    assert port is not None
    log = folder / f"daemon-{time.monotonic_ns()}.log"
    with log.open("wb") as sink:
        proc = await spawn("run", "--config", str(config), output=sink)
    running = Running(proc, int(port.rsplit(":", 1)[1]), log)
    try:
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def daemon_config(sim: Simulator, folder: Path, **sections: Any) -> Path:
    schedule = {**EVERY_SECOND, **sections.pop("schedule", {})}
    http = {"listen": f"127.0.0.1:{free_port()}", **sections.pop("http", {})}
    return write_config(sim, folder, schedule=schedule, http=http, **sections)


async def stop(running: Running) -> tuple[int, float]:
    started = time.monotonic()
    running.proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(running.proc.wait(), timeout=15)
    return code, time.monotonic() - started


async def test_runs_on_schedule_and_reports_through_health_metrics_and_status(
    sim: Simulator, tmp_path: Path
) -> None:
    config = daemon_config(sim, tmp_path)
    async with daemon(config, tmp_path) as running:

        async def mirrored_and_two_runs_each() -> bool:
            runs = await running.runs()
            if len(runs) != len(sim.company.projects) or min(runs.values()) < 2:
                return False
            _, document = await running.get("/status")
            return sum(p["mirrored"] for p in json.loads(document)["projects"]) == len(sim.company.photos)

        # a first backfill takes a turn per slice; then the projects come round on schedule
        await eventually(mirrored_and_two_runs_each, what="the whole mirror and two runs per project")
        status, body = await running.get("/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        _, metrics = await running.get("/metrics")
        for name in (
            "syncer_photos_downloaded_total",
            "syncer_downloaded_bytes_total",
            "syncer_run_duration_seconds",
            "syncer_rate_limit_remaining",
            "syncer_checkpoint_age_seconds",
            "syncer_rate_limited_responses",
            "syncer_rate_limit_wait_seconds",
        ):
            assert name in metrics, name
        for project in sim.company.projects.values():  # ids are joined to names in one info metric
            assert f'syncer_project_info{{name="{project.name}",project="{project.id}"}} 1.0' in metrics
        _, document = await running.get("/status")
        assert sum(p["mirrored"] for p in json.loads(document)["projects"]) == len(sim.company.photos)
        code, _ = await stop(running)
    assert code == 0
    assert_byte_exact(sim, load_settings(config))


async def test_sigterm_mid_download_exits_0_within_10_seconds(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(**BIG)
    config = daemon_config(sim, tmp_path, sync={"concurrency": 3})
    async with daemon(config, tmp_path) as running:
        await eventually(lambda: sim.stats.bytes_sent > 4_000_000, what="downloads in flight")
        code, took = await stop(running)
        assert code == 0 and took < 10, (code, took)
        assert "SIGTERM received" in running.log_text()
    root = tmp_path / "mirror"
    assert_no_torn_files(sim, root)
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.OK, run.err
    assert_byte_exact(sim, load_settings(config))


async def test_a_stop_at_any_moment_exits_0_within_10_seconds(make_sim: Any, tmp_path: Path) -> None:
    """SIGTERM to fourteen daemons at fourteen moments of a first sync, and to four between runs: each
    exits 0 within 10 s. The sync lists four projects at once in pages of 2,000 photos, so a stop
    often lands inside a page's write; such a stop once left SQLite's write lock held, and the
    daemon waited 10 s on each write it still had to make, or hung."""
    busy = await make_sim(photos=8_000, projects=4, photo_size=2_000, max_per_page=2_000)
    for moment in range(14):
        folder = tmp_path / f"busy-{moment}"
        folder.mkdir()
        config = daemon_config(busy, folder, sync={"per_page": 2_000}, schedule={"max_parallel_projects": 4})
        photos = 1 + 2 * moment  # the 1st to the 27th: the last pages' writes, the first downloads
        requested = _asked_for(busy, photos)
        async with daemon(config, folder) as running:
            await eventually(requested, what=f"{photos} photos asked for")
            code, took = await stop(running)
        assert code == 0 and took < 10, (moment, code, took, running.log_text())
    quiet = await make_sim()
    config = daemon_config(quiet, tmp_path)
    for moment in range(4):
        async with daemon(config, tmp_path) as running:
            await eventually(lambda: _all_ran(running, len(quiet.company.projects)), what="a run each")
            await asyncio.sleep(moment / 4)  # somewhere between two ticks, or in one
            code, took = await stop(running)
        assert code == 0 and took < 10, (moment, code, took, running.log_text())


def _asked_for(sim: Simulator, photos: int) -> Callable[[], bool]:
    """Whether the simulator has been asked for `photos` more files than it had been until now."""
    before = sum(sim.stats.file_requests.values())
    return lambda: sum(sim.stats.file_requests.values()) >= before + photos


async def _all_ran(running: Running, projects: int) -> bool:
    return len(await running.runs()) == projects


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian's prometheus) is not installed"
)
async def test_metrics_pass_promtools_check_with_project_names(sim: Simulator, tmp_path: Path) -> None:
    config = daemon_config(sim, tmp_path)
    async with daemon(config, tmp_path) as running:
        await eventually(running.runs, what="a finished run in /metrics")
        _, metrics = await running.get("/metrics")
        await stop(running)
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=metrics, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr
    assert "syncer_project_info{" in metrics


async def test_a_stop_mid_sync_is_one_info_line_per_stopped_run_not_an_error(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(**BIG)
    config = daemon_config(sim, tmp_path, sync={"concurrency": 3}, schedule={"max_parallel_projects": 1})
    async with daemon(config, tmp_path) as running:
        await eventually(lambda: sim.stats.bytes_sent > 1_000_000, what="downloads in flight")
        assert (await stop(running))[0] == 0
        lines = running.log_text().splitlines()
    assert not [line for line in lines if " ERROR " in line or "Traceback" in line], lines
    stopped = [line for line in lines if "stopped by the shutdown" in line]
    assert len(stopped) == 1 and " INFO incremental sync of " in stopped[0], lines


async def test_an_incomplete_run_logs_its_cause_as_a_warning(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(url_ttl=0, photos=2, projects=1)  # every download fails: an incomplete run
    config = daemon_config(sim, tmp_path, sync={"retry_backoff": "1s"})

    def warnings() -> list[str]:
        return [line for line in running.log_text().splitlines() if " WARNING incremental sync of " in line]

    async with daemon(config, tmp_path) as running:
        # a first backfill may take a photo a turn; a later run retries both
        await eventually(lambda: any("(and 1 more)" in w for w in warnings()), what="a run failing both")
        await stop(running)
    line = next(w for w in warnings() if "(and 1 more)" in w)
    assert "incomplete;" in line and "; photo " in line and " failed: " in line, line


async def test_a_turn_of_one_request_logs_it_in_the_singular(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=1, projects=1)

    def one_request_turns() -> list[str]:  # a turn that found nothing new: one listing request
        return re.findall(r"sync of .*, 1 requests? in .*", running.log_text())

    async with daemon(daemon_config(sim, tmp_path), tmp_path) as running:
        await eventually(one_request_turns, what="a turn of one request")
        await stop(running)
    assert one_request_turns()[0].endswith(" gone upstream, 1 request in 0.0 s"), one_request_turns()[0]


async def test_a_second_daemon_on_the_same_mirror_refuses_to_start(sim: Simulator, tmp_path: Path) -> None:
    config = daemon_config(sim, tmp_path)
    async with daemon(config, tmp_path) as first:
        await eventually(first.runs, what="the first daemon's first run")
        second = await syncer("run", "--config", str(config))
        assert second.code == ExitCode.LOCKED
        assert "a syncer daemon is already running on this mirror" in second.err
        assert (await stop(first))[0] == 0


async def test_a_cron_run_never_syncs_a_project_the_daemon_is_syncing(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(**BIG)
    config = daemon_config(sim, tmp_path, sync={"concurrency": 2})
    async with daemon(config, tmp_path) as running:
        await eventually(lambda: sim.stats.bytes_sent > 1_000_000, what="the daemon downloading")
        cron = await syncer("sync", "--config", str(config))
        assert cron.code == ExitCode.LOCKED
        assert "another syncer is already working on project" in cron.err
        await stop(running)


HOOK = """#!/bin/sh
cat >> "{events}"
echo >> "{events}"
{tail}
"""


def hook(folder: Path, tail: str) -> tuple[str, Path]:
    events = folder / "events.jsonl"
    script = folder / "hook.sh"
    script.write_text(HOOK.format(events=events, tail=tail))
    script.chmod(0o755)
    return str(script), events


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_a_failing_and_slow_notify_hook_never_stops_syncing(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(url_ttl=0, photos=8, projects=1)  # every download fails: a failed run
    command, sink = hook(tmp_path, "sleep 30; exit 1")
    config = daemon_config(
        sim,
        tmp_path,
        notify={"command": command, "timeout": "1s"},
        http={"unhealthy_after": 2},
        sync={"retry_backoff": "1s"},
    )
    async with daemon(config, tmp_path) as running:
        await eventually(lambda: running.runs("incomplete"), what="a failed run")
        await eventually(lambda: events(sink), what="the run_failed notification")
        await eventually(
            lambda: healthz_is(running, 503), what="/healthz to turn unhealthy after 2 failed runs"
        )
        (project,) = sim.company.projects.values()
        (problem,) = json.loads((await running.get("/healthz"))[1])["problems"]
        assert problem.startswith(f"project {project.id} ({project.name}): "), problem
        sim.config.url_ttl = 600
        await eventually(lambda: running.runs("ok"), what="runs to go on and succeed despite the hook")
        await eventually(lambda: len(events(sink)) >= 2, what="the recovery notification")
        assert [e["event"] for e in events(sink)] == ["run_failed", "recovered"]
        assert "notify.command did not finish within 1 s" in running.log_text()
        assert (await running.get("/healthz"))[0] == 200
        assert (await stop(running))[0] == 0
    assert_byte_exact(sim, load_settings(config))


async def healthz_is(running: Running, status: int) -> bool:
    return (await running.get("/healthz"))[0] == status


async def test_an_auth_failure_is_reported_once_per_incident(sim: Simulator, tmp_path: Path) -> None:
    command, sink = hook(tmp_path, "exit 0")
    config = daemon_config(sim, tmp_path, notify={"command": command}, procore={"client_secret": "rotated"})
    async with daemon(config, tmp_path) as running:
        await eventually(lambda: events(sink), what="the auth_failed notification")
        await asyncio.sleep(3.5)  # several more ticks fail the same way
        assert [e["event"] for e in events(sink)] == ["auth_failed"]
        assert running.log_text().count("syncing is paused until it works again") == 1
        sim.config.client_secret = "rotated"  # the operator fixes it upstream
        await eventually(lambda: len(events(sink)) == 2, what="the recovery notification")
        assert events(sink)[1] == {"event": "recovered", "what": "authentication"}
        await eventually(running.runs, what="syncing to resume")
        assert "rotated" not in running.log_text()
        await stop(running)


async def test_sighup_reloads_the_configuration_and_refuses_a_broken_one(
    sim: Simulator, tmp_path: Path
) -> None:
    config = daemon_config(sim, tmp_path)
    async with daemon(config, tmp_path) as running:
        await eventually(running.runs, what="a first run")
        good = config.read_text()
        config.write_text(good.replace("concurrency: 4", "concurrency: lots"))
        running.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: "reload refused" in running.log_text(), what="the refusal")
        assert "sync.concurrency" in running.log_text()
        config.write_text(good.replace("concurrency: 4", "concurrency: 2"))
        running.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: "configuration reloaded" in running.log_text(), what="the reload")
        before = sum((await running.runs()).values())
        await eventually(lambda: _more_runs(running, before), what="runs after the reload")
        assert (await stop(running))[0] == 0


async def _more_runs(running: Running, before: float) -> bool:
    return sum((await running.runs()).values()) > before


async def test_max_duration_stops_a_run_cleanly_and_the_next_continues(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(**BIG)
    config = write_config(sim, tmp_path, sync={"concurrency": 2, "max_duration": "1s"})
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.INCOMPLETE
    assert "stopped at sync.max_duration" in run.out
    assert_no_torn_files(sim, tmp_path / "mirror")
    config.write_text(config.read_text().replace("max_duration: 1s", "max_duration: 1h"))
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.OK, run.out + run.err
    assert_byte_exact(sim, load_settings(config))


# -- the round and the budget ------------------------------------------------------------------


async def problems(running: Running) -> list[str]:
    try:
        _, body = await running.get("/healthz")
    except aiohttp.ClientError:
        return []
    found: list[str] = json.loads(body)["problems"]
    return found


async def metric(running: Running, name: str) -> float | None:
    _, text = await running.get("/metrics")
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def reschedule(config: Path, every: str) -> None:
    document = yaml.safe_load(config.read_text())
    document["schedule"]["incremental"] = {"every": every}
    config.write_text(yaml.safe_dump(document))


async def test_a_budget_too_small_for_the_schedule_is_said_once_with_both_figures_and_so_is_the_recovery(
    make_sim: Any, tmp_path: Path
) -> None:
    # 6 projects every second at one request each: 6 a second against a budget of 2 a second.
    sim = await make_sim(projects=6, photos=6, spike_limit=4, spike_window=2.0, count_file_requests=False)
    command, sink = hook(tmp_path, "exit 0")
    config = daemon_config(sim, tmp_path, schedule={"quiet_slowdown": 1}, notify={"command": command})
    async with daemon(config, tmp_path) as running:
        await eventually(
            lambda: _any_behind(running), within=90, what="/healthz to report the daemon behind schedule"
        )
        behind = next(p for p in await problems(running) if "behind schedule" in p)
        assert "not every 1.0 s as the schedule asks" in behind
        assert "the rate budget gives" in behind
        assert (await running.get("/healthz"))[0] == 503
        achievable = await metric(running, 'syncer_round_seconds{as="achievable"}')
        assert achievable is not None
        assert achievable > 1.1
        assert await metric(running, "syncer_stalest_project_seconds") is not None

        reschedule(config, "20s")  # the operator asks for what the budget allows
        running.proc.send_signal(signal.SIGHUP)
        await eventually(
            lambda: healthz_is(running, 200), within=120, what="the daemon to be back on schedule"
        )
        assert sim.stats.rate_limited == 0
        await stop(running)
    text = running.log_text()
    assert text.count("behind schedule: each project comes round") == 1
    assert text.count("back on schedule") == 1
    assert [e["event"] for e in events(sink)] == ["behind_schedule", "recovered"]


async def _any_behind(running: Running) -> bool:
    return any("behind schedule" in p for p in await problems(running))


async def test_status_shows_each_projects_staleness_and_next_turn_and_none_is_starved(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(projects=5, photos=5, spike_limit=4, spike_window=2.0, count_file_requests=False)
    config = daemon_config(sim, tmp_path, schedule={"quiet_slowdown": 1})
    async with daemon(config, tmp_path) as running:
        await eventually(
            lambda: _all_ran_times(running, 5, 2), within=120, what="every project to come round twice"
        )
        _, body = await running.get("/status")
        document = json.loads(body)
        for project in document["projects"]:
            assert isinstance(project["staleness_seconds"], float)
            turn = project["next_turn"]
            assert turn == "running" or datetime.fromisoformat(turn).tzinfo is not None
        assert document["schedule"]["period_seconds"] == 1.0
        assert document["schedule"]["achievable_cycle_seconds"] >= 1.0
        await stop(running)


async def _all_ran_times(running: Running, projects: int, times: int) -> bool:
    runs = await running.runs()
    return len(runs) == projects and min(runs.values()) >= times


async def test_reconciles_are_spread_across_their_period_while_incremental_turns_go_on(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(projects=3, photos=30)
    schedule = {"incremental": {"every": "1s"}, "full": {"every": "8s"}, "quiet_slowdown": 1}
    config = daemon_config(sim, tmp_path, schedule=schedule)
    settings = load_settings(config)
    async with daemon(config, tmp_path) as running:
        await eventually(
            lambda: len(_full_runs(settings)) >= 3, within=60, what="a reconcile of every project"
        )
        await stop(running)
    fulls = _full_runs(settings)[:3]
    assert len({project for project, _ in fulls}) == 3, "each project once in the first period"
    starts = sorted(started for _, started in fulls)
    assert starts[-1] - starts[0] >= 3.0, "spread across the period, not all at its start"
    incremental = [
        started
        for (started,) in db_rows(settings, "SELECT started_at FROM sync_runs WHERE NOT full")
        if starts[0] < _seconds(started) < starts[-1]
    ]
    assert incremental, "incremental turns went on between the reconciles"


def _full_runs(settings: Any) -> list[tuple[int, float]]:
    try:
        rows = db_rows(settings, "SELECT project_id, started_at FROM sync_runs WHERE full ORDER BY id")
    except sqlite3.OperationalError:  # the daemon has not made its database yet
        return []
    return [(project, _seconds(started)) for project, started in rows]


def _seconds(stored: Any) -> float:
    """A time as the database stores it (integer microseconds with SQLite), in seconds."""
    return float(stored) / 1e6 if isinstance(stored, int) else datetime.fromisoformat(stored).timestamp()
