"""`syncer status` as a real process: it needs no Procore credentials, and its table lists a
project's first failed photos and counts the rest, which `--json` lists in full."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from syncer.config import load_settings
from syncer.errors import ExitCode
from syncer.simulator import Simulator
from syncer.status import FAILURES_SHOWN, render_status, status_document
from tests.conftest import write_config
from tests.test_cli import syncer
from tests.test_config import without_credentials


async def failing_mirror(make_sim: Any, tmp_path: Path, photos: int) -> Path:
    """The config of a mirror whose every photo failed once (the store's links expire at once)."""
    sim = await make_sim(url_ttl=0, photos=photos, projects=1)
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.INCOMPLETE
    return config


async def test_status_needs_no_procore_credentials(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    without_credentials(config, monkeypatch)
    run = await syncer("status", "--config", str(config), "--json")
    assert run.code == ExitCode.OK, run.err
    assert sum(p["mirrored"] for p in json.loads(run.out)["projects"]) == 60


async def test_status_answers_at_once_while_a_sync_holds_the_databases_write_lock(
    sim: Simulator, tmp_path: Path
) -> None:
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    database = load_settings(config).database.url.split("///", 1)[1]
    with closing(sqlite3.connect(database, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")  # as a sync's write does; SQLite would make a reader wait 10 s
        run = await syncer("status", "--config", str(config), "--json")
        writer.execute("ROLLBACK")
    assert run.code == ExitCode.OK, run.err
    assert sum(p["mirrored"] for p in json.loads(run.out)["projects"]) == 60


async def checkpoint_row(sim: Simulator, tmp_path: Path, tz: str) -> tuple[datetime, str]:
    """A synced project's checkpoint, from `--json`, and its row of the table where TZ is `tz`."""
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    project = json.loads((await syncer("status", "--config", str(config), "--json")).out)["projects"][0]
    table = await syncer("status", "--config", str(config), env={"TZ": tz})
    row = next(line for line in table.out.splitlines() if f"({project['id']}" in line)
    return datetime.fromisoformat(project["checkpoint"]), row


async def test_status_shows_times_in_local_time_with_the_offset(sim: Simulator, tmp_path: Path) -> None:
    checkpoint, row = await checkpoint_row(sim, tmp_path, "XYZ-2")  # two hours east of UTC
    assert f"{checkpoint + timedelta(hours=2):%Y-%m-%d %H:%M:%S} +02:00" in row, row
    assert row.count(" +02:00") == 2, "the checkpoint and the last run"


async def test_status_on_a_machine_set_to_utc_says_its_times_are_utc(sim: Simulator, tmp_path: Path) -> None:
    checkpoint, row = await checkpoint_row(sim, tmp_path, "UTC")
    assert f"{checkpoint:%Y-%m-%d %H:%M:%S} UTC" in row, row
    assert row.count(" UTC") == 2, "the checkpoint and the last run"


async def test_status_lists_the_first_failed_photos_and_says_how_many_more_and_where(
    make_sim: Any, tmp_path: Path
) -> None:
    config = await failing_mirror(make_sim, tmp_path, photos=FAILURES_SHOWN + 7)
    run = await syncer("status", "--config", str(config))
    assert run.code == ExitCode.OK, run.err
    lines = run.out.splitlines()
    assert sum(line.startswith("failed: ") for line in lines) == FAILURES_SHOWN
    assert re.fullmatch(
        r"\.\.\. and 7 more failed photos in .+ \(`syncer status --json` lists all\)", lines[-1]
    ), lines[-1]


async def test_status_json_lists_every_failed_photo(make_sim: Any, tmp_path: Path) -> None:
    config = await failing_mirror(make_sim, tmp_path, photos=FAILURES_SHOWN + 7)
    (project,) = json.loads((await syncer("status", "--config", str(config), "--json")).out)["projects"]
    assert project["failed"] == FAILURES_SHOWN + 7
    assert len({f["id"] for f in project["failures"]}) == FAILURES_SHOWN + 7


async def test_status_never_promises_more_failures_than_the_json_holds(make_sim: Any, tmp_path: Path) -> None:
    config = await failing_mirror(make_sim, tmp_path, photos=FAILURES_SHOWN + 7)
    document = await status_document(load_settings(config))
    (project,) = document["projects"]
    del project["failures"][FAILURES_SHOWN + 2 :]  # as the store lists failures only up to a limit
    last = render_status(document).splitlines()[-1]
    assert last.endswith(
        f"more failed photos in {project['name']} (`syncer status --json` lists 22 of the 27)"
    )


async def test_only_the_daemons_status_page_caps_the_failed_photos_it_lists(
    make_sim: Any, tmp_path: Path
) -> None:
    config = await failing_mirror(make_sim, tmp_path, photos=FAILURES_SHOWN + 7)
    settings = load_settings(config)
    (capped,) = (await status_document(settings, failures_limit=5))["projects"]
    (whole,) = (await status_document(settings, failures_limit=None))["projects"]
    assert len(capped["failures"]) == 5 and len(whole["failures"]) == FAILURES_SHOWN + 7
