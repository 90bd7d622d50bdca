"""What a person reads: the progress text, the run summary (text and JSON) and failure lines."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from syncer.config import load_settings
from syncer.errors import ExitCode
from syncer.estimate import Budget
from syncer.report import LogProgress, Tally
from tests.conftest import db_rows, in_mirror, write_config
from tests.test_cli import syncer
from tests.test_signin import as_at_a_terminal


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def listing_two_projects(clock: Clock) -> Tally:
    tally = Tally(clock)
    tally.projects = {1, 2}
    tally.photos_total, tally.bytes_total = 300, 300_000_000
    return tally


def test_progress_says_the_total_is_not_known_while_projects_are_still_listed() -> None:
    clock = Clock()
    tally = listing_two_projects(clock)
    tally.listings_done = {1}
    clock.now, tally.photos_done, tally.bytes_done = 4.0, 100, 100_000_000
    text = tally.describe()
    assert text.startswith("listing 1/2 projects · 100/300 photos so far · 100.0 MB · ")
    assert text.endswith(" · total not known yet") and "ETA" not in text


def test_progress_gives_an_eta_once_every_listing_has_ended() -> None:
    clock = Clock()
    tally = listing_two_projects(clock)
    tally.listings_done = {1, 2}
    clock.now, tally.photos_done, tally.bytes_done = 10.0, 100, 100_000_000
    assert tally.describe() == "100/300 photos · 100.0 MB/300.0 MB · 10.0 MB/s · ETA 20.0 s"


def test_progress_gives_an_eta_from_the_rate_budget_once_every_backfill_is_counted() -> None:
    progress = LogProgress(clock=Clock())
    progress.expect([1, 2], budget=Budget(3600, 25, 10.0, per_page=100))
    progress.remaining(1, 1_000)
    assert not progress.tally.total_known
    progress.remaining(2, 500)
    # 15 pages and 1,500 downloads at 25 per 10 s (the hour's 3,600 are not reached)
    assert progress.tally.describe() == "0/1,500 photos · 0 B/0 B · rate not known yet · ETA 10m06s"


def test_progress_rate_follows_the_last_ten_seconds_not_the_whole_run() -> None:
    clock = Clock()
    tally = listing_two_projects(clock)
    tally.listings_done = {1, 2}
    for second in range(1, 61):  # a minute at 4 MB/s, then 1 MB/s
        clock.now = second
        tally.bytes_done += 4_000_000 if second <= 30 else 1_000_000
        tally.rate()
    rate = tally.rate()
    assert rate is not None and abs(rate - 1_000_000) < 1, rate


def test_progress_has_no_rate_before_a_second_has_passed() -> None:
    clock = Clock()
    tally = listing_two_projects(clock)
    clock.now, tally.bytes_done = 0.5, 5_000_000
    assert tally.rate() is None
    assert "rate not known yet" in tally.describe()


def test_progress_rate_never_goes_below_zero_when_a_failed_attempt_takes_its_bytes_back() -> None:
    clock = Clock()
    tally = listing_two_projects(clock)
    tally.projects = tally.listings_done = {1}
    clock.now, tally.bytes_done = 2.0, 30_000_000
    tally.rate()
    clock.now, tally.bytes_done = 4.0, 0  # the attempt was cut and counted back
    assert tally.rate() == 0.0
    assert "ETA" not in tally.describe()


def test_progress_counts_a_project_once_toward_the_total_however_often_it_is_listed() -> None:
    progress = LogProgress(clock=Clock())
    progress.expect([1, 2])
    progress.listed(1)  # helped while another worker listed it,
    progress.listed(1)  # then taken over and listed here
    assert not progress.tally.total_known
    progress.listed(2)
    assert progress.tally.total_known


def test_the_progress_log_line_is_written_only_while_photos_are_due(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    progress = LogProgress(every=60.0, clock=clock)  # as the daemon's
    with caplog.at_level(logging.INFO, logger="syncer"):
        progress.queued(1, 1_000)
        progress.received(1_000)
        progress.finished()
        clock.now = 61.0
        progress.listed(1)  # a later turn that found nothing new: no line
        progress.queued(2, 2_000)  # two photos due: the line
    assert [r.getMessage() for r in caplog.records] == [
        "progress: 1/3 photos · 1.0 KB/3.0 KB · 16 B/s · ETA 2m02s"
    ]


async def test_a_summary_counts_only_what_happened_with_correct_plurals(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=1, projects=1)
    run = await syncer("sync", "--config", str(write_config(sim, tmp_path)))
    assert run.code == ExitCode.OK, run.err
    project, total = run.out.splitlines()
    (only,) = sim.company.projects.values()
    assert project.startswith(f"{only.name} ({only.id}): 1 photo listed (1 new); 1 downloaded (")
    assert project.endswith(" s") and " 0 " not in project, project
    assert total.startswith("complete: 1 project, 1 photo downloaded (") and "failed" not in total, total


async def test_a_dry_run_says_so_and_what_a_sync_would_download(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=3, projects=1, photo_size=1_000_000)
    run = await syncer("sync", "--dry-run", "--config", str(write_config(sim, tmp_path)))
    assert run.code == ExitCode.OK, run.err
    project, total = run.out.splitlines()
    assert project.endswith(": 3 photos listed; would download 3 photos (3.0 MB): 3 new"), project
    assert total.startswith(
        "dry run, nothing written: 1 project; a sync would download 3 photos (3.0 MB), in "
    )
    assert not (tmp_path / "mirror").exists() or not any((tmp_path / "mirror").rglob("*.jpg"))


async def test_a_dry_run_counts_the_bytes_of_photos_due_from_earlier_runs(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=2, projects=1, photo_size=1_000_000)
    sim.config.broken_files.update(sim.expected_files())
    config = write_config(sim, tmp_path, procore={"retry_attempts": 1}, sync={"retry_backoff": "1ms"})
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.INCOMPLETE
    run = await syncer("sync", "--dry-run", "--config", str(config))
    project, total = run.out.splitlines()
    assert project.endswith(": 0 photos listed; would download 2 photos (2.0 MB): 2 due"), project
    assert "a sync would download 2 photos (2.0 MB)" in total, total


async def test_a_failure_line_names_the_photo_once_with_the_error_page_text_not_its_html(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=3, projects=1)
    broken = min(sim.expected_files())
    sim.config.broken_files.add(broken)  # answers an HTML error page
    run = await syncer("sync", "--config", str(write_config(sim, tmp_path, procore={"retry_attempts": 1})))
    assert run.code == ExitCode.INCOMPLETE
    (line,) = [line for line in run.out.splitlines() if line.lstrip().startswith("failed:")]
    assert line.count(f"photo {broken}") == 1, line
    assert line.endswith(": HTTP 500: internal error"), line
    assert "<" not in line


async def test_json_logs_end_with_the_summary_as_one_json_object(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=3, projects=1)
    broken = min(sim.expected_files())
    sim.config.broken_files.add(broken)
    config = write_config(sim, tmp_path, procore={"retry_attempts": 1})
    run = await syncer("sync", "--config", str(config), "--log-format", "json")
    (line,) = run.out.splitlines()
    summary = json.loads(line)
    assert summary["event"] == "summary" and summary["exit_code"] == run.code == ExitCode.INCOMPLETE
    (project,) = summary["projects"]
    assert project["listed"] == 3 and project["downloaded"] == 2 and project["changes"] == {"new": 3}
    assert project["failures"] == [
        {"id": broken, "path": project["failures"][0]["path"], "error": "HTTP 500: internal error"}
    ]


@pytest.mark.parametrize(("sig", "named"), [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
async def test_an_interrupted_sync_prints_its_summary_with_what_it_leaves(
    make_sim: Any, tmp_path: Path, sig: signal.Signals, named: str
) -> None:
    sim = await make_sim(photos=40, projects=1, photo_size=200_000, bandwidth=1_000_000)
    config = write_config(sim, tmp_path, sync={"concurrency": 2})
    root = tmp_path / "mirror"

    def installed() -> int:
        return sum(in_mirror(p, root) and p.suffix != ".json" for p in root.rglob("*.*"))

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncer", "sync", "--full", "--config", str(config),  # one turn lists all
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, preexec_fn=as_at_a_terminal,
    )  # fmt: skip
    while installed() < 5 and proc.returncode is None:
        await asyncio.sleep(0.02)
    proc.send_signal(sig)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=15)
    assert proc.returncode == ExitCode.INTERRUPTED, err.decode()
    project, note, *_, total, left = out.decode().splitlines()
    assert project.startswith(
        f"{sim.company.projects[sim.company.photos[min(sim.company.photos)].project_id].name} ("
    )
    assert note == "  interrupted; the next run continues from here", out.decode()
    done = re.fullmatch(rf"INTERRUPTED \({named}\): 1 project, (\d+) photos downloaded \(.+\) in .+ s", total)
    mirrored = db_rows(load_settings(config), "SELECT count(*) FROM photos WHERE local_path IS NOT NULL")
    assert done and [(int(done[1]),)] == mirrored, (total, mirrored)
    listed = re.match(r".+: (\d+) photos listed", project)
    assert listed, project
    queued = int(listed[1]) - int(done[1])  # listed, not downloaded: in flight or waiting for a slot
    assert re.fullmatch(
        rf"left for the next run: {queued} photos? listed and not in the mirror yet \(.+ to download\); "
        "1 project not listed to the end",  # the listing waits while the downloads are behind
        left,
    ), left
    assert "interrupted; what was committed" not in err.decode(), "the summary says it, once"
